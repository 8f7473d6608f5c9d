//! Tallies of decoded events per interval: per process (faults by kind,
//! reclaim stalls) and system-wide (reclaim work and time), plus running
//! totals for the end-of-run summary.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind, fault_bits};

/// Page faults split the ways a developer asks about them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FaultStats {
    /// All user-mode page faults.
    pub faults: u64,
    /// Data reads (neither write nor instruction fetch).
    pub read: u64,
    pub write: u64,
    /// Instruction fetches.
    pub ifetch: u64,
    /// Protection faults on a present page (e.g. copy-on-write).
    pub protection: u64,
    /// Faulting address in the user half of the address space.
    pub user_addr: u64,
    /// Faulting address in the kernel half (always a bug or an exploit).
    pub kernel_addr: u64,
}

/// Reclaim time and work, per process or system-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReclaimStats {
    /// Direct reclaim episodes that ended in the interval.
    pub direct_reclaims: u64,
    pub direct_reclaim_ns: u64,
    pub direct_reclaimed: u64,
    /// Memory-cgroup reclaim episodes that ended in the interval.
    pub memcg_reclaims: u64,
    pub memcg_reclaim_ns: u64,
    pub memcg_reclaimed: u64,
}

/// One process's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessStats {
    #[serde(flatten)]
    pub faults: FaultStats,
    #[serde(flatten)]
    pub reclaim: ReclaimStats,
    /// PMD ranges scanned / collapsed into THPs in this process's own
    /// context (MADV_COLLAPSE; khugepaged's work counts under khugepaged).
    pub thp_scans: u64,
    pub thp_collapses: u64,
    /// Processes and threads this process started (`task_newtask`).
    pub processes_started: u64,
    pub threads_started: u64,
    /// Times the OOM killer chose this process (counted by the session,
    /// which resolves the victim's thread to its process).
    pub oom_killed: u64,
}

/// THP, compaction, migration, KSM, OOM and process-tree counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PageEventStats {
    /// huge_memory: PMD ranges scanned (anon + file) and collapse outcomes.
    pub thp_scans: u64,
    /// PMD scans whose event names no page (PFN -1: always on 7.x), so
    /// their result cannot be tied to a process's VMA.
    pub thp_scans_without_page: u64,
    pub thp_collapses: u64,
    pub thp_collapse_failed: u64,
    /// THP PMD mappings and large folios being split (fentry hooks).
    pub thp_pmd_splits: u64,
    pub thp_folio_splits: u64,
    /// compaction: runs ended, pages migrated / failed by compaction.
    pub compactions: u64,
    pub compaction_migrated: u64,
    pub compaction_failed: u64,
    /// migrate: pages migrated / failed by any migrate_pages() call.
    pub pages_migrated: u64,
    pub migrate_failed: u64,
    pub ksm_merges: u64,
    pub oom_kills: u64,
    /// `sched_process_fork` events: new processes and new threads.
    pub forks: u64,
    /// New threads of existing processes (`task_newtask` with CLONE_THREAD).
    pub new_threads: u64,
    pub execs: u64,
    pub exits: u64,
    /// kmem (opt-in): pages allocated / freed (4 KiB units).
    pub pages_allocated: u64,
    pub pages_freed: u64,
    /// Pages put into / taken out of balloons (fentry hooks).
    pub balloon_inflated: u64,
    pub balloon_deflated: u64,
    /// The same from /proc/vmstat balloon_inflate/balloon_deflate deltas,
    /// which every kernel has (the fallback where fentry is refused).
    pub balloon_vmstat_inflated: u64,
    pub balloon_vmstat_deflated: u64,
}

/// System-wide reclaim figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SystemStats {
    #[serde(flatten)]
    pub reclaim: ReclaimStats,
    pub kswapd_wakes: u64,
    /// Time kswapd threads spent awake (wake to sleep) in episodes that ended.
    pub kswapd_ns: u64,
    /// From mm_vmscan_lru_shrink_inactive, all reclaimers.
    pub pages_scanned: u64,
    pub pages_reclaimed: u64,
    /// Folios written out by reclaim (mm_vmscan_write_folio).
    pub pages_written: u64,
    #[serde(flatten)]
    pub page_events: PageEventStats,
}

