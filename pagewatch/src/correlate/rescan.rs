//! Which followed processes a snapshot must read again, and which it may
//! carry over from the last one unchanged.
//!
//! A page of a process changes state either through the process itself
//! (a fault, munmap, madvise, mremap...) or through another agent (reclaim
//! and swap, migration of any kind, khugepaged or MADV_COLLAPSE, a THP
//! split, KSM, a balloon). The first kind moves the process's own counters
//! in /proc/PID/stat (minflt, majflt, vsize) and /proc/PID/status
//! (RssAnon, RssFile, RssShmem, VmSwap, HugetlbPages); the second moves a
//! system-wide counter in /proc/vmstat, /sys/kernel/mm/ksm or the per-size
//! THP stats. A process is carried over only when none of them moved
//! during the last two intervals (two: some counters, such as
//! thp_collapse_alloc, move just *before* the page tables change, so a
//! change can land after the snapshot of the interval that counted it).
//!
//! Reclaim and swap unmap pages, which the per-process RSS and swap
//! counters show exactly where the kernel sums them for /proc/PID/status
//! (recent kernels such as 6.18 do; /proc/PID/stat's rss is approximate
//! even there; [`crate::kernel::quirks::exact_rss_counters`] checks): there reclaim elsewhere on
//! the machine does not make every followed process be read again. Where
//! they are approximate (per-CPU deltas of tens of pages not yet folded
//! in) the reclaim and swap counters count as foreign too.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    kernel::status_kb,
    proc::ProcRoot,
    snapshot::sysfs::{read_u64, vmstat_where},
};

/// A process's own counters that move when it changes its pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessStamp {
    /// Start time in clock ticks (a reused pid is another process).
    pub start_ticks: u64,
    pub minflt: u64,
    pub majflt: u64,
    /// Bytes of address space.
    pub vsize: u64,
    /// kB, from /proc/PID/status.
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    pub rss_shmem_kb: u64,
    pub swap_kb: u64,
    pub hugetlb_kb: u64,
}

impl ProcessStamp {
    /// Reads `pid`'s stat and status; None when it is gone (or a zombie,
    /// which has no memory left).
    pub fn read(root: &ProcRoot, pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(root.pid_file(pid, "stat")).ok()?;
        let status = std::fs::read_to_string(root.pid_file(pid, "status")).ok()?;
        Self::parse(&stat, &status)
    }

    /// From the texts of /proc/PID/stat and /proc/PID/status.
    pub fn parse(stat: &str, status: &str) -> Option<Self> {
        // Fields after the parenthesised comm (which may hold spaces),
        // numbered from field 3 (state).
        let f: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let field = |n: usize| f.get(n - 3)?.trim().parse::<u64>().ok();
        let kb = |name: &str| status_kb(status, name);
        Some(Self {
            start_ticks: field(22)?,
            minflt: field(10)?,
            majflt: field(12)?,
            vsize: field(23)?,
            // A process without an mm (a zombie) has no Rss lines.
            rss_anon_kb: kb("RssAnon")?,
            rss_file_kb: kb("RssFile")?,
            rss_shmem_kb: kb("RssShmem")?,
            swap_kb: kb("VmSwap").unwrap_or(0),
            hugetlb_kb: kb("HugetlbPages").unwrap_or(0),
        })
    }
}

/// Whether the system-wide counter `name` of /proc/vmstat moves when
/// something other than a process changes that process's pages in place
/// (`reclaim`: count reclaim and swap too, for kernels whose per-process
/// RSS counters are approximate).
fn foreign_vmstat(name: &str, reclaim: bool) -> bool {
    const ALWAYS: [&str; 10] = [
        "pgmigrate_", // every migrate_pages(): compaction, NUMA, mbind, CMA, demotion
        "numa_pages_migrated",
        "thp_migration_",
        "pgdemote_",
        "pgpromote_success",
        "thp_collapse_alloc", // khugepaged and MADV_COLLAPSE
        "thp_split_",         // PMD, PUD and folio splits
        "thp_underused_split_page",
        "balloon_",
        "ksm_",
    ];
    const RECLAIM: [&str; 8] = [
        "pgsteal_",
        "pgscan_",
        "pswp",
        "zswp",
        "swpout_zero",
        "swpin_zero",
        "thp_swpout",
        "pglazyfreed",
    ];
    if name.ends_with("_failed") || name.ends_with("_fallback") {
        return false;
    }
    ALWAYS.iter().any(|p| name.starts_with(p))
        || (reclaim && RECLAIM.iter().any(|p| name.starts_with(p)))
}

/// The system-wide counters that move when another agent changes a
/// process's pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForeignCounters {
    values: BTreeMap<String, u64>,
}

