//! Balloon episodes: consecutive intervals in which a balloon inflated (or
//! deflated), with the pages it took (from /proc/vmstat balloon_inflate /
//! balloon_deflate deltas, which every kernel has, and the balloon hooks'
//! counts where fentry attaches) and, per process, the pages it lost in
//! those intervals: swapped out, unmapped without an exit, exec or OOM kill
//! to explain it (reclaimed file pages look like this), and migrated.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::transition::{Cause, TransitionGroup, TransitionKind};

/// Balloon activity in one interval (intervals without any are left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BalloonInterval {
    /// CLOCK_MONOTONIC ns at the end of the interval.
    pub ts_ns: u64,
    /// /proc/vmstat balloon_inflate and balloon_deflate deltas (pages).
    pub vmstat_inflated: u64,
    pub vmstat_deflated: u64,
    /// Pages the balloon hooks saw enqueued and dequeued (0 where fentry
    /// is refused).
    pub hook_inflated: u64,
    pub hook_deflated: u64,
}

impl BalloonInterval {
    fn inflated(&self) -> u64 {
        self.vmstat_inflated.max(self.hook_inflated)
    }
    fn deflated(&self) -> u64 {
        self.vmstat_deflated.max(self.hook_deflated)
    }
}

/// Pages one process lost during an episode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessLoss {
    pub pid: u32,
    pub swapped_out: u64,
    /// Unmapped with no exit, exec or OOM kill in the interval.
    pub unmapped: u64,
    /// Moved to another PFN (same node or not).
    pub migrated: u64,
}

/// One inflation or deflation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BalloonEpisode {
    /// `true` for an inflation (more pages went in than came out).
    pub inflate: bool,
    /// CLOCK_MONOTONIC ns: the start of its first interval, the end of its
    /// last.
    pub start_ns: u64,
    pub end_ns: u64,
    pub intervals: u64,
    /// Pages in and out, from vmstat, and from the hooks.
    pub vmstat_inflated: u64,
    pub vmstat_deflated: u64,
    pub hook_inflated: u64,
    pub hook_deflated: u64,
    /// Processes that lost pages, in pid order.
    pub losses: Vec<ProcessLoss>,
}

/// Builds the episodes of a recording: `interval_ends` holds the end of
/// every interval in order, `start_ns` the start of the first; `active`
/// the intervals with balloon activity; `transitions` every transition
/// group (stamped with its interval's end).
pub fn episodes(
    start_ns: u64,
    interval_ends: &[u64],
    active: &[BalloonInterval],
    transitions: &[TransitionGroup],
) -> Vec<BalloonEpisode> {
    let index: BTreeMap<u64, usize> = interval_ends
        .iter()
        .enumerate()
        .map(|(i, &ts)| (ts, i))
        .collect();
    let mut out: Vec<(BalloonEpisode, Option<usize>)> = Vec::new();
    for a in active {
        let i = index.get(&a.ts_ns).copied();
        let inflate = a.inflated() >= a.deflated();
        let continues = match out.last() {
            Some((e, Some(last))) => e.inflate == inflate && i == Some(last + 1),
            _ => false,
        };
        if !continues {
            let start_ns = match i {
                Some(0) | None => start_ns,
                Some(i) => interval_ends[i - 1],
            };
            out.push((
                BalloonEpisode {
                    inflate,
                    start_ns,
                    end_ns: a.ts_ns,
                    intervals: 0,
                    vmstat_inflated: 0,
                    vmstat_deflated: 0,
                    hook_inflated: 0,
                    hook_deflated: 0,
                    losses: Vec::new(),
                },
                i,
            ));
        }
        let (e, last) = out.last_mut().expect("pushed above");
        *last = i;
        e.end_ns = a.ts_ns;
        e.intervals += 1;
        e.vmstat_inflated += a.vmstat_inflated;
        e.vmstat_deflated += a.vmstat_deflated;
        e.hook_inflated += a.hook_inflated;
        e.hook_deflated += a.hook_deflated;
    }
    let mut episodes: Vec<BalloonEpisode> = out.into_iter().map(|(e, _)| e).collect();
    for e in &mut episodes {
        let mut losses: BTreeMap<u32, ProcessLoss> = BTreeMap::new();
        // Transitions are stamped with the end of their interval.
        for t in transitions
            .iter()
            .filter(|t| t.ts_ns > e.start_ns && t.ts_ns <= e.end_ns)
        {
            let l = losses.entry(t.pid).or_insert_with(|| ProcessLoss {
                pid: t.pid,
                ..ProcessLoss::default()
            });
            match (t.kind, t.cause) {
                (TransitionKind::SwappedOut, _) => l.swapped_out += t.pages,
                (TransitionKind::Unmapped, Cause::Unexplained) => l.unmapped += t.pages,
                (TransitionKind::Migrated | TransitionKind::NodeChanged, _) => {
                    l.migrated += t.pages
                }
                _ => {}
            }
        }
        e.losses = losses
            .into_values()
            .filter(|l| l.swapped_out + l.unmapped + l.migrated > 0)
            .collect();
    }
    episodes
}