/// Everything counted over one interval (or a whole run), per process
/// keyed by `K`: a pid (a recording's reader) or a
/// [`ProcessKey`](crate::proc::ProcessKey), pid and start time (the live
/// collector, where a reused pid must not merge two processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally<K = u32> {
    pub events: u64,
    pub processes: BTreeMap<K, ProcessStats>,
    pub system: SystemStats,
    /// khugepaged/MADV_COLLAPSE scan results by the kernel's status code:
    /// why ranges did (1) or did not collapse.
    pub scan_status: BTreeMap<i64, u64>,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Self {
            events: 0,
            processes: BTreeMap::new(),
            system: SystemStats::default(),
            scan_status: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> Tally<K> {
    fn merge(&mut self, other: &Tally<K>) {
        self.events += other.events;
        for (pid, s) in &other.processes {
            let t = self.processes.entry(*pid).or_default();
            add_faults(&mut t.faults, &s.faults);
            add_reclaim(&mut t.reclaim, &s.reclaim);
            t.thp_scans += s.thp_scans;
            t.thp_collapses += s.thp_collapses;
            t.processes_started += s.processes_started;
            t.threads_started += s.threads_started;
            t.oom_killed += s.oom_killed;
        }
        for (status, n) in &other.scan_status {
            *self.scan_status.entry(*status).or_default() += n;
        }
        let (t, s) = (&mut self.system, &other.system);
        add_reclaim(&mut t.reclaim, &s.reclaim);
        t.kswapd_wakes += s.kswapd_wakes;
        t.kswapd_ns += s.kswapd_ns;
        t.pages_scanned += s.pages_scanned;
        t.pages_reclaimed += s.pages_reclaimed;
        t.pages_written += s.pages_written;
        add_page_events(&mut t.page_events, &s.page_events);
    }
}

fn add_page_events(t: &mut PageEventStats, s: &PageEventStats) {
    t.thp_scans += s.thp_scans;
    t.thp_scans_without_page += s.thp_scans_without_page;
    t.thp_collapses += s.thp_collapses;
    t.thp_collapse_failed += s.thp_collapse_failed;
    t.compactions += s.compactions;
    t.compaction_migrated += s.compaction_migrated;
    t.compaction_failed += s.compaction_failed;
    t.pages_migrated += s.pages_migrated;
    t.migrate_failed += s.migrate_failed;
    t.ksm_merges += s.ksm_merges;
    t.oom_kills += s.oom_kills;
    t.forks += s.forks;
    t.new_threads += s.new_threads;
    t.execs += s.execs;
    t.exits += s.exits;
    t.pages_allocated += s.pages_allocated;
    t.pages_freed += s.pages_freed;
    t.balloon_inflated += s.balloon_inflated;
    t.balloon_deflated += s.balloon_deflated;
    t.balloon_vmstat_inflated += s.balloon_vmstat_inflated;
    t.balloon_vmstat_deflated += s.balloon_vmstat_deflated;
}

fn add_faults(t: &mut FaultStats, s: &FaultStats) {
    t.faults += s.faults;
    t.read += s.read;
    t.write += s.write;
    t.ifetch += s.ifetch;
    t.protection += s.protection;
    t.user_addr += s.user_addr;
    t.kernel_addr += s.kernel_addr;
}

fn add_reclaim(t: &mut ReclaimStats, s: &ReclaimStats) {
    t.direct_reclaims += s.direct_reclaims;
    t.direct_reclaim_ns += s.direct_reclaim_ns;
    t.direct_reclaimed += s.direct_reclaimed;
    t.memcg_reclaims += s.memcg_reclaims;
    t.memcg_reclaim_ns += s.memcg_reclaim_ns;
    t.memcg_reclaimed += s.memcg_reclaimed;
}

/// Which kind of reclaim a begin/end pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Episode {
    Direct,
    Memcg,
}

