//! The pure part of ending an interval: which snapshot a process is
//! diffed against, how khugepaged's scan results are named, and which
//! transitions wait one more interval for evidence that can come late. No
//! kernel is read here; the session feeds it snapshots, evidence and
//! transitions, and it hands back what the interval reports.

use std::collections::BTreeSet;

use pagewatch_common::hook::Hook;

use super::ThpScans;
use crate::{
    correlate::evidence::Evidence,
    event::Decoder,
    snapshot::columns::PageTable,
    transition::{Cause, TransitionGroup, TransitionKind},
};

/// How many intervals an unexplained transition of `kind` waits for late
/// evidence: one, and three for `unmapped`. An exit's evidence came two
/// 50 ms intervals late in a 6.1 TCG guest: exit_mmap() of 32 MiB outlasted
/// an interval before sched_process_exit fired.
fn late_intervals(kind: TransitionKind) -> u8 {
    if kind == TransitionKind::Unmapped {
        3
    } else {
        1
    }
}

/// Unexplained transitions of the last intervals whose evidence can still
/// come (see [`Evidence::can_arrive_late`]), across intervals, each with
/// the intervals it has waited.
#[derive(Debug, Default)]
pub struct IntervalAssembly {
    waiting: Vec<(TransitionGroup, u8)>,
}

impl IntervalAssembly {
    /// Whether transitions wait for the next interval.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The interval's transitions to report, from the correlator's `found`
    /// and this interval's `evidence`: those unexplained that can still be
    /// explained by later events wait (unless this is the `last`
    /// interval); those waiting get the cause this interval's evidence
    /// gives them, or wait on, up to [`late_intervals`] intervals, and are
    /// then reported unexplained.
    pub fn settle(
        &mut self,
        found: Vec<TransitionGroup>,
        evidence: &Evidence,
        last: bool,
    ) -> Vec<TransitionGroup> {
        let waited = std::mem::take(&mut self.waiting);
        let mut now = found;
        if !last {
            let (later, rest): (Vec<_>, Vec<_>) =
                now.into_iter().partition(|g: &TransitionGroup| {
                    g.cause == Cause::Unexplained && Evidence::can_arrive_late(g.kind)
                });
            self.waiting = later.into_iter().map(|g| (g, 0)).collect();
            now = rest;
        }
        for (mut g, waits) in waited {
            g.cause = evidence.late_cause(g.pid, g.vma_start, g.kind);
            if g.cause == Cause::Unexplained && !last && waits + 1 < late_intervals(g.kind) {
                self.waiting.push((g, waits + 1));
            } else {
                now.push(g);
            }
        }
        now
    }

    /// The snapshot to diff `before` against: `after`, except that each
    /// process in `held` (inside an mmap(MAP_POPULATE) that has not
    /// returned) keeps its table from `before`, so the pages it populates
    /// are diffed once the call has returned and get their cause.
    pub fn hold(before: &PageTable, after: PageTable, held: &BTreeSet<u32>) -> PageTable {
        if held.is_empty() {
            return after;
        }
        PageTable::from_processes(
            after
                .processes()
                .iter()
                .map(|p| {
                    before
                        .processes()
                        .iter()
                        .find(|b| held.contains(&p.pid) && b.pid == p.pid)
                        .unwrap_or(p)
                        .clone()
                })
                .collect(),
        )
    }

    /// `after` without the processes in `ended` (their last thread exited
    /// in this interval). sched_process_exit fires after do_exit() has let
    /// go of the memory (exit_mm()), so a table read while the process was
    /// exiting holds at most the part read before its pages went. Dropped,
    /// all of the process's pages end in this interval, where its exit is
    /// the evidence, instead of the rest ending unexplained in the next.
    pub fn without_ended(after: PageTable, ended: &[u32]) -> PageTable {
        if !after.processes().iter().any(|p| ended.contains(&p.pid)) {
            return after;
        }
        PageTable::from_processes(
            after
                .processes()
                .iter()
                .filter(|p| !ended.contains(&p.pid))
                .cloned()
                .collect(),
        )
    }