impl ForeignCounters {
    /// Reads /proc/vmstat, /sys/kernel/mm/ksm/{pages_shared,pages_sharing,
    /// ksm_zero_pages} and the per-size THP split counters, where present.
    pub fn read(root: &ProcRoot, reclaim: bool) -> Self {
        let vmstat = std::fs::read_to_string(root.proc_file("vmstat")).unwrap_or_default();
        let mut extra = Vec::new();
        for name in ["pages_shared", "pages_sharing", "ksm_zero_pages"] {
            if let Some(v) = read_u64(&root.sys_file(&format!("kernel/mm/ksm/{name}"))) {
                extra.push((format!("ksm/{name}"), v));
            }
        }
        let thp = root.sys_file("kernel/mm/transparent_hugepage");
        if let Ok(dir) = std::fs::read_dir(&thp) {
            for e in dir.flatten() {
                let size = e.file_name().to_string_lossy().into_owned();
                if size.starts_with("hugepages-")
                    && let Some(v) = read_u64(&e.path().join("stats/split"))
                {
                    extra.push((format!("{size}/split"), v));
                }
            }
        }
        Self::parse(&vmstat, extra, reclaim)
    }

    /// From /proc/vmstat's text and other (name, value) counters.
    pub fn parse(vmstat: &str, extra: Vec<(String, u64)>, reclaim: bool) -> Self {
        let mut values = vmstat_where(vmstat, |k| foreign_vmstat(k, reclaim));
        values.extend(extra);
        Self { values }
    }

    /// The counters that moved since `earlier`, as `name+delta`.
    pub fn moved_since(&self, earlier: &Self) -> Vec<String> {
        self.values
            .iter()
            .filter_map(|(k, v)| {
                let was = earlier.values.get(k).copied().unwrap_or(0);
                (*v != was).then(|| format!("{k}{:+}", *v as i128 - was as i128))
            })
            .collect()
    }
}

/// Why a snapshot reads what it reads: the per-interval rescan decision.
#[derive(Debug, Default)]
pub struct RescanRule {
    foreign: Option<ForeignCounters>,
    /// The foreign counters moved in the previous interval.
    foreign_moved_before: bool,
    stamps: BTreeMap<u32, ProcessStamp>,
    /// Processes whose stamp changed (or that forked or exec'd) in the
    /// previous interval.
    changed_before: BTreeSet<u32>,
    changed_now: BTreeSet<u32>,
    /// Processes the events say forked or exec'd since the last snapshot.
    touched: BTreeSet<u32>,
    /// Foreign agents the events say were at work since the last snapshot.
    foreign_events: BTreeSet<&'static str>,
}

impl RescanRule {
    /// `pid` forked or exec'd (seen in the events).
    pub fn touch(&mut self, pid: u32) {
        self.touched.insert(pid);
    }

    /// A foreign agent (`what`) changed pages, by the events: its counter
    /// may move only when it is done. (pgmigrate_success moves once per
    /// migrate_pages() call, after every page of the call moved: a 64 MiB
    /// migrate_pages(2) that took 3.8 s in a loaded guest moved pages in
    /// four intervals, and the counter only in the last.)
    pub fn foreign_event(&mut self, what: &'static str) {
        self.foreign_events.insert(what);
    }

    /// Starts a snapshot with the foreign counters read now: Some(why)
    /// when every process must be read again (the counters that moved, the
    /// foreign agents the events saw, or "first snapshot").
    pub fn begin(&mut self, now: ForeignCounters) -> Option<String> {
        self.changed_before = std::mem::take(&mut self.changed_now);
        let mut moved = match &self.foreign {
            None => vec!["first snapshot".to_owned()],
            Some(earlier) => now.moved_since(earlier),
        };
        moved.extend(
            std::mem::take(&mut self.foreign_events)
                .into_iter()
                .map(|what| format!("{what} events")),
        );
        self.foreign = Some(now);
        let before = std::mem::replace(&mut self.foreign_moved_before, !moved.is_empty());
        if !moved.is_empty() {
            Some(moved.join(", "))
        } else if before {
            Some("foreign counters moved in the previous interval".to_owned())
        } else {
            None
        }
    }

    /// Whether `pid` must be read again, given its stamp now (None: could
    /// not be read), whether the whole snapshot is read again (`all`), and
    /// whether the last snapshot has its table (`known`).
    pub fn must_rescan(
        &mut self,
        pid: u32,
        stamp: Option<ProcessStamp>,
        all: bool,
        known: bool,
    ) -> bool {
        let changed = match stamp {
            Some(s) => self.stamps.insert(pid, s) != Some(s),
            None => {
                self.stamps.remove(&pid);
                true
            }
        } | self.touched.remove(&pid);
        if changed {
            self.changed_now.insert(pid);
        }
        all || !known || changed || self.changed_before.contains(&pid)
    }

