//! What a session hands its front end: a report per interval, a summary
//! at the end, through a [`Sink`] that may consult the session's
//! [`SessionView`].

use std::{collections::BTreeMap, collections::BTreeSet, time::Duration};

use pagewatch_common::hook::Hook;

use super::Target;
use crate::{
    aggregate::Tally,
    correlate::{
        ProcessCounters,
        hugepages::{PoolSample, VmaThp},
        swap::SwapReturns,
    },
    event::{Decoder, Event},
    note::Note,
    probe::Probe,
    proc::{CommCache, ProcessKey},
    transition::TransitionGroup,
};

/// One finished interval.
pub struct IntervalReport {
    pub index: u64,
    /// Seconds since the session started.
    pub t: f64,
    /// CLOCK_MONOTONIC ns at the end of the interval.
    pub ts_ns: u64,
    pub tally: Tally<ProcessKey>,
    /// Drops since the previous interval.
    pub dropped: u64,
    /// Drops since the start, in total and per CPU.
    pub dropped_total: u64,
    pub dropped_per_cpu: Vec<u64>,
    /// Attributed transitions between this interval's snapshots.
    pub transitions: Vec<TransitionGroup>,
    /// khugepaged's scans of followed processes' memory, per VMA and result.
    pub thp_scans: Vec<ThpScans>,
    /// Page counters of each snapshotted process at the interval's end.
    pub counters: Vec<ProcessCounters>,
    /// Pages back from swap in the interval, with their time in swap.
    pub swap_returns: Vec<SwapReturns>,
    /// Per-node hugetlb pools that changed (all of them the first time).
    pub hugetlb_pools: Vec<PoolSample>,
    /// VMAs whose PMD-mapped page count changed.
    pub thp_coverage: Vec<VmaThp>,
    /// How long the interval's snapshot took (none when not snapshotting).
    pub snapshot_time: Option<Duration>,
    /// What the interval's snapshot read again and what it carried over.
    pub snapshot_work: Option<SnapshotWork>,
}

/// What one snapshot read and what it carried over unchanged from the
/// previous one (see [`crate::correlate::rescan`]).
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct SnapshotWork {
    /// Processes read again, and their pages.
    pub rescanned: u64,
    pub rescanned_pages: u64,
    /// Processes carried over, and their pages.
    pub carried: u64,
    pub carried_pages: u64,
    /// Why every process was read again (the system-wide counters that
    /// moved), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_because: Option<String>,
    /// The processes read again for a reason of their own (empty when
    /// every process was).
    pub rescanned_pids: Vec<u32>,
}

/// khugepaged scans of one VMA that ended with one result.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct ThpScans {
    pub pid: u32,
    pub vma_start: u64,
    pub vma: String,
    /// The running kernel's name for the scan result.
    pub result: String,
    pub scans: u64,
}

/// End-of-session totals.
pub struct Summary {
    /// CLOCK_MONOTONIC ns at the end.
    pub end_ns: u64,
    pub total: Tally<ProcessKey>,
    pub dropped_per_cpu: Vec<u64>,
    pub dropped_per_hook: BTreeMap<&'static str, u64>,
    pub decode_errors: u64,
    pub intervals: u64,
    pub duration_s: f64,
    /// Transition groups reported over the run (counted, not kept: a
    /// long run would keep every one in memory).
    pub transitions: u64,
}

/// Where a session's results go.
pub trait Sink {
    /// Every decoded record, with its raw bytes (for recordings).
    fn event(&mut self, _raw: &[u8], _event: &Event) -> anyhow::Result<()> {
        Ok(())
    }
    /// One finished interval.
    fn interval(
        &mut self,
        session: &mut SessionView<'_>,
        report: &IntervalReport,
    ) -> anyhow::Result<()>;
    /// The end of the session.
    fn finish(&mut self, session: &mut SessionView<'_>, summary: &Summary) -> anyhow::Result<()>;
    /// The session is tracing: its signal handlers are in place, so
    /// Ctrl-C and SIGTERM from now on stop it cleanly.
    fn tracing(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Something the user must be told (hooks skipped, a degraded mode,
    /// lost events): a front end prints it, a recording keeps it.
    fn note(&mut self, note: &Note) -> anyhow::Result<()>;
}

/// What a sink may consult about the session.
pub struct SessionView<'a> {
    pub probe: &'a Probe,
    pub decoder: &'a Decoder,
    pub comms: &'a mut CommCache,
    /// Processes followed at some point (empty when tracing everything).
    pub tracked: &'a BTreeSet<u32>,
    pub target: &'a Target,
}

impl SessionView<'_> {
    /// Whether `pid` is one the user asked about.
    pub fn shown(&self, pid: u32) -> bool {
        matches!(self.target, Target::All) || self.tracked.contains(&pid)
    }

    /// khugepaged scan results by the running kernel's names for them.
    pub fn scan_results(&self, tally: &Tally<ProcessKey>) -> BTreeMap<String, u64> {
        tally
            .scan_status
            .iter()
            .map(|(&status, &n)| {
                let name = self
                    .decoder
                    .symbol(Hook::ScanPmd, "status", status)
                    .map_or_else(|| format!("status_{status}"), str::to_owned);
                (name, n)
            })
            .collect()
    }
}
