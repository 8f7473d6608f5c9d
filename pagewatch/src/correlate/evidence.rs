//! What the events of one interval say happened, in the form the
//! correlator asks about: did this process fault, was reclaim running and
//! of which kind, which PMD ranges did khugepaged or MADV_COLLAPSE collapse,
//! which pages did KSM merge, which migrations for which reason, which
//! processes exited or were OOM-killed, was a balloon inflating.
//!
//! Events that name a PFN rather than a process are tied to pages through
//! it: khugepaged's scans, and the isolations of every collapse (7.x scan
//! events name no page after a successful collapse), name a page of the
//! range before the collapse, resolved through the PFN -> owner map of the
//! snapshot taken before the interval ([`Evidence::resolve_pfns`]); KSM's
//! merges name the KSM page,
//! which the merged pages map afterwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use pagewatch_common::hook::Hook;

use crate::{
    event::{Decoder, Event, EventKind},
    snapshot::columns::PageTable,
    transition::{Cause, TransitionKind},
};

const PMD_SIZE: u64 = 2 << 20;

/// Migration causes by the kernel's `migrate_reason` name.
fn migrate_cause(reason: &str) -> Cause {
    match reason {
        "numa_misplaced" => Cause::NumaBalancing,
        "syscall_or_cpuset" | "mempolicy_mbind" => Cause::MigrateSyscall,
        "compaction" => Cause::Compaction,
        _ => Cause::Unexplained,
    }
}

/// Which reclaim ran in an interval.
#[derive(Debug, Default, Clone)]
struct Reclaim {
    direct_reclaimers: HashSet<u32>,
    memcg_reclaimers: HashSet<u32>,
    /// kswapd woke, slept or shrank an LRU list.
    kswapd_ran: bool,
    balloon_inflating: bool,
}

impl Reclaim {
    fn cause(&self, pid: u32) -> Cause {
        let any_reclaim = self.kswapd_ran
            || !self.direct_reclaimers.is_empty()
            || !self.memcg_reclaimers.is_empty();
        if self.balloon_inflating && any_reclaim {
            Cause::BalloonPressure
        } else if self.memcg_reclaimers.contains(&pid) {
            Cause::MemcgReclaim
        } else if self.direct_reclaimers.contains(&pid) {
            Cause::DirectReclaim
        } else if self.kswapd_ran {
            Cause::KswapdReclaim
        } else {
            // Reclaim by others: attributable only when of one kind.
            match (
                self.memcg_reclaimers.is_empty(),
                self.direct_reclaimers.is_empty(),
            ) {
                (false, true) => Cause::MemcgReclaim,
                (true, false) => Cause::DirectReclaim,
                _ => Cause::Unexplained,
            }
        }
    }
}

/// A PMD range scanned or isolated for collapse, before resolution.
#[derive(Debug, Clone, Copy)]
struct Scan {
    /// A page of the range (all ones when the kernel names none).
    pfn: u64,
    /// The kernel's scan_result code.
    status: i64,
    /// The thread group that scanned (its own MADV_COLLAPSE), or None for
    /// khugepaged.
    by: Option<u32>,
    /// A scan's result (tallied per VMA), not an isolation.
    scan: bool,
    /// The mm scanned (0: the event names none).
    mm: u64,
}

/// A successful collapse (`mm_collapse_huge_page`), before resolution.
#[derive(Debug, Clone, Copy)]
struct Collapse {
    mm: u64,
    /// The page its thread isolated just before (None: no isolation seen).
    pfn: Option<u64>,
    /// As [`Scan::by`].
    by: Option<u32>,
}

/// A THP split the split hooks saw, before resolution.
#[derive(Debug, Clone, Copy)]
struct Split {
    /// A page of the THP.
    pfn: u64,
    /// The thread group that split it.
    by: u32,
    /// The PMD mapping (else the folio).
    pmd: bool,
}

/// The one cause with pages in `migrations`, if exactly one has.
fn only_cause(migrations: &BTreeMap<Cause, u64>) -> Option<Cause> {
    let mut causes = migrations.iter().filter(|(_, n)| **n > 0);
    match (causes.next(), causes.next()) {
        (Some((cause, _)), None) => Some(*cause),
        _ => None,
    }
}

/// Evidence gathered from one interval's events.
#[derive(Debug, Default)]
pub struct Evidence {
    faulted: HashSet<u32>,
    reclaim: Reclaim,
    /// The previous interval's reclaim: a page reclaimed after a snapshot,
    /// whose events were drained into that interval, shows as swapped out
    /// in the next snapshot, when reclaim may have stopped.
    earlier_reclaim: Reclaim,
    /// Collapse scans and isolations (khugepaged's,
    /// or a process's own MADV_COLLAPSE), before resolution.
    scans: Vec<Scan>,
    /// (pid, PMD-aligned address) collapsed by MADV_COLLAPSE, after resolution.
    madv_ranges: HashSet<(u32, u64)>,
    /// khugepaged scan results per (pid, VMA start), after resolution.
    scan_results: BTreeMap<(u32, u64, i64), u64>,
    /// (pid, PMD-aligned address) khugepaged collapsed, after resolution.
    khugepaged_ranges: HashSet<(u32, u64)>,
    /// Collapses of the previous interval: a scan can land just before a
    /// snapshot and its collapse just after, so the page tables show it
    /// one interval later.
    earlier_collapses: HashSet<(u32, u64)>,
    earlier_madv_ranges: HashSet<(u32, u64)>,
    /// KSM pages merged into (the events name the resulting KSM page).
    ksm_pfns: HashSet<u64>,
    /// Pages migrated per cause in the interval, and in the one before.
    migrations: BTreeMap<Cause, u64>,
    earlier_migrations: BTreeMap<Cause, u64>,
    /// migrate_pages() calls begun and not ended, per cause, carried from
    /// interval to interval: a long call's moves are seen before its end.
    migrating: BTreeMap<Cause, u64>,
    /// Causes of the calls begun in this interval.
    migrations_begun: HashSet<Cause>,
    exited: HashSet<u32>,
    execed: HashSet<u32>,
    /// Processes that exec'd or exited in the previous interval: its
    /// snapshot may have read the old image just before the exec, or a
    /// process still in do_exit() (before 6.10 its end is known only once
    /// no thread is alive), whose pages then vanish in this one.
    earlier_execed: HashSet<u32>,
    earlier_exited: HashSet<u32>,
    oom_victims: HashSet<u32>,
    /// /proc/vmstat (thp_split_pmd, thp_split_page) deltas of this interval
    /// and of the one before (a split just before a snapshot is counted by
    /// the vmstat read of the previous interval).
    thp_splits: (u64, u64),
    earlier_thp_splits: (u64, u64),
    /// Splits the split hooks saw, before resolution.
    splits: Vec<Split>,
    /// (pid, PMD-aligned address, PMD split) -> split by the process itself,
    /// after resolution; and those of the previous interval.
    split_ranges: BTreeMap<(u32, u64, bool), bool>,
    earlier_split_ranges: BTreeMap<(u32, u64, bool), bool>,
    /// PMD ranges (pid, address >> 21) the process faulted in, this
    /// interval and the one before.
    fault_ranges: HashSet<(u32, u64)>,
    earlier_fault_ranges: HashSet<(u32, u64)>,
    /// Ranges the process unmapped, discarded or populated, by cause,
    /// this interval and the one before.
    ranges: RangeSet,
    earlier_ranges: RangeSet,
    /// mmap calls with MAP_POPULATE/MAP_LOCKED waiting for their return
    /// (thread id -> its process, length, entry time); a call can straddle
    /// several intervals' ends.
    populating: BTreeMap<u32, Populating>,
    /// (PFN, address) pairs of migration entries: the page left (set) or
    /// arrived at (remove) that address, with the reason of the
    /// migrate_pages() call the thread that moved it was in (Unexplained
    /// if none was seen begin); this interval and the one before.
    migrated: HashMap<(u64, u64), Cause>,
    earlier_migrated: HashMap<(u64, u64), Cause>,
    /// The reason of the migrate_pages() call each thread is in (begun,
    /// not ended), carried from interval to interval.
    migrating_threads: HashMap<u32, Cause>,
    /// Threads that called madvise or process_madvise(MADV_PAGEOUT), this
    /// interval and the one before (a call on a big range outlasts an
    /// interval); their write-outs are reclaim they asked for.
    pageout_threads: HashSet<u32>,
    earlier_pageout_threads: HashSet<u32>,
    /// PFNs those threads wrote to swap, this interval and the one before.
    paged_out: HashSet<u64>,
    earlier_paged_out: HashSet<u64>,
    /// Processes that called process_madvise(MADV_COLLAPSE), this interval
    /// and the one before: their collapse events are of another process's
    /// memory.
    remote_collapsers: HashSet<u32>,
    earlier_remote_collapsers: HashSet<u32>,
    /// The lowest program break each process asked brk(2) for, this
    /// interval and the one before: its heap's pages from there up went.
    brk_floor: HashMap<u32, u64>,
    earlier_brk_floor: HashMap<u32, u64>,
    /// Processes in a madvise(MADV_COLLAPSE) call, this interval and the
    /// one before (kept while their collapse events come): their collapse
    /// events are theirs even when they are named khugepaged, as the mm
    /// selftest that tests MADV_COLLAPSE is.
    madv_collapsers: HashSet<u32>,
    earlier_madv_collapsers: HashSet<u32>,
    /// The page each thread isolated last for a collapse, until the
    /// collapse's own event.
    isolated: HashMap<u32, u64>,
    /// Successful collapses, before resolution.
    collapses: Vec<Collapse>,
    /// Which process each mm (the kernel's `struct mm_struct *`, named by
    /// the collapse events) is, learnt from collapse events resolved
    /// through a snapshot or made in the process's own context; carried
    /// from interval to interval until the process exits.
    mm_owners: HashMap<u64, u32>,
    /// Collapses of memory no snapshot saw (a range faulted in, collapsed
    /// and freed between two snapshots), per (process, cause), after
    /// resolution.
    unseen_collapses: BTreeMap<(u32, Cause), u64>,
}

