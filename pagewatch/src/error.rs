//! The library's error type: one variant per thing that can go wrong while
//! loading hooks or reading the event stream, each naming what was wrong.

use std::path::PathBuf;

/// Errors from pagewatch's event side (hooks, tracefs, ring buffer).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading eBPF programs needs privileges the caller does not have.
    #[error(
        "pagewatch needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load its eBPF programs; run it as root"
    )]
    NotRoot,
    /// The caller lacks these capabilities (checked before loading).
    #[error(
        "pagewatch needs root to load and attach its eBPF programs: this process lacks {0} (CAP_SYS_ADMIN would stand in); run it as root"
    )]
    MissingCapabilities(String),
    /// Every tracepoint's perf event was refused to a process without
    /// CAP_SYS_ADMIN (perf_event_paranoid, here the value read).
    #[error(
        "this kernel lets only CAP_SYS_ADMIN attach tracepoints (perf_event_paranoid is {0}; kernels with Debian's restriction ignore CAP_PERFMON then), and this process lacks CAP_SYS_ADMIN; run pagewatch as root with CAP_SYS_ADMIN"
    )]
    TracepointsNeedSysAdmin(String),
    /// tracefs is neither mounted nor mountable.
    #[error("tracefs is not mounted and mounting it on /sys/kernel/tracing failed: {0}")]
    Tracefs(std::io::Error),
    /// A file under /proc, /sys or tracefs could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A tracepoint `format` file did not parse.
    #[error("cannot parse tracepoint format {path}: {reason}")]
    Format { path: PathBuf, reason: String },
    /// The eBPF object did not load (verifier, map creation, BTF...).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A map the object must contain is missing or of the wrong type.
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    /// None of the requested hooks could be attached on this kernel.
    #[error("no hook could be attached on this kernel: {}", .0.join("; "))]
    NoHooks(Vec<String>),
    /// The ring buffer could not be registered with the async runtime.
    #[error("cannot poll the ring buffer: {0}")]
    Poll(std::io::Error),
}

/// Result alias for the library.
pub type Result<T> = std::result::Result<T, Error>;
