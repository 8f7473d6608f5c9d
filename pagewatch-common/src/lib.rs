//! Types shared by pagewatch's eBPF programs and its userspace collector.
//!
//! Everything here is `#[repr(C)]`, `Copy`, and free of implicit padding
//! (explicit `_pad` fields instead), so the userspace `aya::Pod` impls behind
//! the `user` feature are sound and both sides agree byte for byte.
#![no_std]

pub mod event;
pub mod hook;