/// An mmap(MAP_POPULATE or MAP_LOCKED) call that has not returned.
#[derive(Debug, Clone, Copy)]
struct Populating {
    tgid: u32,
    len: u64,
    /// When the call was entered (CLOCK_MONOTONIC, ns).
    since_ns: u64,
}

/// How long a process inside a MAP_POPULATE mmap() is held back from the
/// diff (see [`Evidence::populating_processes`]): a lost return event, or
/// a call that runs for minutes, must not hide its pages for good.
pub const POPULATE_HOLD_NS: u64 = 30_000_000_000;

/// The madvise advice values that drop pages (include/uapi/asm-generic/mman-common.h).
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;
const MADV_DONTNEED_LOCKED: u64 = 24;
/// Reclaim the range now (since 5.4).
const MADV_PAGEOUT: u64 = 21;
const MADV_COLLAPSE: u64 = 25;
/// The madvise advice values that fault pages in.
const MADV_POPULATE_READ: u64 = 22;
const MADV_POPULATE_WRITE: u64 = 23;
/// mmap(MAP_FIXED) replaces what was mapped at the address: an implicit munmap.
const MAP_FIXED: u64 = 0x10;
/// mmap flags that populate the mapping (x86 and asm-generic).
const MAP_LOCKED: u64 = 0x2000;
const MAP_POPULATE: u64 = 0x8000;
/// mremap flags under which the mapping may move away.
const MREMAP_MAYMOVE: u64 = 1;
/// Range causes, in the order they are asked about.
const RANGE_CAUSES: [Cause; 7] = [
    Cause::Munmap,
    Cause::Mremap,
    Cause::MadvDontneed,
    Cause::MadvRemove,
    Cause::MadvFree,
    Cause::MadvPageout,
    Cause::Populate,
];

/// Address ranges per (cause, pid), kept disjoint: overlapping and
/// adjacent ranges are merged as they are added.
#[derive(Debug, Default, Clone)]
struct RangeSet {
    /// (cause, pid, start) -> end.
    ranges: BTreeMap<(Cause, u32, u64), u64>,
}

impl RangeSet {
    fn add(&mut self, cause: Cause, pid: u32, start: u64, len: u64) {
        let (mut start, mut end) = (start, start.saturating_add(len));
        if end <= start {
            return;
        }
        // Absorb every range that overlaps or touches [start, end).
        while let Some((&(c, p, s), &e)) = self
            .ranges
            .range(..=(cause, pid, end))
            .next_back()
            .filter(|((c, p, _), e)| *c == cause && *p == pid && **e >= start)
        {
            self.ranges.remove(&(c, p, s));
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert((cause, pid, start), end);
    }

    fn contains(&self, cause: Cause, pid: u32, va: u64) -> bool {
        self.ranges
            .range(..=(cause, pid, va))
            .next_back()
            .is_some_and(|(&(c, p, _), &end)| c == cause && p == pid && va < end)
    }

    /// The first of `RANGE_CAUSES` (but `Populate`) whose ranges hold `va`.
    fn dropped(&self, pid: u32, va: u64) -> Option<Cause> {
        RANGE_CAUSES
            .into_iter()
            .filter(|c| *c != Cause::Populate)
            .find(|c| self.contains(*c, pid, va))
    }
}

impl Evidence {
    /// Takes one event into account. `comm(tgid)` names the thread, which
    /// tells khugepaged from a process collapsing its own memory with
    /// MADV_COLLAPSE, and kswapd's LRU shrinking from a direct reclaimer's.
    pub fn add(&mut self, e: &Event, decoder: &Decoder, mut comm: impl FnMut(u32) -> String) {
        match e.kind {
            EventKind::PageFault { address, .. } => {
                self.faulted.insert(e.tgid);
                self.fault_ranges.insert((e.tgid, address >> 21));
            }
            EventKind::Munmap { addr, len } => self.ranges.add(Cause::Munmap, e.tgid, addr, len),
            EventKind::Madvise { start, len, advice } => {
                let cause = match advice {
                    MADV_DONTNEED | MADV_DONTNEED_LOCKED => Cause::MadvDontneed,
                    MADV_FREE => Cause::MadvFree,
                    MADV_REMOVE => Cause::MadvRemove,
                    MADV_POPULATE_READ | MADV_POPULATE_WRITE => Cause::Populate,
                    MADV_PAGEOUT => {
                        self.pageout_threads.insert(e.tid);
                        Cause::MadvPageout
                    }
                    MADV_COLLAPSE => {
                        self.madv_collapsers.insert(e.tgid);
                        let end = start.saturating_add(len);
                        let mut pmd = start & !(PMD_SIZE - 1);
                        while pmd < end {
                            self.madv_ranges.insert((e.tgid, pmd));
                            pmd += PMD_SIZE;
                        }
                        return;
                    }
                    _ => return,
                };
                self.ranges.add(cause, e.tgid, start, len);
            }
            // Another process's memory: which one the pidfd names is not
            // known here; the pages this thread writes to swap tell.
            EventKind::ProcessMadvise { advice, .. } => match advice {
                MADV_PAGEOUT => {
                    self.pageout_threads.insert(e.tid);
                }
                MADV_COLLAPSE => {
                    self.remote_collapsers.insert(e.tgid);
                }
                _ => {}
            },
            // brk(0) asks where the break is.
            EventKind::Brk { brk } if brk != 0 => {
                let floor = self.brk_floor.entry(e.tgid).or_insert(brk);
                *floor = (*floor).min(brk);
            }
            // Moved (it may have): the whole old range; else what shrank.
            EventKind::Mremap {
                addr,
                old_len,
                new_len,
                flags,
                ..
            } => {
                if flags & MREMAP_MAYMOVE != 0 {
                    self.ranges.add(Cause::Mremap, e.tgid, addr, old_len);
                } else if new_len < old_len {
                    let start = addr.saturating_add(new_len);
                    self.ranges
                        .add(Cause::Mremap, e.tgid, start, old_len - new_len);
                }
            }
            EventKind::Mmap {
                addr, len, flags, ..
            } => {
                if flags & MAP_FIXED != 0 {
                    self.ranges.add(Cause::Munmap, e.tgid, addr, len);
                }
                if flags & (MAP_POPULATE | MAP_LOCKED) != 0 {
                    self.populating.insert(
                        e.tid,
                        Populating {
                            tgid: e.tgid,
                            len,
                            since_ns: e.ts_ns,
                        },
                    );
                }
            }
            EventKind::MmapReturn { ret } => {
                if let Some(Populating { len, .. }) = self.populating.remove(&e.tid)
                    && ret > 0
                {
                    self.ranges.add(Cause::Populate, e.tgid, ret as u64, len);
                }
            }
            EventKind::SetMigrationPte {
                addr,
                old_pfn: pfn,
                pmd,
                ..
            }
            | EventKind::RemoveMigrationPte {
                addr,
                new_pfn: pfn,
                pmd,
                ..
            } if pfn != 0 => {
                let pages = if pmd { PMD_SIZE / 4096 } else { 1 };
                let va = addr & !4095;
                // Both entries are made by the thread moving the page.
                let why = self
                    .migrating_threads
                    .get(&e.tid)
                    .copied()
                    .unwrap_or(Cause::Unexplained);
                for i in 0..pages {
                    self.migrated.insert((pfn + i, va + i * 4096), why);
                }
            }
            EventKind::DirectReclaimBegin { .. } | EventKind::DirectReclaimEnd { .. } => {
                self.reclaim.direct_reclaimers.insert(e.tgid);
            }
            EventKind::MemcgReclaimBegin { .. } | EventKind::MemcgReclaimEnd { .. } => {
                self.reclaim.memcg_reclaimers.insert(e.tgid);
            }
            EventKind::KswapdWake { .. } | EventKind::KswapdSleep { .. } => {
                self.reclaim.kswapd_ran = true;
            }
            // kswapd can run through a whole interval without waking or
            // sleeping in it; its LRU shrinking shows it ran.
            EventKind::LruShrinkInactive { .. } if !self.reclaim.kswapd_ran => {
                self.reclaim.kswapd_ran = comm(e.tgid).starts_with("kswapd");
            }
            // A call writing out a big range runs through several
            // intervals (8,192 pages to zram took three 300 ms intervals
            // in a 6.1 guest): a thread stays a pageout caller while it
            // writes.
            EventKind::WriteFolio { pfn, .. }
                if self.pageout_threads.contains(&e.tid)
                    || self.earlier_pageout_threads.contains(&e.tid) =>
            {
                self.paged_out.insert(pfn);
                self.pageout_threads.insert(e.tid);
            }
            EventKind::LruShrinkInactive { .. } | EventKind::WriteFolio { .. } => {}
            EventKind::ScanPmd {
                pfn, status, mm, ..
            } => {
                let by = self.collapser(e.tgid, &mut comm);
                self.scans.push(Scan {
                    pfn,
                    status,
                    by,
                    scan: true,
                    mm,
                });
            }
            // A successful isolation names a page of the range about to be
            // collapsed: on kernels whose scan events no longer name a page
            // after a collapse (7.x reports PFN -1), it is the one that does.
            EventKind::CollapseIsolate { pfn, status: 1, .. } => {
                self.isolated.insert(e.tid, pfn);
                let by = self.collapser(e.tgid, &mut comm);
                self.scans.push(Scan {
                    pfn,
                    status: 1,
                    by,
                    scan: false,
                    mm: 0,
                });
            }
            EventKind::CollapseHugePage { mm, status, .. } => {
                let pfn = self.isolated.remove(&e.tid);
                if status == 1 {
                    let by = self.collapser(e.tgid, &mut comm);
                    self.collapses.push(Collapse { mm, pfn, by });
                }
            }
            EventKind::KsmMerge { pfn, err: 0, .. } => {
                self.ksm_pfns.insert(pfn);
            }
            EventKind::MigratePages {
                succeeded, reason, ..
            } => {
                let cause = decoder
                    .symbol(Hook::MigratePages, "reason", reason)
                    .map_or(Cause::Unexplained, migrate_cause);
                *self.migrations.entry(cause).or_default() += succeeded;
                self.migrating_threads.remove(&e.tid);
                if let Some(n) = self.migrating.get_mut(&cause) {
                    *n -= 1;
                    if *n == 0 {
                        self.migrating.remove(&cause);
                    }
                }
            }
            EventKind::MigratePagesStart { reason, .. } => {
                let cause = decoder
                    .symbol(Hook::MigratePagesStart, "reason", reason)
                    .map_or(Cause::Unexplained, migrate_cause);
                *self.migrating.entry(cause).or_default() += 1;
                self.migrations_begun.insert(cause);
                self.migrating_threads.insert(e.tid, cause);
            }
            // group_dead exists from 6.10; before, the leader's exit
            // (pid == tgid) stands for the process.
            EventKind::ProcessExit {
                pid, group_dead, ..
            } => {
                // A thread killed inside a MAP_POPULATE mmap() never returns.
                self.populating.remove(&e.tid);
                if group_dead != 0 || pid == i64::from(e.tgid) {
                    self.exited.insert(e.tgid);
                }
            }
            EventKind::ProcessExec { .. } => {
                self.execed.insert(e.tgid);
            }
            EventKind::OomVictim { pid, .. } => {
                if let Ok(pid) = u32::try_from(pid) {
                    self.oom_victims.insert(pid);
                }
            }
            EventKind::Balloon { inflate: true, .. } => self.reclaim.balloon_inflating = true,
            EventKind::ThpSplit { pfn, pmd, .. } if pfn != 0 => self.splits.push(Split {
                pfn,
                by: e.tgid,
                pmd,
            }),
            _ => {}
        }
    }

