//! Page state transitions: what the correlator concludes when it joins the
//! difference between two snapshots with the events in between. A
//! transition group says: in this interval, `pages` pages of process `pid`
//! in VMA `vma` went through `kind`, because of `cause`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What happened to a virtual page between two snapshots.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum TransitionKind {
    /// Not present before, present now.
    FaultedIn = 0,
    /// Present before, swapped now.
    SwappedOut = 1,
    /// Swapped before, present now.
    SwappedIn = 2,
    /// Mapped before, gone now (unmapped, freed, or the process exited).
    Unmapped = 3,
    /// Present before and now, on a different PFN.
    Migrated = 4,
    /// Present before and now, on a PFN of a different NUMA node.
    NodeChanged = 5,
    /// Now part of a THP (PMD-mapped), was not.
    CollapsedToThp = 6,
    /// Was mapped by a PMD (part of a PMD-mapped THP), now by PTEs: the
    /// PMD was split (partial munmap, mprotect, madvise, migration...).
    SplitFromThp = 7,
    /// Now a KSM page, was not.
    KsmMerged = 8,
    /// Was a KSM page, now is not.
    KsmUnmerged = 9,
    /// Now mapped to the shared zero page.
    ZeroPageMapped = 10,
    /// Now backed by a hugetlb page.
    BecameHugetlb = 11,
    /// Was in a PTE-mapped large folio (THP of any size), now in a small
    /// page: the folio was split (for a PMD THP typically after its PMD
    /// split, by the deferred-split shrinker or reclaim).
    FolioSplit = 12,
    /// Present before and now on a different PFN, a new page the process
    /// faulted (or populated) after the range was unmapped or discarded
    /// (munmap, MADV_DONTNEED/FREE/REMOVE, mremap) or on its own fault
    /// there (copy-on-write): not a move of the old page.
    Refaulted = 13,
    /// Present before and now on a different PFN, and no event says how:
    /// neither a migration of that page, nor a collapse of its PMD range,
    /// nor an unmap, discard or fault of it. Always `unexplained`.
    PfnChanged = 14,
}

impl TransitionKind {
    /// Every kind, in discriminant order.
    pub const ALL: [TransitionKind; 15] = [
        Self::FaultedIn,
        Self::SwappedOut,
        Self::SwappedIn,
        Self::Unmapped,
        Self::Migrated,
        Self::NodeChanged,
        Self::CollapsedToThp,
        Self::SplitFromThp,
        Self::KsmMerged,
        Self::KsmUnmerged,
        Self::ZeroPageMapped,
        Self::BecameHugetlb,
        Self::FolioSplit,
        Self::Refaulted,
        Self::PfnChanged,
    ];

    /// The kind with discriminant `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// Why it happened, from the events in the interval. `Unexplained` when no
/// event explains it: the correlator never guesses.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Cause {
    Unexplained = 0,
    /// A page fault of the process itself.
    Fault = 1,
    KswapdReclaim = 2,
    DirectReclaim = 3,
    MemcgReclaim = 4,
    Khugepaged = 5,
    MadvCollapse = 6,
    Compaction = 7,
    /// NUMA balancing (migrate reason numa_misplaced).
    NumaBalancing = 8,
    /// migrate_pages/move_pages/mbind (migrate reason syscall or mbind).
    MigrateSyscall = 9,
    Ksm = 10,
    /// Reclaim while a balloon was inflating.
    BalloonPressure = 11,
    Oom = 12,
    /// The process exited.
    Exit = 13,
    /// The process called exec, replacing its address space.
    Exec = 14,
    /// No tracepoint names the process that split a PMD mapping (none on
    /// x86 up to at least 6.18): /proc/vmstat `thp_split_pmd` rose in the
    /// interval (or the one before, which a snapshot can straddle).
    VmstatThpSplitPmd = 15,
    /// As above for folio splits: /proc/vmstat `thp_split_page` rose.
    VmstatThpSplitPage = 16,
    /// The split hook (fentry on `__split_huge_pmd` or the folio split
    /// function) saw the process's own thread split it: its munmap,
    /// mprotect, madvise or mremap.
    ThpSplitByProcess = 17,
    /// The split hook saw another thread split it: the deferred-split
    /// shrinker in reclaim, migration, compaction, khugepaged.
    ThpSplitByOther = 18,
    /// The process's munmap of the range (syscalls/sys_enter_munmap).
    Munmap = 19,
    /// Its madvise(MADV_DONTNEED or MADV_DONTNEED_LOCKED) of the range.
    MadvDontneed = 20,
    /// Its madvise(MADV_FREE): lazily freed, dropped when reclaim came.
    MadvFree = 21,
    /// Its madvise(MADV_REMOVE): the backing store punched out.
    MadvRemove = 22,
    /// Its mremap moved or shrank the mapping.
    Mremap = 23,
    /// Its mmap(MAP_POPULATE or MAP_LOCKED) populated the range: the
    /// kernel faulted the pages in for it, without a user page fault.
    Populate = 24,
    /// madvise(MADV_PAGEOUT) of the range by the process, or a
    /// process_madvise(MADV_PAGEOUT) whose thread wrote the page to swap:
    /// reclaimed on request, not under memory pressure.
    MadvPageout = 25,
    /// Its brk(2) lowered the program break below the page: a page of the
    /// `[heap]` VMA given back (malloc trimming the top of its heap).
    Brk = 26,
}

