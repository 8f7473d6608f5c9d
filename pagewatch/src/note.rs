//! Notes: what a front end must tell its user (a skipped hook, a degraded
//! mode, lost events), as data. A session hands them to its sink, which
//! prints them or, for a recording, writes them so `report` shows them.

/// How much a [`Note`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Severity {
    Info = 0,
    Warning = 1,
    Error = 2,
}

/// Something the reader of a report must be told: a skipped hook, a
/// degraded mode, a process that exited mid-scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// CLOCK_MONOTONIC ns when it happened.
    pub ts_ns: u64,
    pub severity: Severity,
    pub text: String,
}

impl Note {
    /// A note stamped with CLOCK_MONOTONIC now.
    pub fn now(severity: Severity, text: impl Into<String>) -> Self {
        Self {
            ts_ns: crate::kernel::monotonic_ns(),
            severity,
            text: text.into(),
        }
    }
}