    /// Carries `previous`'s (resolved) collapse and reclaim evidence into
    /// this interval.
    pub fn inherit(&mut self, previous: &Evidence) {
        self.earlier_collapses = previous.khugepaged_ranges.clone();
        self.earlier_madv_ranges = previous.madv_ranges.clone();
        self.earlier_reclaim = previous.reclaim.clone();
        self.earlier_migrations = previous.migrations.clone();
        self.migrating = previous.migrating.clone();
        self.migrating_threads = previous.migrating_threads.clone();
        self.earlier_thp_splits = previous.thp_splits;
        self.earlier_split_ranges = previous.split_ranges.clone();
        self.earlier_fault_ranges = previous.fault_ranges.clone();
        self.earlier_ranges = previous.ranges.clone();
        self.earlier_migrated = previous.migrated.clone();
        self.earlier_pageout_threads = previous.pageout_threads.clone();
        self.earlier_paged_out = previous.paged_out.clone();
        self.earlier_remote_collapsers = previous.remote_collapsers.clone();
        self.earlier_brk_floor = previous.brk_floor.clone();
        self.earlier_madv_collapsers = previous.madv_collapsers.clone();
        self.mm_owners = previous
            .mm_owners
            .iter()
            .filter(|(_, pid)| !previous.exited.contains(pid) && !previous.execed.contains(pid))
            .map(|(mm, pid)| (*mm, *pid))
            .collect();
        self.earlier_execed = previous.execed.clone();
        self.earlier_exited = previous.exited.clone();
        self.populating = previous.populating.clone();
    }

    /// What a page that stayed mapped at `va` of `pid` but moved from PFN
    /// `from` to `to` went through, by the evidence about that page: a
    /// migration entry named it (`Migrated`, told from `NodeChanged` by the
    /// caller); its PMD range was collapsed (`CollapsedToThp`, when `thp`:
    /// it is part of a THP now); the range was unmapped, discarded or
    /// faulted by the process (`Refaulted`); else `PfnChanged`.
    pub fn replaced(&self, pid: u32, va: u64, from: u64, to: u64, thp: bool) -> TransitionKind {
        let page = va & !4095;
        let moved = |set: &HashMap<(u64, u64), Cause>| {
            set.contains_key(&(from, page)) || set.contains_key(&(to, page))
        };
        if moved(&self.migrated) || moved(&self.earlier_migrated) {
            TransitionKind::Migrated
        } else if thp && self.collapse_cause(pid, va).is_some() {
            TransitionKind::CollapsedToThp
        } else if self.dropped(pid, va).is_some()
            || self.populated(pid, va)
            || self.faulted_near(pid, va)
        {
            TransitionKind::Refaulted
        } else {
            TransitionKind::PfnChanged
        }
    }

    /// Why `pid`'s range holding `va` was dropped: its munmap, mremap or
    /// madvise, this interval or the one before.
    fn dropped(&self, pid: u32, va: u64) -> Option<Cause> {
        self.ranges
            .dropped(pid, va)
            .or_else(|| self.earlier_ranges.dropped(pid, va))
    }

    /// Whether `pid` faulted in the 2 MiB range holding `va`.
    fn faulted_near(&self, pid: u32, va: u64) -> bool {
        self.fault_ranges.contains(&(pid, va >> 21))
            || self.earlier_fault_ranges.contains(&(pid, va >> 21))
    }

    /// Whether `pid` mapped `va` with MAP_POPULATE (or MAP_LOCKED).
    fn populated(&self, pid: u32, va: u64) -> bool {
        self.ranges.contains(Cause::Populate, pid, va)
            || self.earlier_ranges.contains(Cause::Populate, pid, va)
    }

    /// The collapse evidence for `pid`'s PMD range holding `va`.
    fn collapse_cause(&self, pid: u32, va: u64) -> Option<Cause> {
        let range = (pid, va & !(PMD_SIZE - 1));
        if self.madv_ranges.contains(&range) {
            Some(Cause::MadvCollapse)
        } else if self.khugepaged_ranges.contains(&range) {
            Some(Cause::Khugepaged)
        } else if self.earlier_madv_ranges.contains(&range) {
            Some(Cause::MadvCollapse)
        } else if self.earlier_collapses.contains(&range) {
            Some(Cause::Khugepaged)
        } else {
            None
        }
    }