    /// Forgets processes no longer followed.
    pub fn retain(&mut self, followed: impl Fn(u32) -> bool) {
        self.stamps.retain(|pid, _| followed(*pid));
        self.touched.retain(|pid| followed(*pid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4711 (a b) S 1 4711 4711 0 -1 4194560 120 0 3 0 5 6 0 0 20 0 1 0 \
                        98765 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
    const STATUS: &str = "Name:\ta b\nVmSize:\t  102400 kB\nRssAnon:\t    8192 kB\n\
                          RssFile:\t    2048 kB\nRssShmem:\t       0 kB\nVmSwap:\t      12 kB\n\
                          HugetlbPages:\t       0 kB\n";

    fn stamp(minflt: u64) -> Option<ProcessStamp> {
        Some(ProcessStamp {
            minflt,
            ..ProcessStamp::default()
        })
    }

    #[test]
    fn stamps_are_parsed_from_stat_and_status() {
        let s = ProcessStamp::parse(STAT, STATUS).unwrap();
        assert_eq!(
            (s.minflt, s.majflt, s.start_ticks, s.vsize),
            (120, 3, 98765, 104857600)
        );
        assert_eq!(
            (s.rss_anon_kb, s.rss_file_kb, s.rss_shmem_kb, s.swap_kb),
            (8192, 2048, 0, 12)
        );
        // A zombie's status has no Rss lines.
        assert_eq!(ProcessStamp::parse(STAT, "Name:\tz\n"), None);
    }

    #[test]
    fn foreign_counters_are_the_ones_that_move_pages_of_others() {
        let vmstat = "pgfault 10\npgmigrate_success 5\npgsteal_kswapd 7\nthp_collapse_alloc 1\n\
                      thp_collapse_alloc_failed 9\nthp_split_pmd 2\nnr_free_pages 100\n";
        let exact = ForeignCounters::parse(vmstat, vec![("ksm/pages_sharing".into(), 3)], false);
        let names: Vec<&str> = exact.values.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "ksm/pages_sharing",
                "pgmigrate_success",
                "thp_collapse_alloc",
                "thp_split_pmd"
            ]
        );
        let approx = ForeignCounters::parse(vmstat, vec![], true);
        assert!(approx.values.contains_key("pgsteal_kswapd"));
        let later = ForeignCounters::parse(
            &vmstat.replace("pgmigrate_success 5", "pgmigrate_success 8"),
            vec![("ksm/pages_sharing".into(), 3)],
            false,
        );
        assert_eq!(later.moved_since(&exact), ["pgmigrate_success+3"]);
        assert!(exact.moved_since(&exact).is_empty());
    }

    #[test]
    fn a_steady_process_is_carried_and_any_change_rescans_for_two_intervals() {
        let quiet = ForeignCounters::parse("pgmigrate_success 1\n", vec![], false);
        let moved = ForeignCounters::parse("pgmigrate_success 2\n", vec![], false);
        let mut r = RescanRule::default();
        assert_eq!(r.begin(quiet.clone()).as_deref(), Some("first snapshot"));
        assert!(r.must_rescan(1, stamp(10), true, false));
        // Second snapshot: the first one's reading counts as moved once.
        assert!(r.begin(quiet.clone()).is_some());
        assert!(r.must_rescan(1, stamp(10), true, true));
        // Now steady: carried.
        assert_eq!(r.begin(quiet.clone()), None);
        assert!(!r.must_rescan(1, stamp(10), false, true));
        // Not in the last snapshot: read.
        assert!(r.must_rescan(2, stamp(1), false, false));
        // It faulted: read now and in the next snapshot, then carried.
        assert_eq!(r.begin(quiet.clone()), None);
        assert!(r.must_rescan(1, stamp(11), false, true));
        assert_eq!(r.begin(quiet.clone()), None);
        assert!(r.must_rescan(1, stamp(11), false, true));
        assert_eq!(r.begin(quiet.clone()), None);
        assert!(!r.must_rescan(1, stamp(11), false, true));
        // Fork or exec seen in the events.
        r.touch(1);
        assert_eq!(r.begin(quiet.clone()), None);
        assert!(r.must_rescan(1, stamp(11), false, true));
        // Gone: read (the scan leaves it out).
        assert!(r.must_rescan(3, None, false, true));
        // A foreign counter moved: everything, twice.
        assert_eq!(
            r.begin(moved.clone()).as_deref(),
            Some("pgmigrate_success+1")
        );
        assert_eq!(
            r.begin(moved.clone()).as_deref(),
            Some("foreign counters moved in the previous interval")
        );
        assert_eq!(r.begin(moved.clone()), None);
        // Pages migrating, by the events, before the counter moves:
        // everything, twice, like a counter.
        r.foreign_event("migration");
        r.foreign_event("migration");
        assert_eq!(r.begin(moved.clone()).as_deref(), Some("migration events"));
        assert!(r.begin(moved.clone()).is_some());
        assert_eq!(r.begin(moved), None);
    }
}
