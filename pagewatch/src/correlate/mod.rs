//! The correlator: joins the difference between two page snapshots with the
//! events recorded in between into attributed transitions. Each changed
//! virtual page gets a [`TransitionKind`] from its before/after state and,
//! for a page that stayed mapped on a new PFN, from the evidence about that
//! page; and a [`Cause`] from the interval's [`Evidence`]. Events are the
//! record of what happened, snapshots the check of where it ended: a new
//! PFN is a migration or a collapse only when an event says so, and where
//! no event explains a change the cause is `Unexplained` — it never guesses.
//!
//! - [`numa`]: PFN -> NUMA node from sysfs memory blocks;
//! - [`evidence`]: what the events of one interval say happened;
//! - [`swap`]: swap round trips matched through swap entries;
//! - [`hugepages`]: hugetlb pools per node and THP coverage per VMA over time;
//! - [`balloon`]: balloon episodes and the pages processes lost in them;
//! - [`rescan`]: which processes a snapshot reads again, which it carries;
//! - this module: page states, classification and the snapshot diff.

pub mod balloon;
pub mod evidence;
pub mod hugepages;
pub mod numa;
pub mod rescan;
pub mod swap;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use crate::{
    snapshot::{
        columns::{PageTable, ProcessTable, VmaMeta},
        flags::{PM_PFN_MASK, PM_PRESENT, PagemapEntry, has, kpf},
        scan::PMD_PAGES,
    },
    transition::{Cause, TransitionGroup, TransitionKind},
};
use evidence::Evidence;
use numa::NodeMap;
use swap::SwapLedger;

/// What one virtual page looked like in a snapshot: its pagemap entry, the
/// kpageflags of its PFN (0 when not present) and whether a PMD mapped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageState {
    pub pagemap: u64,
    pub kflags: u64,
    pub pmd: bool,
}

impl PageState {
    fn present(self) -> bool {
        self.pagemap & PM_PRESENT != 0
    }
    /// In a swap file (not a migration entry, which pagemap also marks
    /// swapped).
    fn swapped(self) -> bool {
        PagemapEntry(self.pagemap).in_swap_file()
    }
    /// Being migrated (or device-private, hwpoisoned): the page is the
    /// entry's PFN, its flags unread.
    fn moving(self) -> bool {
        PagemapEntry(self.pagemap).moving_pfn().is_some()
    }
    fn pfn(self) -> Option<u64> {
        let pfn = self.pagemap & PM_PFN_MASK;
        (self.present() && pfn != 0)
            .then_some(pfn)
            .or_else(|| PagemapEntry(self.pagemap).moving_pfn())
    }
    fn thp(self) -> bool {
        self.present() && has(self.kflags, kpf::THP)
    }
    fn ksm(self) -> bool {
        self.present() && has(self.kflags, kpf::KSM)
    }
    fn zero(self) -> bool {
        self.present() && has(self.kflags, kpf::ZERO_PAGE)
    }
    fn hugetlb(self) -> bool {
        self.present() && has(self.kflags, kpf::HUGE)
    }
}

/// A transition of one page, with NUMA nodes for node changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageChange {
    pub kind: TransitionKind,
    pub from_node: i32,
    pub to_node: i32,
}