    /// The interval's /proc/vmstat `thp_split_pmd` and `thp_split_page`
    /// deltas: the only evidence of THP splits where no tracepoint or
    /// fentry hook marks them. Read after the interval's snapshot.
    pub fn set_thp_splits(&mut self, pmd: u64, page: u64) {
        self.thp_splits = (pmd, page);
    }

    /// Marks a balloon inflation seen by other means (vmstat balloon_inflate
    /// delta) where the balloon hooks cannot attach.
    pub fn set_balloon_inflating(&mut self) {
        self.reclaim.balloon_inflating = true;
    }

    /// Resolves PFN-named evidence to (pid, address) with the PFN -> owner
    /// map of the snapshot taken before the interval. A refused scan names a
    /// page that stays mapped: if it was faulted in during the interval,
    /// only the snapshot ending it (`after`) has it. (A successful collapse
    /// frees the page it names, so only `before` can own it.)
    pub fn resolve_pfns(&mut self, before: &PageTable, after: &PageTable) {
        self.resolve_splits(before, after);
        // khugepaged's scan_result 1 is SCAN_SUCCEED on every 6.x kernel.
        for Scan {
            pfn,
            status,
            by,
            scan,
            mm,
        } in std::mem::take(&mut self.scans)
        {
            let mut owners = before.owners(pfn);
            if owners.is_empty() && status != 1 {
                owners = after.owners(pfn);
            }
            if let (Some(o), true) = (owners.first(), mm != 0) {
                self.mm_owners.insert(mm, o.pid);
            }
            for o in owners {
                let range = (o.pid, o.va & !(PMD_SIZE - 1));
                match (status == 1, by) {
                    (true, None) => self.khugepaged_ranges.insert(range),
                    // MADV_COLLAPSE scans in the caller's context: a PFN
                    // that was another process's in the snapshot before
                    // (freed and reused since) says nothing about it,
                    // unless the caller collapses others' memory through
                    // process_madvise.
                    (true, Some(tgid)) if tgid == o.pid || self.remote_collapser(tgid) => {
                        self.madv_ranges.insert(range)
                    }
                    _ => false,
                };
                if by.is_none() && scan {
                    *self
                        .scan_results
                        .entry((o.pid, o.vma_start, status))
                        .or_default() += 1;
                }
            }
        }
        self.resolve_collapses(before, after);
    }

    /// Counts the successful collapses the diff cannot show (the page
    /// isolated for it is nobody's in the snapshot before, or its owner
    /// has no table in the one after), for the process whose mm it was:
    /// the caller of its own MADV_COLLAPSE, or the process that mm was
    /// learnt to be. A collapse without an isolation seen is not counted
    /// (the diff may have seen it).
    fn resolve_collapses(&mut self, before: &PageTable, after: &PageTable) {
        let collapses = std::mem::take(&mut self.collapses);
        // Learn every mm first: khugepaged may collapse a range of a
        // process before the process's own MADV_COLLAPSE names its mm.
        let mut learnt = Vec::new();
        for c in &collapses {
            if let Some(tgid) = c.by.filter(|t| !self.remote_collapser(*t)) {
                learnt.push((c.mm, tgid));
            }
            if let Some(o) = c.pfn.and_then(|p| before.owners(p).first().copied()) {
                learnt.push((c.mm, o.pid));
            }
        }
        self.mm_owners.extend(learnt);
        for Collapse { mm, pfn, by } in collapses {
            let Some(pfn) = pfn else { continue };
            // The diff shows it where the range was a process's before,
            // in this interval or the next (a collapse finishing after the
            // snapshot read its range shows one interval late: a 7.3 guest
            // counted 512 pages twice when a range not yet a THP in the
            // snapshot after was taken as freed); not where the process
            // is gone by the snapshot after. A range freed while its
            // process lives is not counted.
            if before
                .owners(pfn)
                .first()
                .is_some_and(|o| after.process(o.pid).is_some())
            {
                continue;
            }
            if let Some(pid) = self.mm_owners.get(&mm) {
                let cause = if by.is_some() {
                    Cause::MadvCollapse
                } else {
                    Cause::Khugepaged
                };
                *self.unseen_collapses.entry((*pid, cause)).or_default() += 1;
            }
        }
    }

    /// Collapses of memory no snapshot saw, per (process, cause): see
    /// [`Evidence::resolve_pfns`].
    pub fn unseen_collapses(&self) -> &BTreeMap<(u32, Cause), u64> {
        &self.unseen_collapses
    }

    /// Resolves the split hooks' PFNs to (pid, PMD range): the THP was
    /// mapped in the snapshot before the interval, or, made during it, its
    /// pages still are in the one after (a split keeps them mapped).
    fn resolve_splits(&mut self, before: &PageTable, after: &PageTable) {
        for Split { pfn, by, pmd } in self.splits.drain(..) {
            let mut owners = before.owners(pfn);
            if owners.is_empty() {
                owners = after.owners(pfn);
            }
            for o in owners {
                let by_process = self
                    .split_ranges
                    .entry((o.pid, o.va & !(PMD_SIZE - 1), pmd))
                    .or_default();
                *by_process |= by == o.pid;
            }
        }
    }

    /// The split hooks' cause for a split of `pid`'s `va` (`pmd`: of its
    /// PMD mapping), this interval or the one before.
    fn split_cause(&self, pid: u32, va: u64, pmd: bool) -> Option<Cause> {
        let key = (pid, va & !(PMD_SIZE - 1), pmd);
        let by_process = self
            .split_ranges
            .get(&key)
            .or_else(|| self.earlier_split_ranges.get(&key))?;
        Some(if *by_process {
            Cause::ThpSplitByProcess
        } else {
            Cause::ThpSplitByOther
        })
    }

    /// khugepaged's scans of the followed processes' memory in the interval:
    /// (pid, VMA start, kernel status code) -> scans. Says why a range did
    /// or did not collapse, e.g. 40 scans refused for `exceed_none_pte`.
    pub fn scan_results(&self) -> &BTreeMap<(u32, u64, i64), u64> {
        &self.scan_results
    }

    /// Whether a transition of `kind` left unexplained can still be
    /// explained by the next interval's events: the evidence of a move's
    /// reason (`mm_migrate_pages` fires when the whole call ends) and of a
    /// MAP_POPULATE range (known when mmap returns, after the pages are
    /// in) can arrive after the snapshot that shows the change, and so can
    /// an exit or exec: the old memory is gone (exit_mm(), exec_mmap())
    /// before sched_process_exit or sched_process_exec fires, and under
    /// emulation loading the new image takes milliseconds. The evidence
    /// that decides the other kinds (migration entries, collapse
    /// isolation, the syscalls' entries, faults) precedes the change.
    pub fn can_arrive_late(kind: TransitionKind) -> bool {
        use TransitionKind::*;
        matches!(
            kind,
            Migrated | NodeChanged | FaultedIn | Refaulted | Unmapped
        )
    }

    /// The processes a thread of which is inside an mmap(MAP_POPULATE or
    /// MAP_LOCKED) that has not returned: the pages it has faulted in so
    /// far are `populate` only once the call returns with its address,
    /// which for a big mapping on a slow machine can be intervals later.
    /// The session diffs such a process only once it has returned.
    /// A call entered more than [`POPULATE_HOLD_NS`] before `now_ns` no
    /// longer holds its process back (its pages are then diffed, and
    /// `populate` only if the return comes in time to explain them late).
    pub fn populating_processes(&self, now_ns: u64) -> BTreeSet<u32> {
        self.populating
            .values()
            .filter(|p| now_ns.saturating_sub(p.since_ns) < POPULATE_HOLD_NS)
            .map(|p| p.tgid)
            .collect()
    }

    /// The cause of an unexplained transition of the previous interval
    /// (see [`Evidence::can_arrive_late`]) from this interval's events:
    /// only the late kinds of evidence count (a fault now explains no page
    /// that appeared before it).
    pub fn late_cause(&self, pid: u32, va: u64, kind: TransitionKind) -> Cause {
        use TransitionKind::*;
        match kind {
            Migrated | NodeChanged => self.cause(pid, va, None, kind),
            FaultedIn | Refaulted if self.populated(pid, va) => Cause::Populate,
            Unmapped if self.exited.contains(&pid) => Cause::Exit,
            Unmapped if self.execed.contains(&pid) => Cause::Exec,
            _ => Cause::Unexplained,
        }
    }