/// Folds events into the current interval and the run's totals.
#[derive(Debug)]
pub struct Aggregator<K = u32> {
    current: Tally<K>,
    total: Tally<K>,
    /// Reclaim episodes begun and not yet ended: (kind, tid) -> begin ns.
    open: HashMap<(Episode, u32), u64>,
    /// kswapd threads awake: nid -> wake ns.
    kswapd_awake: HashMap<i64, u64>,
}

impl<K> Default for Aggregator<K> {
    fn default() -> Self {
        Self {
            current: Tally::default(),
            total: Tally::default(),
            open: HashMap::new(),
            kswapd_awake: HashMap::new(),
        }
    }
}

impl Aggregator {
    /// Counts one event for the process its tgid names.
    pub fn add(&mut self, e: &Event) {
        self.add_for(e, e.tgid);
    }
}

impl<K: Ord + Copy> Aggregator<K> {
    /// Counts one event; per-process figures go to `process` (the event's
    /// tgid, resolved by the caller).
    pub fn add_for(&mut self, e: &Event, process: K) {
        self.current.events += 1;
        match e.kind {
            EventKind::PageFault {
                address,
                error_code,
                ..
            } => {
                let f = &mut self.current.processes.entry(process).or_default().faults;
                f.faults += 1;
                if error_code & fault_bits::WRITE != 0 {
                    f.write += 1;
                } else if error_code & fault_bits::INSTRUCTION != 0 {
                    f.ifetch += 1;
                } else {
                    f.read += 1;
                }
                if error_code & fault_bits::PROTECTION != 0 {
                    f.protection += 1;
                }
                // The top bit splits user and kernel halves on x86-64 and arm64.
                if address >> 63 == 0 {
                    f.user_addr += 1;
                } else {
                    f.kernel_addr += 1;
                }
            }
            EventKind::KswapdWake { nid, .. } => {
                self.current.system.kswapd_wakes += 1;
                self.kswapd_awake.entry(nid).or_insert(e.ts_ns);
            }
            EventKind::KswapdSleep { nid } => {
                if let Some(start) = self.kswapd_awake.remove(&nid) {
                    self.current.system.kswapd_ns += e.ts_ns.saturating_sub(start);
                }
            }
            EventKind::DirectReclaimBegin { .. } => {
                self.open.insert((Episode::Direct, e.tid), e.ts_ns);
            }
            EventKind::MemcgReclaimBegin { .. } => {
                self.open.insert((Episode::Memcg, e.tid), e.ts_ns);
            }
            EventKind::DirectReclaimEnd { nr_reclaimed } => {
                self.end_episode(e, process, Episode::Direct, nr_reclaimed)
            }
            EventKind::MemcgReclaimEnd { nr_reclaimed } => {
                self.end_episode(e, process, Episode::Memcg, nr_reclaimed)
            }
            EventKind::LruShrinkInactive {
                nr_scanned,
                nr_reclaimed,
                ..
            } => {
                self.current.system.pages_scanned += nr_scanned;
                self.current.system.pages_reclaimed += nr_reclaimed;
            }
            EventKind::WriteFolio { .. } => self.current.system.pages_written += 1,
            EventKind::ScanPmd { status, pfn, .. } => {
                self.current.system.page_events.thp_scans += 1;
                if pfn == u64::MAX {
                    self.current.system.page_events.thp_scans_without_page += 1;
                }
                *self.current.scan_status.entry(status).or_default() += 1;
                self.current.processes.entry(process).or_default().thp_scans += 1;
            }
            EventKind::ScanFile { .. } => self.current.system.page_events.thp_scans += 1,
            // khugepaged's result codes: 1 is SCAN_SUCCEED on every 6.x kernel.
            EventKind::CollapseHugePage { status, .. } => self.collapse(process, status == 1),
            EventKind::CollapseFile { result, .. } => self.collapse(process, result == 1),
            EventKind::CollapseIsolate { .. }
            | EventKind::CollapseSwapin { .. }
            | EventKind::CompactionBegin { .. }
            | EventKind::SetMigrationPte { .. }
            | EventKind::RemoveMigrationPte { .. }
            | EventKind::Munmap { .. }
            | EventKind::Madvise { .. }
            | EventKind::ProcessMadvise { .. }
            | EventKind::Brk { .. }
            | EventKind::Mremap { .. }
            | EventKind::Mmap { .. }
            | EventKind::MmapReturn { .. }
            | EventKind::MigratePagesStart { .. }
            | EventKind::KsmRemove { .. } => {}
            EventKind::CompactionEnd { .. } => self.current.system.page_events.compactions += 1,
            EventKind::CompactionMigrate {
                nr_migrated,
                nr_failed,
            } => {
                let p = &mut self.current.system.page_events;
                p.compaction_migrated += nr_migrated;
                p.compaction_failed += nr_failed;
            }
            EventKind::MigratePages {
                succeeded, failed, ..
            } => {
                let p = &mut self.current.system.page_events;
                p.pages_migrated += succeeded;
                p.migrate_failed += failed;
            }
            EventKind::KsmMerge { err, .. } => {
                if err == 0 {
                    self.current.system.page_events.ksm_merges += 1;
                }
            }
            EventKind::OomVictim { .. } => self.current.system.page_events.oom_kills += 1,
            EventKind::ProcessFork { .. } => self.current.system.page_events.forks += 1,
            EventKind::TaskNew { .. } => {
                let p = self.current.processes.entry(process).or_default();
                if e.kind.is_new_thread() {
                    p.threads_started += 1;
                    self.current.system.page_events.new_threads += 1;
                } else {
                    p.processes_started += 1;
                }
            }
            EventKind::ProcessExec { .. } => self.current.system.page_events.execs += 1,
            EventKind::ProcessExit { .. } => self.current.system.page_events.exits += 1,
            EventKind::PageAlloc { order, .. } => {
                self.current.system.page_events.pages_allocated += 1 << order.min(20)
            }
            EventKind::PageFree { order, .. } => {
                self.current.system.page_events.pages_freed += 1 << order.min(20)
            }
            EventKind::Balloon { inflate: true, .. } => {
                self.current.system.page_events.balloon_inflated += 1
            }
            EventKind::Balloon { inflate: false, .. } => {
                self.current.system.page_events.balloon_deflated += 1
            }
            EventKind::ThpSplit { pmd: true, .. } => {
                self.current.system.page_events.thp_pmd_splits += 1
            }
            EventKind::ThpSplit { pmd: false, .. } => {
                self.current.system.page_events.thp_folio_splits += 1
            }
        }
    }