/// The transition page `va` of `pid` went through between two snapshots,
/// if any. `None` states mean "neither present nor swapped" (not in the
/// snapshot). Page states tell what can be seen (appeared, gone, swapped,
/// flags); what happened to a page that stayed mapped on another PFN comes
/// from `evidence` about that page ([`Evidence::replaced`]): a new PFN is a
/// migration or a collapse only when an event says so.
pub fn classify(
    before: Option<PageState>,
    after: Option<PageState>,
    nodes: &NodeMap,
    evidence: &Evidence,
    pid: u32,
    va: u64,
) -> Option<PageChange> {
    let change = |kind| PageChange {
        kind,
        from_node: -1,
        to_node: -1,
    };
    let before = before.filter(|b| b.present() || b.swapped() || b.moving());
    let after = after.filter(|a| a.present() || a.swapped() || a.moving());
    let kind = match (before, after) {
        (None, None) => return None,
        (Some(_), None) => TransitionKind::Unmapped,
        // Faulted in and swapped out again within the interval.
        (None, Some(a)) if a.swapped() => TransitionKind::SwappedOut,
        (None, Some(a)) => appeared(a),
        (Some(b), Some(a)) if b.swapped() && !a.swapped() => TransitionKind::SwappedIn,
        (Some(b), Some(a)) if !b.swapped() && a.swapped() => TransitionKind::SwappedOut,
        (Some(b), Some(_)) if b.swapped() => return None,
        // A page caught mid-migration (in a snapshot taken while
        // migrate_pages ran) is still its old page: only a PFN change
        // counts, its flags being unread. The migration entry itself is
        // the evidence.
        (Some(b), Some(a)) if b.moving() || a.moving() => return moved(b, a, nodes),
        // The same page: only its mapping or folio changed.
        (Some(b), Some(a)) if a.pfn() == b.pfn() => {
            if b.pmd && !a.pmd {
                // The PMD mapping was split into PTEs (partial munmap,
                // mprotect, madvise...); the folio may stay large until the
                // deferred-split shrinker splits it.
                TransitionKind::SplitFromThp
            } else if b.thp() && !a.thp() {
                // A PTE-mapped large folio became small pages.
                TransitionKind::FolioSplit
            } else if a.ksm() && !b.ksm() {
                // KSM turns the first page of a pair into the KSM page in
                // place.
                TransitionKind::KsmMerged
            } else if b.ksm() && !a.ksm() {
                TransitionKind::KsmUnmerged
            } else {
                return None;
            }
        }
        // Another page: what it is now says some; evidence says the rest.
        (Some(b), Some(a)) => {
            if a.ksm() && !b.ksm() {
                TransitionKind::KsmMerged
            } else if b.ksm() && !a.ksm() {
                TransitionKind::KsmUnmerged
            } else if a.zero() && !b.zero() {
                TransitionKind::ZeroPageMapped
            } else if a.hugetlb() && !b.hugetlb() {
                TransitionKind::BecameHugetlb
            } else if b.zero() && !a.zero() {
                // Write to a zero-page mapping: a fresh page faulted in.
                TransitionKind::FaultedIn
            } else {
                let (from, to) = (b.pfn().unwrap_or(0), a.pfn().unwrap_or(0));
                let thp = (a.thp() && !b.thp()) || (a.pmd && !b.pmd);
                match evidence.replaced(pid, va, from, to, thp) {
                    TransitionKind::Migrated => return moved(b, a, nodes),
                    kind => kind,
                }
            }
        }
    };
    Some(change(kind))
}

/// A page that stayed mapped but changed PFN, with evidence that it moved:
/// migrated, onto another NUMA node or not.
fn moved(b: PageState, a: PageState, nodes: &NodeMap) -> Option<PageChange> {
    if a.pfn() == b.pfn() {
        return None;
    }
    let (from, to) = (
        b.pfn().map_or(-1, |p| nodes.node_of(p)),
        a.pfn().map_or(-1, |p| nodes.node_of(p)),
    );
    let kind = if from != to && from >= 0 && to >= 0 {
        TransitionKind::NodeChanged
    } else {
        TransitionKind::Migrated
    };
    let node_changed = kind == TransitionKind::NodeChanged;
    Some(PageChange {
        kind,
        from_node: if node_changed { from } else { -1 },
        to_node: if node_changed { to } else { -1 },
    })
}

fn appeared(a: PageState) -> TransitionKind {
    if a.zero() {
        TransitionKind::ZeroPageMapped
    } else if a.hugetlb() {
        TransitionKind::BecameHugetlb
    } else {
        TransitionKind::FaultedIn
    }
}

/// One process's page counters at a snapshot (4 KiB pages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessCounters {
    pub pid: u32,
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
    pub swap: u64,
    /// Pages inside transparent huge pages (any size).
    pub thp: u64,
    /// hugetlb pages (4 KiB units) by NUMA node.
    pub hugetlb_per_node: Vec<u64>,
}