    /// Why page `va` of `pid` went through `kind`, or `Unexplained`. `pfn`
    /// is the PFN the page left, if it had one (or, for `KsmMerged`, the
    /// KSM page it maps now).
    pub fn cause(&self, pid: u32, va: u64, pfn: Option<u64>, kind: TransitionKind) -> Cause {
        use TransitionKind::*;
        let faulted = || {
            if self.faulted.contains(&pid) {
                Cause::Fault
            } else {
                Cause::Unexplained
            }
        };
        match kind {
            // Its own fault in that 2 MiB range before a populate (which
            // may be older: a range populated, dropped and touched again).
            FaultedIn | Refaulted if self.faulted_near(pid, va) => Cause::Fault,
            FaultedIn | Refaulted if self.populated(pid, va) => Cause::Populate,
            FaultedIn | Refaulted | SwappedIn | ZeroPageMapped | BecameHugetlb | KsmUnmerged => {
                faulted()
            }
            PfnChanged => Cause::Unexplained,
            // Asked for (its own MADV_PAGEOUT of the range, or a write-out
            // of the page by a thread in process_madvise), before pressure.
            SwappedOut
                if self.ranges.contains(Cause::MadvPageout, pid, va)
                    || self.earlier_ranges.contains(Cause::MadvPageout, pid, va)
                    || pfn.is_some_and(|p| {
                        self.paged_out.contains(&p) || self.earlier_paged_out.contains(&p)
                    }) =>
            {
                Cause::MadvPageout
            }
            SwappedOut => match self.reclaim.cause(pid) {
                Cause::Unexplained => self.earlier_reclaim.cause(pid),
                cause => cause,
            },
            Unmapped if self.oom_victims.contains(&pid) => Cause::Oom,
            Unmapped if self.exited.contains(&pid) => Cause::Exit,
            Unmapped if self.execed.contains(&pid) => Cause::Exec,
            // Then the process's own unmapping calls; only then an exit or
            // exec of the previous interval (read just before it).
            Unmapped => self
                .dropped(pid, va)
                .or_else(|| self.earlier_exited.contains(&pid).then_some(Cause::Exit))
                .or_else(|| self.earlier_execed.contains(&pid).then_some(Cause::Exec))
                .unwrap_or(Cause::Unexplained),
            // The split hooks name the process; where they cannot attach,
            // the vmstat counter that rose is the evidence, labelled so.
            SplitFromThp | FolioSplit => {
                let pmd = kind == SplitFromThp;
                let (vmstat, label) = if pmd {
                    (
                        self.thp_splits.0 + self.earlier_thp_splits.0,
                        Cause::VmstatThpSplitPmd,
                    )
                } else {
                    (
                        self.thp_splits.1 + self.earlier_thp_splits.1,
                        Cause::VmstatThpSplitPage,
                    )
                };
                self.split_cause(pid, va, pmd).unwrap_or(if vmstat > 0 {
                    label
                } else {
                    Cause::Unexplained
                })
            }
            CollapsedToThp => self.collapse_cause(pid, va).unwrap_or(Cause::Unexplained),
            // The merge events name the KSM page the page now maps.
            KsmMerged if pfn.is_some_and(|p| self.ksm_pfns.contains(&p)) => Cause::Ksm,
            KsmMerged => Cause::Unexplained,
            // The reason of the call that moved this page, by the thread
            // that made its migration entries; without one, only one cause
            // of migration in the interval (calls ended, begun, or still
            // running) identifies it; with none, the previous interval's (a
            // move completed after a snapshot shows in the next, its event
            // drained before it).
            Migrated | NodeChanged => self.moved_by(pfn, va).unwrap_or_else(|| {
                let mut now = self.migrations.clone();
                for cause in self.migrating.keys().chain(&self.migrations_begun) {
                    *now.entry(*cause).or_default() += 1;
                }
                match only_cause(&now) {
                    None if now.values().all(|n| *n == 0) => {
                        only_cause(&self.earlier_migrations).unwrap_or(Cause::Unexplained)
                    }
                    cause => cause.unwrap_or(Cause::Unexplained),
                }
            }),
        }
    }

    /// Whether `tgid` called process_madvise(MADV_COLLAPSE), this interval
    /// or the one before: its collapse events are of another process.
    fn remote_collapser(&self, tgid: u32) -> bool {
        self.remote_collapsers.contains(&tgid) || self.earlier_remote_collapsers.contains(&tgid)
    }

    /// The process a collapse event of thread group `tgid` is of its own
    /// accord (its MADV_COLLAPSE, or a process_madvise), or None for
    /// khugepaged's: the kernel thread is told by its name, unless the
    /// group is in a madvise(MADV_COLLAPSE) call (a program may be called
    /// khugepaged too).
    fn collapser(&mut self, tgid: u32, comm: &mut impl FnMut(u32) -> String) -> Option<u32> {
        let calling = |set: &HashSet<u32>| set.contains(&tgid);
        if calling(&self.madv_collapsers) || calling(&self.earlier_madv_collapsers) {
            self.madv_collapsers.insert(tgid);
            Some(tgid)
        } else {
            (comm(tgid) != "khugepaged").then_some(tgid)
        }
    }

    /// Whether `pid` lowered its program break to `va` or below, in this
    /// interval or the one before: its heap's page at `va` was given back
    /// (the caller knows the page was in the `[heap]` VMA).
    pub fn below_brk(&self, pid: u32, va: u64) -> bool {
        [&self.brk_floor, &self.earlier_brk_floor].iter().any(|f| {
            f.get(&pid)
                .is_some_and(|floor| va >= floor.next_multiple_of(4096))
        })
    }