    fn collapse(&mut self, process: K, ok: bool) {
        let p = &mut self.current.system.page_events;
        if ok {
            p.thp_collapses += 1;
            self.current
                .processes
                .entry(process)
                .or_default()
                .thp_collapses += 1;
        } else {
            p.thp_collapse_failed += 1;
        }
    }

    fn end_episode(&mut self, e: &Event, process: K, kind: Episode, nr_reclaimed: u64) {
        // An end without its begin (pagewatch attached mid-episode) still
        // counts the pages, with no duration.
        let ns = self
            .open
            .remove(&(kind, e.tid))
            .map_or(0, |start| e.ts_ns.saturating_sub(start));
        let proc_reclaim = &mut self.current.processes.entry(process).or_default().reclaim;
        for r in [proc_reclaim, &mut self.current.system.reclaim] {
            match kind {
                Episode::Direct => {
                    r.direct_reclaims += 1;
                    r.direct_reclaim_ns += ns;
                    r.direct_reclaimed += nr_reclaimed;
                }
                Episode::Memcg => {
                    r.memcg_reclaims += 1;
                    r.memcg_reclaim_ns += ns;
                    r.memcg_reclaimed += nr_reclaimed;
                }
            }
        }
    }

    /// Ends the current interval: returns its tally and adds it to the totals.
    pub fn take_interval(&mut self) -> Tally<K> {
        let interval = std::mem::take(&mut self.current);
        self.total.merge(&interval);
        interval
    }