/// Per-process counters of a snapshot, in pid order (from the totals each
/// process table counted when it was built: no page is walked here).
pub fn counters(table: &PageTable, nodes: &NodeMap) -> Vec<ProcessCounters> {
    table
        .processes()
        .iter()
        .filter(|p| !p.is_empty())
        .map(|p| {
            let t = p.totals();
            let mut hugetlb_per_node: Vec<u64> = Vec::new();
            for &(pfn, pages) in &t.hugetlb {
                let node = nodes.node_of(pfn).max(0) as usize;
                if hugetlb_per_node.len() <= node {
                    hugetlb_per_node.resize(node + 1, 0);
                }
                hugetlb_per_node[node] += pages;
            }
            ProcessCounters {
                pid: p.pid,
                rss: t.present,
                anon: t.anon,
                file: t.file,
                swap: t.swapped,
                thp: t.thp,
                hugetlb_per_node,
            }
        })
        .collect()
}

/// One page of a process table, in address order.
#[derive(Debug, Clone, Copy)]
struct Row {
    va: u64,
    vma: u32,
    state: PageState,
}

fn rows(t: &ProcessTable) -> impl Iterator<Item = Row> + '_ {
    t.pages().map(move |(vma, va, i)| Row {
        va,
        vma,
        state: PageState {
            pagemap: t.pagemap(i),
            kflags: t.flags(i),
            pmd: t.pmd_mapped(i),
        },
    })
}

/// Key of a transition group within one interval.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct GroupKey {
    pid: u32,
    vma_start: u64,
    vma: String,
    kind: TransitionKind,
    cause: Cause,
    from_node: i32,
    to_node: i32,
}

/// Transition groups being counted: consecutive pages mostly fall in the
/// group of the page before, which is counted without a map lookup (or a
/// copy of the VMA name).
#[derive(Default)]
struct Groups {
    done: BTreeMap<GroupKey, u64>,
    current: Option<(GroupKey, u64)>,
}

impl Groups {
    fn add(&mut self, pid: u32, meta: &VmaMeta, change: PageChange, cause: Cause) {
        if let Some((k, n)) = &mut self.current
            && (k.pid, k.vma_start, k.kind, k.cause, k.from_node, k.to_node)
                == (
                    pid,
                    meta.start,
                    change.kind,
                    cause,
                    change.from_node,
                    change.to_node,
                )
            && k.vma == meta.name
        {
            *n += 1;
            return;
        }
        self.flush();
        self.current = Some((
            GroupKey {
                pid,
                vma_start: meta.start,
                vma: meta.name.clone(),
                kind: change.kind,
                cause,
                from_node: change.from_node,
                to_node: change.to_node,
            },
            1,
        ));
    }

    fn flush(&mut self) {
        if let Some((k, n)) = self.current.take() {
            *self.done.entry(k).or_default() += n;
        }
    }
}

/// Diffs two snapshots of the same processes and attributes every change
/// with `evidence` (already resolved against `before` with
/// [`Evidence::resolve_pfns`]); swap-outs and returns go to `swaps`.
/// `ts_ns` stamps the groups. A process whose table is the same in both
/// (carried over unchanged, see [`PageTable`]) has no transition and is
/// skipped without looking at its pages.
pub fn diff(
    before: &PageTable,
    after: &PageTable,
    evidence: &Evidence,
    nodes: &NodeMap,
    swaps: &mut SwapLedger,
    ts_ns: u64,
) -> Vec<TransitionGroup> {
    let mut groups = Groups::default();
    let mut b = before.processes().iter().peekable();
    let mut a = after.processes().iter().peekable();
    loop {
        let pair = match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(x), Some(y)) if x.pid == y.pid => (b.next(), a.next()),
            (Some(x), Some(y)) if x.pid < y.pid => (b.next(), None),
            (Some(_), None) => (b.next(), None),
            _ => (None, a.next()),
        };
        match pair {
            (Some(x), Some(y)) if Arc::ptr_eq(x, y) => {}
            (x, y) => diff_process(
                x.map(|p| &**p),
                y.map(|p| &**p),
                evidence,
                nodes,
                swaps,
                ts_ns,
                &mut groups,
            ),
        }
    }
    groups.flush();
    groups
        .done
        .into_iter()
        .map(|(k, pages)| TransitionGroup {
            ts_ns,
            pid: k.pid,
            vma_start: k.vma_start,
            vma: k.vma,
            kind: k.kind,
            cause: k.cause,
            pages,
            from_node: k.from_node,
            to_node: k.to_node,
        })
        .collect()
}