    /// khugepaged's scans of the followed processes' VMAs in `evidence`,
    /// with each VMA's name (from either snapshot) and the running
    /// kernel's name for each result.
    pub fn thp_scans(
        evidence: &Evidence,
        decoder: &Decoder,
        before: &PageTable,
        after: &PageTable,
    ) -> Vec<ThpScans> {
        evidence
            .scan_results()
            .iter()
            .map(|(&(pid, vma_start, status), &scans)| ThpScans {
                pid,
                vma_start,
                vma: before
                    .vma(pid, vma_start)
                    .or_else(|| after.vma(pid, vma_start))
                    .map(|v| v.name.clone())
                    .unwrap_or_default(),
                result: decoder
                    .symbol(Hook::ScanPmd, "status", status)
                    .map_or_else(|| format!("status_{status}"), str::to_owned),
                scans,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        snapshot::{columns::test_table, flags::PM_PRESENT},
        transition::TransitionKind,
    };

    fn group(pid: u32, kind: TransitionKind, cause: Cause) -> TransitionGroup {
        TransitionGroup {
            ts_ns: 1,
            pid,
            vma_start: 0x1000_0000,
            vma: String::new(),
            kind,
            cause,
            pages: 3,
            from_node: -1,
            to_node: -1,
        }
    }

    #[test]
    fn unexplained_late_kinds_wait_and_the_rest_go_at_once() {
        let evidence = Evidence::default();
        let mut a = IntervalAssembly::default();
        let late = group(1, TransitionKind::FaultedIn, Cause::Unexplained);
        let explained = group(1, TransitionKind::FaultedIn, Cause::Fault);
        let never_late = group(2, TransitionKind::SwappedOut, Cause::Unexplained);
        let now = a.settle(
            vec![late.clone(), explained.clone(), never_late.clone()],
            &evidence,
            false,
        );
        assert_eq!(now, [explained, never_late]);
        assert!(a.is_waiting());
        // The next interval brings no evidence: it is reported unexplained,
        // after that interval's own transitions.
        let next = group(3, TransitionKind::Unmapped, Cause::Munmap);
        let now = a.settle(vec![next.clone()], &evidence, false);
        assert_eq!(now, [next, late.clone()]);
        assert!(!a.is_waiting());
        // An exit read two intervals after the pages went explains them;
        // with none in three, they are unexplained.
        let gone = group(4, TransitionKind::Unmapped, Cause::Unexplained);
        assert_eq!(a.settle(vec![gone.clone()], &evidence, false), []);
        assert_eq!(a.settle(vec![], &evidence, false), []);
        assert_eq!(a.settle(vec![], &evidence, false), []);
        assert_eq!(
            a.settle(vec![], &evidence, false),
            std::slice::from_ref(&gone)
        );
        assert_eq!(a.settle(vec![gone.clone()], &evidence, false), []);
        assert_eq!(a.settle(vec![], &evidence, false), []);
        let exit = crate::correlate::evidence::tests::evidence_with_exit(4);
        let now = a.settle(vec![], &exit, false);
        assert_eq!(
            now,
            [TransitionGroup {
                cause: Cause::Exit,
                ..gone
            }]
        );
        assert!(!a.is_waiting());
        // The last interval keeps nothing back.
        let now = a.settle(vec![late.clone()], &evidence, true);
        assert_eq!(now, [late]);
        assert!(!a.is_waiting());
    }

    #[test]
    fn a_held_process_keeps_its_table_from_before_and_an_ended_one_has_none() {
        let table = |pid, pages: u32| {
            let idx: Vec<u32> = (0..pages).collect();
            let n = idx.len();
            test_table(
                pid,
                0x1000_0000,
                idx,
                (0..n as u64).map(|i| PM_PRESENT | (100 + i)).collect(),
                vec![0; n],
                vec![false; n],
            )
        };
        let both = |a: PageTable, b: PageTable| {
            PageTable::from_processes(a.processes().iter().chain(b.processes()).cloned().collect())
        };
        let before = both(table(1, 2), table(2, 2));
        let after = both(table(1, 5), table(2, 7));
        let pages = |t: &PageTable, pid| t.process(pid).map(|p| p.len());
        let held = IntervalAssembly::hold(&before, after, &BTreeSet::from([1]));
        assert_eq!((pages(&held, 1), pages(&held, 2)), (Some(2), Some(7)));
        let after = both(table(1, 5), table(2, 7));
        let free = IntervalAssembly::hold(&before, after, &BTreeSet::new());
        assert_eq!((pages(&free, 1), pages(&free, 2)), (Some(5), Some(7)));
        // A process that exited in the interval has no table after it,
        // whatever was read of it while it went.
        let gone = IntervalAssembly::without_ended(free, &[2, 3]);
        assert_eq!((pages(&gone, 1), pages(&gone, 2)), (Some(5), None));
    }
}
