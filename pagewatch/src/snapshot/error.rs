//! Errors of the snapshot engine: one variant per thing that can go wrong
//! while reading /proc and sysfs, each naming the file or process involved so
//! the CLI can print a single clear sentence.

use std::{io, path::PathBuf};

/// What went wrong while taking a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The process does not exist (never did, or already exited).
    #[error("no process with pid {0}")]
    NoSuchProcess(u32),
    /// The caller may not read the process's memory maps or pagemap.
    #[error("not allowed to read the memory of pid {0} (needs the same user or root)")]
    ProcessAccessDenied(u32),
    /// No process matched a `--comm` name or a cgroup.
    #[error("no process matches {0}")]
    NoMatch(String),
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A file could not be written (clear_refs, page_idle bitmap).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A line of a /proc file did not have the expected shape.
    #[error("cannot parse line {line} of {path}: {text:?}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending text.
        text: String,
    },
    /// A `--flags` expression named a flag that does not exist.
    #[error("unknown page flag {0:?} in flag expression (see `pagewatch snapshot --help`)")]
    UnknownFlag(String),
}

/// Result alias of the snapshot engine.
pub type Result<T> = std::result::Result<T, SnapshotError>;

impl SnapshotError {
    /// Wrap an I/O error from opening or reading `path`, a file of process
    /// `pid`: a vanished process or a refused one is said as such.
    pub fn of_process(pid: u32, path: impl Into<PathBuf>, e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => SnapshotError::NoSuchProcess(pid),
            Some(libc::EACCES) | Some(libc::EPERM) => SnapshotError::ProcessAccessDenied(pid),
            _ => SnapshotError::read(path, e),
        }
    }

    /// Wrap an I/O error from reading `path`.
    pub fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SnapshotError::Read {
            path: path.into(),
            source,
        }
    }
}