impl Cause {
    /// Every cause, in discriminant order.
    pub const ALL: [Cause; 27] = [
        Self::Unexplained,
        Self::Fault,
        Self::KswapdReclaim,
        Self::DirectReclaim,
        Self::MemcgReclaim,
        Self::Khugepaged,
        Self::MadvCollapse,
        Self::Compaction,
        Self::NumaBalancing,
        Self::MigrateSyscall,
        Self::Ksm,
        Self::BalloonPressure,
        Self::Oom,
        Self::Exit,
        Self::Exec,
        Self::VmstatThpSplitPmd,
        Self::VmstatThpSplitPage,
        Self::ThpSplitByProcess,
        Self::ThpSplitByOther,
        Self::Munmap,
        Self::MadvDontneed,
        Self::MadvFree,
        Self::MadvRemove,
        Self::Mremap,
        Self::Populate,
        Self::MadvPageout,
        Self::Brk,
    ];

    /// The cause with discriminant `v`.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// Shows the snake_case name the JSON output uses (`collapsed_to_thp`).
fn serde_name(v: &impl Serialize, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => f.write_str(&s),
        _ => Err(std::fmt::Error),
    }
}

impl std::fmt::Display for TransitionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        serde_name(self, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        serde_name(self, f)
    }
}

/// A VMA's name as maps shows it, `[anon]` for anonymous memory.
pub fn vma_label(name: &str) -> &str {
    if name.is_empty() { "[anon]" } else { name }
}

/// Pages of one process and VMA that went through the same transition for
/// the same cause in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransitionGroup {
    /// CLOCK_MONOTONIC ns at the end of the interval (the later snapshot).
    pub ts_ns: u64,
    pub pid: u32,
    /// The VMA's start address and its name as /proc/PID/maps shows it
    /// (path, `[heap]`, `[stack]`, or empty for anonymous).
    pub vma_start: u64,
    pub vma: String,
    pub kind: TransitionKind,
    pub cause: Cause,
    /// 4 KiB pages.
    pub pages: u64,
    /// NUMA node before and after, for `NodeChanged` (else -1).
    pub from_node: i32,
    pub to_node: i32,
}

impl TransitionGroup {
    /// The VMA as maps shows it, `[anon]` for anonymous memory.
    pub fn vma_label(&self) -> &str {
        vma_label(&self.vma)
    }

    /// One line: `pid 4711 (app) [heap] 0x55..: 512 pages collapsed_to_thp by khugepaged`.
    pub fn describe(&self, comm: &str) -> String {
        let node = if self.from_node >= 0 {
            format!(" (node {} -> {})", self.from_node, self.to_node)
        } else {
            String::new()
        };
        format!(
            "pid {} ({comm}) {} {:#x}: {} pages {}{node} by {}",
            self.pid,
            self.vma_label(),
            self.vma_start,
            self.pages,
            self.kind,
            self.cause
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_round_trip() {
        for k in TransitionKind::ALL {
            assert_eq!(TransitionKind::from_u8(k as u8), Some(k));
        }
        for c in Cause::ALL {
            assert_eq!(Cause::from_u8(c as u8), Some(c));
        }
        assert_eq!(
            TransitionKind::CollapsedToThp.to_string(),
            "collapsed_to_thp"
        );
        assert_eq!(Cause::MadvCollapse.to_string(), "madv_collapse");
        let g = TransitionGroup {
            ts_ns: 0,
            pid: 4711,
            vma_start: 0x7f00_0000_0000,
            vma: String::new(),
            kind: TransitionKind::NodeChanged,
            cause: Cause::NumaBalancing,
            pages: 512,
            from_node: 0,
            to_node: 1,
        };
        assert_eq!(
            g.describe("app"),
            "pid 4711 (app) [anon] 0x7f0000000000: 512 pages node_changed (node 0 -> 1) by numa_balancing"
        );
        assert_eq!(TransitionKind::from_u8(200), None);
        assert_eq!(Cause::from_u8(200), None);
    }
}