/// The VMA name of collapses no snapshot saw: the range was faulted in,
/// collapsed and freed between two snapshots, so no VMA is known.
pub const BETWEEN_SNAPSHOTS: &str = "[between snapshots]";

/// Collapses of memory no snapshot saw, counted from their events (see
/// [`Evidence::unseen_collapses`]), for the `followed` processes (None:
/// all): 512 pages each, in the pseudo-VMA [`BETWEEN_SNAPSHOTS`].
pub fn unseen_collapses(
    evidence: &Evidence,
    followed: Option<&BTreeSet<u32>>,
    ts_ns: u64,
) -> Vec<TransitionGroup> {
    evidence
        .unseen_collapses()
        .iter()
        .filter(|((pid, _), _)| followed.is_none_or(|f| f.contains(pid)))
        .map(|(&(pid, cause), &n)| TransitionGroup {
            ts_ns,
            pid,
            vma_start: 0,
            vma: BETWEEN_SNAPSHOTS.into(),
            kind: TransitionKind::CollapsedToThp,
            cause,
            pages: n * PMD_PAGES,
            from_node: -1,
            to_node: -1,
        })
        .collect()
}

/// The changes of one process between two tables (`None`: not in that
/// snapshot), page by page in address order.
fn diff_process(
    before: Option<&ProcessTable>,
    after: Option<&ProcessTable>,
    evidence: &Evidence,
    nodes: &NodeMap,
    swaps: &mut SwapLedger,
    ts_ns: u64,
    groups: &mut Groups,
) {
    let Some(pid) = before.or(after).map(|p| p.pid) else {
        return;
    };
    // The PFN the evidence names: the one the page left (a page swapped
    // out or moved is named by it: a page moved twice in an interval, to
    // another node by migrate_pages(2), then within it by compaction,
    // changed node by the first move), else the one it has.
    let mut add = |table: &ProcessTable, row: Row, pfn: Option<u64>, change: PageChange| {
        let vma = &table.vmas[row.vma as usize];
        let cause = match evidence.cause(pid, row.va, pfn, change.kind) {
            // Only the heap VMA ends at the program break.
            Cause::Unexplained
                if change.kind == TransitionKind::Unmapped
                    && vma.name == "[heap]"
                    && evidence.below_brk(pid, row.va) =>
            {
                Cause::Brk
            }
            cause => cause,
        };
        groups.add(pid, vma, change, cause);
    };
    let empty = ProcessTable::default();
    let (bt, at) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
    let mut b = rows(bt).peekable();
    let mut a = rows(at).peekable();
    loop {
        let order = match (b.peek(), a.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.va.cmp(&y.va),
        };
        match order {
            std::cmp::Ordering::Less => {
                let row = b.next().expect("peeked");
                let vma_start = bt.vmas[row.vma as usize].start;
                swaps.observe(pid, row.va, vma_start, Some(row.state), None, ts_ns);
                if let Some(c) = classify(Some(row.state), None, nodes, evidence, pid, row.va) {
                    add(bt, row, row.state.pfn(), c);
                }
            }
            std::cmp::Ordering::Greater => {
                let row = a.next().expect("peeked");
                let vma_start = at.vmas[row.vma as usize].start;
                swaps.observe(pid, row.va, vma_start, None, Some(row.state), ts_ns);
                if let Some(c) = classify(None, Some(row.state), nodes, evidence, pid, row.va) {
                    add(at, row, row.state.pfn(), c);
                }
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (b.next().expect("peeked"), a.next().expect("peeked"));
                let vma_start = at.vmas[y.vma as usize].start;
                swaps.observe(pid, y.va, vma_start, Some(x.state), Some(y.state), ts_ns);
                if let Some(c) = classify(Some(x.state), Some(y.state), nodes, evidence, pid, y.va)
                {
                    let pfn = if c.kind == TransitionKind::KsmMerged {
                        y.state.pfn()
                    } else {
                        x.state.pfn().or(y.state.pfn())
                    };
                    add(at, y, pfn, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::EventKind, snapshot::flags::PM_SWAP};

    const THP: u64 = 1 << kpf::THP;
    const KSM: u64 = 1 << kpf::KSM;
    const ZERO: u64 = 1 << kpf::ZERO_PAGE;

    fn present(pfn: u64, kflags: u64) -> Option<PageState> {
        Some(PageState {
            pagemap: PM_PRESENT | pfn,
            kflags,
            pmd: false,
        })
    }

    fn pmd_mapped(pfn: u64) -> Option<PageState> {
        present(pfn, THP).map(|p| PageState { pmd: true, ..p })
    }

    fn swapped() -> Option<PageState> {
        Some(PageState {
            pagemap: PM_SWAP | (123 << 5),
            kflags: 0,
            pmd: false,
        })
    }

    /// A pagemap swap entry of `swap_type` and `offset`.
    fn entry(swap_type: u64, offset: u64) -> Option<PageState> {
        Some(PageState {
            pagemap: PM_SWAP | swap_type | (offset << 5),
            kflags: 0,
            pmd: false,
        })
    }

    /// The kernel's migration entries (type 25-28 with every kind of
    /// non-swap entry built in) name the page being moved, and pagemap
    /// marks them swapped: a snapshot taken while migrate_pages runs sees
    /// them. They are neither swap-outs nor flag changes.
    #[test]
    fn pages_caught_mid_migration_are_their_old_page_not_swapped_out() {
        use TransitionKind::*;
        let migrating = |pfn| entry(26, pfn);
        assert_eq!(kind(present(10, THP), migrating(10)), None);
        assert_eq!(kind(migrating(10), present(10, 0)), None);
        assert_eq!(kind(migrating(10), present(11, 0)), Some(Migrated));
        assert_eq!(kind(present(10, 0), migrating(11)), Some(Migrated));
        assert_eq!(kind(migrating(10), swapped()), Some(SwappedOut));
        assert_eq!(kind(swapped(), migrating(10)), Some(SwappedIn));
        assert_eq!(kind(None, migrating(10)), Some(FaultedIn));
        // A PTE marker (type 31: uffd-wp, poison, guard) names no page.
        assert_eq!(kind(present(10, 0), entry(31, 4)), Some(Unmapped));
        // A swap file's entry, even a high type, is swap.
        assert_eq!(kind(present(10, 0), entry(23, 99)), Some(SwappedOut));
    }

    fn kind(b: Option<PageState>, a: Option<PageState>) -> Option<TransitionKind> {
        classify(b, a, &NodeMap::default(), &Evidence::default(), 1, 0).map(|c| c.kind)
    }

    #[test]
    fn every_kind_is_classified_from_page_states() {
        use TransitionKind::*;
        assert_eq!(kind(None, present(10, 0)), Some(FaultedIn));
        assert_eq!(kind(None, present(10, ZERO)), Some(ZeroPageMapped));
        assert_eq!(kind(None, present(10, 1 << kpf::HUGE)), Some(BecameHugetlb));
        assert_eq!(kind(present(10, 0), swapped()), Some(SwappedOut));
        assert_eq!(kind(None, swapped()), Some(SwappedOut));
        assert_eq!(kind(swapped(), present(11, 0)), Some(SwappedIn));
        assert_eq!(kind(present(10, 0), None), Some(Unmapped));
        assert_eq!(kind(swapped(), None), Some(Unmapped));
        // A new PFN says nothing about how by itself (see
        // new_pfns_are_what_the_evidence_says).
        assert_eq!(kind(present(10, 0), present(512, THP)), Some(PfnChanged));
        assert_eq!(kind(present(10, 0), pmd_mapped(512)), Some(PfnChanged));
        // A partial munmap or mprotect splits the PMD; the folio stays a
        // THP until the deferred split, which is a second transition.
        assert_eq!(kind(pmd_mapped(512), present(512, THP)), Some(SplitFromThp));
        assert_eq!(kind(pmd_mapped(512), present(512, 0)), Some(SplitFromThp));
        assert_eq!(kind(present(512, THP), present(512, 0)), Some(FolioSplit));
        assert_eq!(kind(pmd_mapped(512), pmd_mapped(512)), None);
        assert_eq!(kind(present(10, 0), present(99, KSM)), Some(KsmMerged));
        assert_eq!(kind(present(10, 0), present(10, KSM)), Some(KsmMerged));
        assert_eq!(kind(present(99, KSM), present(10, 0)), Some(KsmUnmerged));
        assert_eq!(kind(present(10, 0), present(11, 0)), Some(PfnChanged));
        assert_eq!(kind(pmd_mapped(512), present(11, 0)), Some(PfnChanged));
        assert_eq!(kind(present(10, ZERO), present(11, 0)), Some(FaultedIn));
        assert_eq!(kind(present(10, 0), present(10, 0)), None);
        assert_eq!(kind(swapped(), swapped()), None);
        assert_eq!(kind(None, None), None);
    }

    /// What an event says about one page of pid 1 at 0x4000_0000 (PFN 10
    /// before) decides what its new PFN was.
    fn with(events: &[EventKind], b: Option<PageState>, a: Option<PageState>) -> TransitionKind {
        classify(
            b,
            a,
            &NodeMap::default(),
            &evidence_of(1, events),
            1,
            0x4000_0000,
        )
        .expect("a change")
        .kind
    }

    /// The evidence of `events` in thread group `tgid`.
    fn evidence_of(tgid: u32, events: &[EventKind]) -> Evidence {
        let mut e = Evidence::default();
        for &kind in events {
            let event = crate::event::Event {
                ts_ns: 0,
                cpu: 0,
                tgid,
                tid: tgid,
                kind,
            };
            e.add(&event, &crate::event::Decoder::default(), |_| "proc".into());
        }
        e
    }

    #[test]
    fn new_pfns_are_what_the_evidence_says() {
        use TransitionKind::*;
        const VA: u64 = 0x4000_0000;
        let dontneed = EventKind::Madvise {
            start: VA,
            len: 2 << 20,
            advice: 4,
        };
        let fault = EventKind::PageFault {
            address: VA + 0x1234,
            ip: 0,
            error_code: 6,
        };
        let set = |pfn, pmd| EventKind::SetMigrationPte {
            addr: VA,
            order: 0,
            old_pfn: pfn,
            pmd,
        };
        let small = || present(10, 0);
        // Freed and faulted again, as a small page or a THP: new pages.
        assert_eq!(with(&[dontneed], small(), present(11, 0)), Refaulted);
        assert_eq!(with(&[dontneed], small(), pmd_mapped(512)), Refaulted);
        assert_eq!(with(&[dontneed], pmd_mapped(512), small()), Refaulted);
        // Its own fault there (copy-on-write): a new page.
        assert_eq!(with(&[fault], small(), present(11, 0)), Refaulted);
        // A migration entry naming that page at that address: migrated.
        assert_eq!(with(&[set(10, false)], small(), present(11, 0)), Migrated);
        assert_eq!(
            with(&[set(10, false), dontneed], small(), present(11, 0)),
            Migrated
        );
        // ... another page, or another address: no evidence.
        assert_eq!(with(&[set(9, false)], small(), present(11, 0)), PfnChanged);
        // A PMD entry covers the THP's 512 pages.
        assert_eq!(
            with(&[set(512, true)], pmd_mapped(512), pmd_mapped(1024)),
            Migrated
        );
        let e = evidence_of(9, &[set(512, true)]);
        assert_eq!(e.replaced(1, VA + 0x1f_f000, 1023, 7, false), Migrated);
        assert_eq!(e.replaced(1, VA + 0x20_0000, 1024, 7, false), PfnChanged);
        // MADV_COLLAPSE of the range: collapsed, only if a THP now.
        let collapse = EventKind::Madvise {
            start: VA,
            len: 2 << 20,
            advice: 25,
        };
        assert_eq!(with(&[collapse], small(), pmd_mapped(512)), CollapsedToThp);
        assert_eq!(with(&[collapse], small(), present(11, 0)), PfnChanged);
        // Unmapping evidence names the cause of a page gone.
        let e = evidence_of(
            1,
            &[EventKind::Munmap {
                addr: VA,
                len: 4096,
            }],
        );
        assert_eq!(e.cause(1, VA, None, Unmapped), Cause::Munmap);
        assert_eq!(e.cause(1, VA + 4096, None, Unmapped), Cause::Unexplained);
        assert_eq!(e.cause(2, VA, None, Unmapped), Cause::Unexplained);
    }

    /// A snapshot of process `pid` with pages 0..n of a VMA at 0x4000_0000
    /// on PFNs `pfn0..`.
    fn one(pid: u32, n: u32, pfn0: u64) -> PageTable {
        crate::snapshot::columns::test_table(
            pid,
            0x4000_0000,
            (0..n).collect(),
            (0..u64::from(n)).map(|i| PM_PRESENT | (pfn0 + i)).collect(),
            vec![0; n as usize],
            vec![false; n as usize],
        )
    }

    fn both(a: &PageTable, b: &PageTable) -> PageTable {
        PageTable::from_processes(a.processes().iter().chain(b.processes()).cloned().collect())
    }

    #[test]
    fn a_carried_process_table_has_no_transitions_and_the_others_are_diffed() {
        let diff_of = |before: &PageTable, after: &PageTable| {
            let mut swaps = SwapLedger::default();
            diff(
                before,
                after,
                &Evidence::default(),
                &NodeMap::default(),
                &mut swaps,
                1,
            )
        };
        let steady = one(1, 64, 0x1000);
        let before = both(&steady, &one(2, 8, 0x2000));
        // Pid 1 carried by Arc; pid 2 read again with 4 more pages and 2
        // pages moved; pid 3 new.
        let after2 = crate::snapshot::columns::test_table(
            2,
            0x4000_0000,
            (0..12).collect(),
            (0..12u64)
                .map(|i| PM_PRESENT | if i < 2 { 0x9000 + i } else { 0x2000 + i })
                .collect(),
            vec![0; 12],
            vec![false; 12],
        );
        let after = both(&both(&steady, &after2), &one(3, 5, 0x3000));
        assert!(Arc::ptr_eq(&before.processes()[0], &after.processes()[0]));
        let t = diff_of(&before, &after);
        let got: Vec<(u32, TransitionKind, u64)> =
            t.iter().map(|g| (g.pid, g.kind, g.pages)).collect();
        assert_eq!(
            got,
            vec![
                (2, TransitionKind::FaultedIn, 4),
                (2, TransitionKind::PfnChanged, 2),
                (3, TransitionKind::FaultedIn, 5),
            ]
        );
        // The same diff against a fresh read of the steady process (equal
        // pages, another table) gives the same transitions: carrying loses
        // nothing.
        let fresh = both(&both(&one(1, 64, 0x1000), &after2), &one(3, 5, 0x3000));
        assert_eq!(diff_of(&before, &fresh), t);
        // Gone processes lose every page.
        let gone = diff_of(&before, &steady);
        assert_eq!(
            gone.iter()
                .map(|g| (g.pid, g.kind, g.pages))
                .collect::<Vec<_>>(),
            vec![(2, TransitionKind::Unmapped, 8)]
        );
        assert_eq!(counters(&after, &NodeMap::default())[1].rss, 12);
    }
}
