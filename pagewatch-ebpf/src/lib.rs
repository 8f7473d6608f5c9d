//! Marker library so pagewatch/build.rs can list this crate as a build
//! dependency (cargo then rebuilds the eBPF object when it changes); the
//! programs are the `pagewatch` binary target.
#![no_std]