    /// The reason of the migrate_pages() call that moved page `va` off
    /// `pfn`, if its migration entry was made inside one.
    fn moved_by(&self, pfn: Option<u64>, va: u64) -> Option<Cause> {
        let key = (pfn?, va & !4095);
        self.migrated
            .get(&key)
            .or_else(|| self.earlier_migrated.get(&key))
            .copied()
            .filter(|c| *c != Cause::Unexplained)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The evidence of an interval in which process `tgid` exited.
    pub(crate) fn evidence_with_exit(tgid: u32) -> Evidence {
        let exit = EventKind::ProcessExit {
            pid: i64::from(tgid),
            group_dead: 1,
            comm: [0; 16],
        };
        evidence(&[ev(tgid, exit)])
    }

    fn ev(tgid: u32, kind: EventKind) -> Event {
        Event {
            ts_ns: 0,
            cpu: 0,
            tgid,
            tid: tgid,
            kind,
        }
    }

    /// Thread names in these tests: 77 is khugepaged, 78 kswapd.
    fn comm_of(tgid: u32) -> String {
        match tgid {
            77 => "khugepaged".into(),
            78 => "kswapd0".into(),
            _ => "proc".into(),
        }
    }

    fn evidence(events: &[Event]) -> Evidence {
        let mut e = Evidence::default();
        for x in events {
            e.add(x, &Decoder::default(), comm_of);
        }
        e
    }

    #[test]
    fn no_event_means_unexplained_never_a_guess() {
        let e = evidence(&[]);
        for kind in TransitionKind::ALL {
            assert_eq!(
                e.cause(1, 0x1000, Some(7), kind),
                Cause::Unexplained,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn faults_reclaim_and_exit_are_attributed() {
        let fault = EventKind::PageFault {
            address: 0x1000,
            ip: 0,
            error_code: 2,
        };
        let e = evidence(&[
            ev(1, fault),
            ev(2, EventKind::MemcgReclaimEnd { nr_reclaimed: 32 }),
            ev(
                3,
                EventKind::ScanPmd {
                    mm: 0,
                    pfn: 0,
                    referenced: 0,
                    none_or_zero: 0,
                    status: 1,
                    unmapped: 0,
                },
            ),
            ev(
                4,
                EventKind::ProcessExit {
                    pid: 4,
                    group_dead: 1,
                    comm: [0; 16],
                },
            ),
        ]);
        assert_eq!(e.cause(1, 0, None, TransitionKind::FaultedIn), Cause::Fault);
        assert_eq!(
            e.cause(9, 0, None, TransitionKind::FaultedIn),
            Cause::Unexplained
        );
        assert_eq!(
            e.cause(2, 0, None, TransitionKind::SwappedOut),
            Cause::MemcgReclaim
        );
        // Someone else's memcg reclaim, and no other kind: memcg reclaim.
        assert_eq!(
            e.cause(9, 0, None, TransitionKind::SwappedOut),
            Cause::MemcgReclaim
        );
        // A collapse scan names a PFN: without the snapshot that owns it
        // (resolve_pfns) it explains nothing.
        assert_eq!(
            e.cause(3, 0, None, TransitionKind::CollapsedToThp),
            Cause::Unexplained
        );
        assert_eq!(e.cause(4, 0, None, TransitionKind::Unmapped), Cause::Exit);
        let x = evidence(&[ev(6, EventKind::ProcessExec { pid: 6, old_pid: 6 })]);
        assert_eq!(x.cause(6, 0, None, TransitionKind::Unmapped), Cause::Exec);
        // The old image read just before the exec vanishes one interval
        // later: the exec still explains it.
        let mut next = Evidence::default();
        next.inherit(&x);
        assert_eq!(
            next.cause(6, 0, None, TransitionKind::Unmapped),
            Cause::Exec
        );
        assert_eq!(
            next.cause(7, 0, None, TransitionKind::Unmapped),
            Cause::Unexplained
        );
        let mut after_exit = Evidence::default();
        after_exit.inherit(&e);
        assert_eq!(
            after_exit.cause(4, 0, None, TransitionKind::Unmapped),
            Cause::Exit
        );
        // The old memory is gone before the exit or exec event fires: a
        // snapshot can show it gone an interval before the event is read.
        assert!(Evidence::can_arrive_late(TransitionKind::Unmapped));
        assert_eq!(x.late_cause(6, 0, TransitionKind::Unmapped), Cause::Exec);
        assert_eq!(e.late_cause(4, 0, TransitionKind::Unmapped), Cause::Exit);
        assert_eq!(
            e.late_cause(1, 0, TransitionKind::Unmapped),
            Cause::Unexplained
        );
        assert_eq!(
            e.cause(1, 0, None, TransitionKind::Unmapped),
            Cause::Unexplained
        );
    }

    #[test]
    fn reclaim_while_a_balloon_inflates_is_balloon_pressure() {
        let mut e = evidence(&[ev(100, EventKind::KswapdWake { nid: 0, order: 0 })]);
        assert_eq!(
            e.cause(5, 0, None, TransitionKind::SwappedOut),
            Cause::KswapdReclaim
        );
        e.set_balloon_inflating();
        assert_eq!(
            e.cause(5, 0, None, TransitionKind::SwappedOut),
            Cause::BalloonPressure
        );
    }

    #[test]
    fn kswapd_shrinking_through_an_interval_and_the_interval_after_explain_swap_out() {
        let shrink = EventKind::LruShrinkInactive {
            nid: 0,
            nr_scanned: 32,
            nr_reclaimed: 32,
            priority: 12,
        };
        let out = TransitionKind::SwappedOut;
        // A process shrinking LRUs is a direct reclaimer, said by its own
        // begin/end events, not kswapd.
        assert_eq!(
            evidence(&[ev(5, shrink)]).cause(5, 0, None, out),
            Cause::Unexplained
        );
        let during = evidence(&[ev(78, shrink)]);
        assert_eq!(during.cause(5, 0, None, out), Cause::KswapdReclaim);
        let mut after = Evidence::default();
        after.inherit(&during);
        assert_eq!(after.cause(5, 0, None, out), Cause::KswapdReclaim);
        let mut later = Evidence::default();
        later.inherit(&after);
        assert_eq!(
            later.cause(5, 0, None, out),
            Cause::Unexplained,
            "one interval only"
        );
    }

    #[test]
    fn migrations_of_two_kinds_are_not_guessed_between() {
        let mut e = Evidence::default();
        e.migrations.insert(Cause::NumaBalancing, 10);
        assert_eq!(
            e.cause(1, 0, None, TransitionKind::NodeChanged),
            Cause::NumaBalancing
        );
        e.migrations.insert(Cause::Compaction, 3);
        assert_eq!(
            e.cause(1, 0, None, TransitionKind::Migrated),
            Cause::Unexplained
        );
        assert_eq!(migrate_cause("syscall_or_cpuset"), Cause::MigrateSyscall);
    }

    #[test]
    fn a_lowered_program_break_gives_back_the_heap_above_it() {
        let brk = |brk| EventKind::Brk { brk };
        // brk(0) only asks; a raise then a lower: the lowest counts.
        let e = evidence(&[ev(5, brk(0)), ev(5, brk(0x60_0000)), ev(5, brk(0x40_0800))]);
        assert!(!e.below_brk(5, 0x40_0000));
        assert!(e.below_brk(5, 0x40_1000));
        assert!(e.below_brk(5, 0x70_0000));
        assert!(!e.below_brk(6, 0x70_0000));
        assert!(!evidence(&[ev(5, brk(0))]).below_brk(5, 0x70_0000));
        // The snapshot can straddle the call: the one before counts too.
        let mut next = Evidence::default();
        next.inherit(&e);
        assert!(next.below_brk(5, 0x40_1000));
    }

    #[test]
    fn concurrent_moves_of_two_reasons_each_have_their_callers_reason() {
        use crate::{hooks::AttachedHook, tracefs::EventFormat};
        let format = EventFormat::parse(include_str!(
            "../../test_data/tracefs/mm_migrate_pages_start.format"
        ))
        .unwrap();
        let decoder = Decoder::new(&[AttachedHook {
            hook: Hook::MigratePagesStart,
            tracepoint: "migrate/mm_migrate_pages_start".into(),
            layout: Default::default(),
            format,
        }]);
        // Thread 20 in migrate_pages(2) (reason 3, syscall_or_cpuset) and
        // thread 30 compacting (reason 0) move pages in the same interval.
        let on = |tid: u32, kind| Event {
            tid,
            ..ev(tid, kind)
        };
        let start = |reason| EventKind::MigratePagesStart { mode: 0, reason };
        let entry = |pfn, set| {
            if set {
                EventKind::SetMigrationPte {
                    addr: 0x1000 * pfn,
                    order: 0,
                    old_pfn: pfn,
                    pmd: false,
                }
            } else {
                EventKind::RemoveMigrationPte {
                    addr: 0x1000 * (pfn - 100),
                    order: 0,
                    new_pfn: pfn,
                    pmd: false,
                }
            }
        };
        let mut e = Evidence::default();
        for x in [
            on(20, start(3)),
            on(30, start(0)),
            on(20, entry(1, true)),
            on(30, entry(2, true)),
            on(20, entry(101, false)),
            on(30, entry(102, false)),
            // A thread in no call seen begin (its start event was dropped).
            on(40, entry(3, true)),
            on(40, entry(103, false)),
            // Moved to another node by the call, then within it by
            // compaction: the node changed by the first move.
            on(20, entry(5, true)),
            on(20, entry(105, false)),
            on(30, entry(105, true)),
            on(30, entry(205, false)),
        ] {
            e.add(&x, &decoder, |_| "pw".into());
        }
        let kind = TransitionKind::NodeChanged;
        assert_eq!(e.cause(1, 0x1000, Some(1), kind), Cause::MigrateSyscall);
        assert_eq!(e.cause(1, 0x2000, Some(2), kind), Cause::Compaction);
        assert_eq!(e.cause(1, 0x5000, Some(5), kind), Cause::MigrateSyscall);
        // Without its own entry's reason: two reasons, no guess.
        assert_eq!(e.cause(1, 0x3000, Some(3), kind), Cause::Unexplained);
        assert_eq!(e.cause(1, 0x1000, None, kind), Cause::Unexplained);
        // A call still running in the next interval keeps its reason.
        let mut next = Evidence::default();
        next.inherit(&e);
        next.add(&on(20, entry(4, true)), &decoder, |_| "pw".into());
        assert_eq!(next.cause(1, 0x4000, Some(4), kind), Cause::MigrateSyscall);
        assert_eq!(next.cause(1, 0x1000, Some(1), kind), Cause::MigrateSyscall);
    }

    #[test]
    fn moves_of_a_call_still_running_have_the_reason_it_began_with() {
        let kind = TransitionKind::NodeChanged;
        let mut begun = Evidence::default();
        begun.migrating.insert(Cause::MigrateSyscall, 1);
        begun.migrations_begun.insert(Cause::MigrateSyscall);
        assert_eq!(begun.cause(1, 0, None, kind), Cause::MigrateSyscall);
        // Two intervals later the call still runs: still its reason.
        let mut running = Evidence::default();
        running.inherit(&begun);
        let mut still = Evidence::default();
        still.inherit(&running);
        assert_eq!(still.cause(1, 0, None, kind), Cause::MigrateSyscall);
        // Compaction moving pages meanwhile: two reasons, no guess.
        still.migrations.insert(Cause::Compaction, 4);
        assert_eq!(still.cause(1, 0, None, kind), Cause::Unexplained);
    }

    #[test]
    fn a_move_seen_one_interval_after_its_migration_event_is_still_attributed() {
        let mut earlier = Evidence::default();
        earlier.migrations.insert(Cause::MigrateSyscall, 100);
        let mut now = Evidence::default();
        now.inherit(&earlier);
        let kind = TransitionKind::NodeChanged;
        assert_eq!(now.cause(1, 0, None, kind), Cause::MigrateSyscall);
        // This interval's own (different) migrations win.
        now.migrations.insert(Cause::Compaction, 5);
        assert_eq!(now.cause(1, 0, None, kind), Cause::Compaction);
        let mut later = Evidence::default();
        later.inherit(&Evidence::default());
        assert_eq!(later.cause(1, 0, None, kind), Cause::Unexplained);
    }

    #[test]
    fn pageout_on_request_is_told_from_reclaim_under_pressure() {
        use TransitionKind::{SwappedOut, Unmapped};
        let pageout = |start| EventKind::Madvise {
            start,
            len: 8192,
            advice: MADV_PAGEOUT,
        };
        let write = |pfn| EventKind::WriteFolio {
            pfn,
            reclaim_flags: 0,
        };
        let kswapd = EventKind::KswapdWake { nid: 0, order: 0 };
        // Its own madvise: the range's pages, swapped or dropped (file).
        let e = evidence(&[ev(5, pageout(0x1000)), ev(5, kswapd)]);
        assert_eq!(e.cause(5, 0x2000, None, SwappedOut), Cause::MadvPageout);
        assert_eq!(e.cause(5, 0x2000, None, Unmapped), Cause::MadvPageout);
        assert_eq!(e.cause(5, 0x3000, None, SwappedOut), Cause::KswapdReclaim);
        assert_eq!(e.cause(6, 0x2000, None, SwappedOut), Cause::KswapdReclaim);
        // process_madvise by pid 9 on some other process: the pages its
        // thread wrote out, by the PFN they left; not its other writes
        // before the call, nor another thread's.
        let advise = EventKind::ProcessMadvise {
            pidfd: 3,
            advice: MADV_PAGEOUT,
        };
        let e = evidence(&[
            ev(9, write(70)),
            ev(9, advise),
            ev(9, write(77)),
            ev(8, write(78)),
        ]);
        assert_eq!(e.cause(5, 0x2000, Some(77), SwappedOut), Cause::MadvPageout);
        for pfn in [70, 78] {
            assert_eq!(
                e.cause(5, 0x2000, Some(pfn), SwappedOut),
                Cause::Unexplained
            );
        }
        // A call that outlasts the interval: its writes in the next one,
        // and the page seen swapped one interval after its write-out.
        let mut next = Evidence::default();
        next.inherit(&e);
        next.add(&ev(9, write(80)), &Decoder::default(), |_| "pw".into());
        for pfn in [77, 80] {
            assert_eq!(
                next.cause(5, 0x2000, Some(pfn), SwappedOut),
                Cause::MadvPageout
            );
        }
        // ... and in the one after that, as long as it writes.
        let mut third = Evidence::default();
        third.inherit(&next);
        third.add(&ev(9, write(81)), &Decoder::default(), |_| "pw".into());
        assert_eq!(
            third.cause(5, 0x2000, Some(81), SwappedOut),
            Cause::MadvPageout
        );
        let cold = EventKind::ProcessMadvise {
            pidfd: 3,
            advice: 20,
        };
        let e = evidence(&[ev(9, cold), ev(9, write(77))]);
        assert_eq!(e.cause(5, 0x2000, Some(77), SwappedOut), Cause::Unexplained);
    }

    #[test]
    fn a_populate_known_after_its_snapshot_explains_the_pages_late() {
        use TransitionKind::{FaultedIn, Refaulted, Unmapped};
        // mmap(addr, 8 KiB, flags) by pid 5.
        let mmap = |addr, flags| {
            ev(
                5,
                EventKind::Mmap {
                    addr,
                    len: 8192,
                    prot: 3,
                    flags,
                },
            )
        };
        let returned = ev(5, EventKind::MmapReturn { ret: 0x7000_0000 });
        let fault = EventKind::PageFault {
            address: 0x1000,
            ip: 0,
            error_code: 6,
        };
        // A MAP_POPULATE mmap() running through several intervals holds its
        // process back until it returns.
        let entered = evidence(&[mmap(0, 0x8022)]);
        assert_eq!(entered.populating_processes(1), BTreeSet::from([5]));
        let mut running = Evidence::default();
        running.inherit(&entered);
        assert_eq!(running.populating_processes(1), BTreeSet::from([5]));
        // ... but not for ever: a lost return, or a thread gone.
        let later = POPULATE_HOLD_NS;
        assert!(running.populating_processes(later).is_empty(), "expired");
        let exit = EventKind::ProcessExit {
            pid: 5,
            group_dead: 0,
            comm: [0; 16],
        };
        assert!(
            evidence(&[mmap(0, 0x8022), ev(5, exit)])
                .populating_processes(1)
                .is_empty(),
            "its thread exited"
        );
        assert!(
            evidence(&[mmap(0, 0x22)])
                .populating_processes(1)
                .is_empty()
        );
        let e = evidence(&[mmap(0, 0x8022), returned, ev(5, fault)]);
        assert!(e.populating_processes(1).is_empty(), "returned");
        assert!(Evidence::can_arrive_late(FaultedIn));
        assert!(!Evidence::can_arrive_late(TransitionKind::SwappedOut));
        assert_eq!(e.late_cause(5, 0x7000_1000, FaultedIn), Cause::Populate);
        assert_eq!(e.late_cause(5, 0x7000_2000, Refaulted), Cause::Unexplained);
        // A fault after the change explains nothing about it.
        assert_eq!(e.late_cause(5, 0x1000, FaultedIn), Cause::Unexplained);
        assert_eq!(e.cause(5, 0x1000, None, FaultedIn), Cause::Fault);
        assert_eq!(e.cause(5, 0x7000_1000, None, FaultedIn), Cause::Populate);
        // Touched again after a populate: its own fault.
        let touched = EventKind::PageFault {
            address: 0x7000_0000,
            ip: 0,
            error_code: 6,
        };
        let e = evidence(&[mmap(0, 0x8022), returned, ev(5, touched)]);
        assert_eq!(e.cause(5, 0x7000_1000, None, Refaulted), Cause::Fault);
        // MADV_POPULATE_WRITE populates; mmap(MAP_FIXED) unmaps what was there.
        let populate = EventKind::Madvise {
            start: 0x9000_0000,
            len: 4096,
            advice: 23,
        };
        let e = evidence(&[ev(5, populate), mmap(0xa000_0000, 0x32)]);
        assert_eq!(e.late_cause(5, 0x9000_0000, FaultedIn), Cause::Populate);
        assert_eq!(e.cause(5, 0xa000_1000, None, Unmapped), Cause::Munmap);
        // An mmap without MAP_POPULATE or MAP_FIXED does neither.
        let e = evidence(&[mmap(0, 0x22), returned]);
        assert_eq!(e.late_cause(5, 0x7000_0000, FaultedIn), Cause::Unexplained);
        assert_eq!(e.cause(5, 0x7000_0000, None, Unmapped), Cause::Unexplained);
    }

    #[test]
    fn a_collapse_seen_one_interval_after_its_scan_is_still_attributed() {
        let mut earlier = Evidence::default();
        earlier.khugepaged_ranges.insert((7, 0x200000));
        earlier.madv_ranges.insert((8, 0));
        let mut now = Evidence::default();
        now.inherit(&earlier);
        let kind = TransitionKind::CollapsedToThp;
        assert_eq!(now.cause(7, 0x200000 + 4096, None, kind), Cause::Khugepaged);
        assert_eq!(now.cause(8, 0, None, kind), Cause::MadvCollapse);
        assert_eq!(now.cause(7, 0x400000, None, kind), Cause::Unexplained);
        let mut later = Evidence::default();
        later.inherit(&now);
        assert_eq!(
            later.cause(7, 0x200000, None, kind),
            Cause::Unexplained,
            "one interval only"
        );
    }

    #[test]
    fn thp_splits_are_explained_only_by_their_own_vmstat_counter() {
        use TransitionKind::{FolioSplit, SplitFromThp};
        let mut e = Evidence::default();
        e.set_thp_splits(1, 0);
        assert_eq!(e.cause(1, 0, None, SplitFromThp), Cause::VmstatThpSplitPmd);
        assert_eq!(e.cause(1, 0, None, FolioSplit), Cause::Unexplained);
        let mut next = Evidence::default();
        next.inherit(&e);
        next.set_thp_splits(0, 2);
        assert_eq!(
            next.cause(1, 0, None, SplitFromThp),
            Cause::VmstatThpSplitPmd,
            "counted just before the snapshot that showed it"
        );
        assert_eq!(
            next.cause(1, 0, None, FolioSplit),
            Cause::VmstatThpSplitPage
        );
        let mut later = Evidence::default();
        later.inherit(&Evidence::default());
        assert_eq!(later.cause(1, 0, None, SplitFromThp), Cause::Unexplained);
    }

    /// A table in which `pid` maps a THP at 0x200000 (PFN 0x1000).
    fn thp_of(pid: u32) -> PageTable {
        use crate::snapshot::{columns::test_table, flags::PM_PRESENT};
        test_table(
            pid,
            0x200000,
            vec![0],
            vec![PM_PRESENT | 0x1000],
            vec![1 << crate::snapshot::flags::kpf::THP],
            vec![true],
        )
    }

    /// A table in which `pid` maps PFN 0x500 at 0x200000.
    fn owned_by(pid: u32) -> PageTable {
        use crate::snapshot::{columns::test_table, flags::PM_PRESENT};
        test_table(
            pid,
            0x200000,
            vec![0],
            vec![PM_PRESENT | 0x500],
            vec![0],
            vec![false],
        )
    }

    #[test]
    fn collapses_no_snapshot_saw_are_counted_for_the_mm_they_were_learnt_to_be() {
        let isolate = |pfn| EventKind::CollapseIsolate {
            pfn,
            none_or_zero: 0,
            referenced: 0,
            status: 1,
        };
        let collapse = |mm, status| EventKind::CollapseHugePage {
            mm,
            isolated: 1,
            status,
        };
        let unseen = |e: &Evidence| e.unseen_collapses().clone().into_iter().collect::<Vec<_>>();
        // khugepaged (tgid 77): a collapse of PFN 0x500 (pid 7's in the
        // snapshot, a THP in the next: the diff shows it) teaches that mm
        // 0xa0 is pid 7; the next one, of a page no snapshot held, is
        // counted for pid 7; a failed one is not, nor one of an mm never
        // learnt.
        let mut e = evidence(&[
            ev(77, isolate(0x500)),
            ev(77, collapse(0xa0, 1)),
            ev(77, isolate(0x900)),
            ev(77, collapse(0xa0, 1)),
            ev(77, isolate(0x901)),
            ev(77, collapse(0xa0, 3)),
            ev(77, isolate(0x902)),
            ev(77, collapse(0xb0, 1)),
        ]);
        e.resolve_pfns(&owned_by(7), &thp_of(7));
        assert_eq!(unseen(&e), vec![((7, Cause::Khugepaged), 1)]);
        // Not yet a THP in the snapshot after (it may show in the next):
        // not counted; counted where the process is gone.
        let mut late = evidence(&[ev(77, isolate(0x500)), ev(77, collapse(0xa0, 1))]);
        late.resolve_pfns(&owned_by(7), &owned_by(7));
        assert_eq!(unseen(&late), vec![]);
        let mut gone = evidence(&[ev(77, isolate(0x500)), ev(77, collapse(0xa0, 1))]);
        gone.resolve_pfns(&owned_by(7), &owned_by(9));
        assert_eq!(unseen(&gone), vec![((7, Cause::Khugepaged), 1)]);
        // The mm stays known in later intervals, until its process exits.
        let later = |before: &Evidence| {
            let mut next = Evidence::default();
            next.inherit(before);
            next.add(&ev(77, isolate(0x903)), &Decoder::default(), comm_of);
            next.add(&ev(77, collapse(0xa0, 1)), &Decoder::default(), comm_of);
            next.resolve_pfns(&owned_by(9), &owned_by(9));
            unseen(&next)
        };
        assert_eq!(later(&e), vec![((7, Cause::Khugepaged), 1)]);
        let exit = EventKind::ProcessExit {
            pid: 7,
            group_dead: 1,
            comm: [0; 16],
        };
        e.add(&ev(7, exit), &Decoder::default(), comm_of);
        assert_eq!(later(&e), vec![]);
        // A process's own MADV_COLLAPSE names its mm itself.
        let mut own = evidence(&[ev(8, isolate(0x904)), ev(8, collapse(0xc0, 1))]);
        own.resolve_pfns(&owned_by(9), &owned_by(9));
        assert_eq!(unseen(&own), vec![((8, Cause::MadvCollapse), 1)]);
    }

    #[test]
    fn split_hooks_name_who_split_and_win_over_vmstat() {
        use TransitionKind::{FolioSplit, SplitFromThp};
        let split = |pmd| EventKind::ThpSplit {
            pfn: 0x500,
            address: 0x200000,
            pmd,
        };
        // pid 7's own munmap split the PMD; kswapd (78) split the folio.
        let mut e = evidence(&[ev(7, split(true)), ev(78, split(false))]);
        e.set_thp_splits(1, 1);
        e.resolve_pfns(&owned_by(7), &owned_by(7));
        assert_eq!(
            e.cause(7, 0x3ff000, None, SplitFromThp),
            Cause::ThpSplitByProcess
        );
        assert_eq!(
            e.cause(7, 0x200000, None, FolioSplit),
            Cause::ThpSplitByOther
        );
        // Another PMD range, or process, falls back to the vmstat label.
        assert_eq!(
            e.cause(7, 0x400000, None, SplitFromThp),
            Cause::VmstatThpSplitPmd
        );
        assert_eq!(
            e.cause(8, 0x200000, None, FolioSplit),
            Cause::VmstatThpSplitPage
        );
        // A split seen just before a snapshot explains the next interval.
        let mut next = Evidence::default();
        next.inherit(&e);
        assert_eq!(
            next.cause(7, 0x200000, None, SplitFromThp),
            Cause::ThpSplitByProcess
        );
        // A PFN no snapshot owns explains nothing.
        let mut stray = evidence(&[ev(7, split(true))]);
        stray.resolve_pfns(&owned_by(9), &owned_by(9));
        assert_eq!(
            stray.cause(7, 0x200000, None, SplitFromThp),
            Cause::Unexplained
        );
    }

    #[test]
    fn madv_collapse_scans_explain_the_callers_own_memory_or_a_process_madvise_target() {
        let scan = EventKind::ScanPmd {
            mm: 0,
            pfn: 0x500,
            referenced: 0,
            none_or_zero: 0,
            status: 1,
            unmapped: 0,
        };
        let kind = TransitionKind::CollapsedToThp;
        // Its own PFN: its own collapse.
        let mut own = evidence(&[ev(7, scan)]);
        own.resolve_pfns(&owned_by(7), &owned_by(7));
        assert_eq!(own.cause(7, 0x200000, None, kind), Cause::MadvCollapse);
        // Another process's MADV_COLLAPSE on a PFN pid 7 had before (freed
        // and reused since): no evidence for pid 7.
        let mut other = evidence(&[ev(50, scan)]);
        other.resolve_pfns(&owned_by(7), &owned_by(7));
        assert_eq!(other.cause(7, 0x200000, None, kind), Cause::Unexplained);
        // ... unless it collapses others' memory with process_madvise.
        let remote = EventKind::ProcessMadvise {
            pidfd: 3,
            advice: MADV_COLLAPSE,
        };
        let mut other = evidence(&[ev(50, remote), ev(50, scan)]);
        other.resolve_pfns(&owned_by(7), &owned_by(7));
        assert_eq!(other.cause(7, 0x200000, None, kind), Cause::MadvCollapse);
        // A program named khugepaged (as the mm selftest is) collapsing
        // its own memory with MADV_COLLAPSE: its own, not the kernel
        // thread's.
        let own_collapse = EventKind::Madvise {
            start: 0x200000,
            len: 2 << 20,
            advice: MADV_COLLAPSE,
        };
        let done = EventKind::CollapseHugePage {
            mm: 0xd0,
            isolated: 1,
            status: 1,
        };
        let isolate = EventKind::CollapseIsolate {
            pfn: 0x900,
            none_or_zero: 0,
            referenced: 0,
            status: 1,
        };
        let mut named = evidence(&[ev(77, own_collapse), ev(77, isolate), ev(77, done)]);
        named.resolve_pfns(&owned_by(9), &owned_by(9));
        assert_eq!(
            named
                .unseen_collapses()
                .clone()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![((77, Cause::MadvCollapse), 1)]
        );
        // khugepaged (tgid 77 in these tests) scans any process's memory.
        let mut k = evidence(&[ev(77, scan)]);
        k.resolve_pfns(&owned_by(7), &owned_by(7));
        assert_eq!(k.cause(7, 0x200000, None, kind), Cause::Khugepaged);
    }

    #[test]
    fn ksm_merges_are_matched_through_the_ksm_page() {
        let e = evidence(&[ev(
            50,
            EventKind::KsmMerge {
                pfn: 0x777,
                mm: 0,
                err: 0,
                with_ksm_page: true,
            },
        )]);
        assert_eq!(
            e.cause(3, 0, Some(0x777), TransitionKind::KsmMerged),
            Cause::Ksm
        );
        assert_eq!(
            e.cause(3, 0, Some(0x778), TransitionKind::KsmMerged),
            Cause::Unexplained
        );
    }
}