impl BalloonEpisode {
    /// One line: `inflate 1.00-3.00 s: 150 pages (vmstat; hooks 0): ...`
    /// with times relative to `origin_ns` and process names from `comm`.
    pub fn describe(&self, origin_ns: u64, comm: impl Fn(u32) -> String) -> String {
        let s = |ns: u64| ns.saturating_sub(origin_ns) as f64 / 1e9;
        let (pages, hooks) = if self.inflate {
            (self.vmstat_inflated, self.hook_inflated)
        } else {
            (self.vmstat_deflated, self.hook_deflated)
        };
        let mut line = format!(
            "{} {:.2}-{:.2} s: {pages} pages by vmstat, {hooks} by the balloon hooks",
            if self.inflate { "inflate" } else { "deflate" },
            s(self.start_ns),
            s(self.end_ns),
        );
        for l in &self.losses {
            line.push_str(&format!(
                "\n    pid {} ({}): swapped out {}, unmapped {}, migrated {}",
                l.pid,
                comm(l.pid),
                l.swapped_out,
                l.unmapped,
                l.migrated
            ));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(ts_ns: u64, inflated: u64, deflated: u64) -> BalloonInterval {
        BalloonInterval {
            ts_ns,
            vmstat_inflated: inflated,
            vmstat_deflated: deflated,
            hook_inflated: 0,
            hook_deflated: 0,
        }
    }

    fn t(ts_ns: u64, pid: u32, kind: TransitionKind, cause: Cause, pages: u64) -> TransitionGroup {
        TransitionGroup {
            ts_ns,
            pid,
            vma_start: 0x1000,
            vma: String::new(),
            kind,
            cause,
            pages,
            from_node: -1,
            to_node: -1,
        }
    }

    #[test]
    fn consecutive_intervals_of_one_direction_make_an_episode_with_its_losses() {
        use TransitionKind::*;
        let ends = [10, 20, 30, 40, 50, 60];
        let act = [
            active(20, 100, 0),
            active(30, 50, 0),
            // A quiet interval (40) ends the inflation.
            active(50, 0, 150),
            active(60, 7, 0),
        ];
        let ts = [
            t(20, 7, SwappedOut, Cause::BalloonPressure, 40),
            t(30, 8, Unmapped, Cause::Unexplained, 10),
            t(30, 7, NodeChanged, Cause::Compaction, 5),
            t(30, 9, Unmapped, Cause::Exit, 300),
            t(30, 9, FaultedIn, Cause::Fault, 3),
            t(40, 7, SwappedOut, Cause::KswapdReclaim, 99),
        ];
        let e = episodes(0, &ends, &act, &ts);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert_eq!(
            (e[0].inflate, e[0].start_ns, e[0].end_ns, e[0].intervals),
            (true, 10, 30, 2)
        );
        assert_eq!(e[0].vmstat_inflated, 150);
        assert_eq!(
            e[0].losses,
            vec![
                ProcessLoss {
                    pid: 7,
                    swapped_out: 40,
                    unmapped: 0,
                    migrated: 5
                },
                ProcessLoss {
                    pid: 8,
                    swapped_out: 0,
                    unmapped: 10,
                    migrated: 0
                },
            ],
            "exits and faults are no losses; interval 40 is outside"
        );
        assert_eq!(
            (
                e[1].inflate,
                e[1].start_ns,
                e[1].end_ns,
                e[1].vmstat_deflated
            ),
            (false, 40, 50, 150)
        );
        assert!(e[1].losses.is_empty());
        assert_eq!((e[2].inflate, e[2].start_ns), (true, 50));
        assert_eq!(
            e[0].describe(0, |_| "w".into()),
            "inflate 0.00-0.00 s: 150 pages by vmstat, 0 by the balloon hooks\n    \
             pid 7 (w): swapped out 40, unmapped 0, migrated 5\n    \
             pid 8 (w): swapped out 0, unmapped 10, migrated 0"
        );
    }

    #[test]
    fn the_first_interval_starts_at_the_recording_start_and_hooks_count_where_vmstat_lags() {
        let act = [BalloonInterval {
            ts_ns: 1_000_000_000,
            vmstat_inflated: 0,
            vmstat_deflated: 0,
            hook_inflated: 256,
            hook_deflated: 0,
        }];
        let e = episodes(500_000_000, &[1_000_000_000], &act, &[]);
        assert_eq!(
            (e[0].inflate, e[0].start_ns, e[0].hook_inflated),
            (true, 500_000_000, 256)
        );
    }
}