    /// Counts an OOM kill against `victim`, the process (not the thread)
    /// the kernel named.
    pub fn add_oom_victim(&mut self, victim: K) {
        self.current.processes.entry(victim).or_default().oom_killed += 1;
    }

    /// Adds balloon page counts read from /proc/vmstat deltas.
    pub fn add_balloon_vmstat(&mut self, inflated: u64, deflated: u64) {
        let p = &mut self.current.system.page_events;
        p.balloon_vmstat_inflated += inflated;
        p.balloon_vmstat_deflated += deflated;
    }

    /// Whether the current interval has counted anything yet.
    pub fn has_events(&self) -> bool {
        self.current.events > 0
    }

    /// Totals of every interval taken so far.
    pub fn total(&self) -> &Tally<K> {
        &self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ns: u64, tgid: u32, tid: u32, kind: EventKind) -> Event {
        Event {
            ts_ns,
            cpu: 0,
            tgid,
            tid,
            kind,
        }
    }

    fn fault(tgid: u32, address: u64, error_code: u64) -> Event {
        ev(
            0,
            tgid,
            tgid,
            EventKind::PageFault {
                address,
                ip: 0,
                error_code,
            },
        )
    }

    #[test]
    fn faults_split_by_access_and_address_half() {
        let mut a = Aggregator::default();
        a.add(&fault(10, 0x1000, 0b00100)); // user read
        a.add(&fault(10, 0x2000, 0b00111)); // user write, protection
        a.add(&fault(10, 0x3000, 0b10100)); // instruction fetch
        a.add(&fault(11, 0xffff_8880_0000_0000, 0)); // kernel address
        let t = a.take_interval();
        let p = t.processes[&10].faults;
        assert_eq!(
            (p.faults, p.read, p.write, p.ifetch, p.protection),
            (3, 1, 1, 1, 1)
        );
        assert_eq!((p.user_addr, p.kernel_addr), (3, 0));
        assert_eq!(t.processes[&11].faults.kernel_addr, 1);
        assert_eq!(t.events, 4);
        assert_eq!(a.total().processes[&10].faults.faults, 3);
    }

    #[test]
    fn a_reused_pid_is_counted_as_another_process() {
        let mut a = Aggregator::<(u32, u64)>::default();
        a.add_for(&fault(10, 0x1000, 0b00110), (10, 1));
        a.take_interval();
        a.add_for(&fault(10, 0x1000, 0b00110), (10, 2));
        a.add_for(&fault(10, 0x2000, 0b00110), (10, 2));
        a.take_interval();
        let p = &a.total().processes;
        assert_eq!(
            (p[&(10, 1)].faults.faults, p[&(10, 2)].faults.faults),
            (1, 2)
        );
    }

    #[test]
    fn reclaim_episodes_are_timed_per_thread_and_kswapd_per_node() {
        let mut a = Aggregator::default();
        let begin = EventKind::DirectReclaimBegin {
            order: 0,
            gfp_flags: 0,
        };
        a.add(&ev(100, 5, 6, begin));
        a.add(&ev(150, 5, 7, begin));
        a.add(&ev(
            400,
            5,
            6,
            EventKind::DirectReclaimEnd { nr_reclaimed: 32 },
        ));
        a.add(&ev(1000, 1, 1, EventKind::KswapdWake { nid: 0, order: 0 }));
        a.add(&ev(3000, 1, 1, EventKind::KswapdSleep { nid: 0 }));
        let t = a.take_interval();
        assert_eq!(t.processes[&5].reclaim.direct_reclaim_ns, 300);
        assert_eq!(t.system.reclaim.direct_reclaimed, 32);
        assert_eq!(t.system.kswapd_ns, 2000);
        // tid 7 is still in reclaim; it ends in the next interval.
        a.add(&ev(
            650,
            5,
            7,
            EventKind::DirectReclaimEnd { nr_reclaimed: 1 },
        ));
        assert_eq!(a.take_interval().system.reclaim.direct_reclaim_ns, 500);
        assert_eq!(a.total().system.reclaim.direct_reclaims, 2);
    }
}
