//! What one page is, from its kpageflags word alone, and what a pageblock
//! is from its pages' classes.
//!
//! Limits of the flags (see docs/map.md): a page the kernel allocated for
//! itself without a page type (vmalloc, kernel stacks, pipe buffers, page
//! fragments) has no flags at all, and neither has a free page sitting on a
//! per-CPU free list (those are not PG_buddy): both are `kernel`. Slab
//! pages of reclaimable caches (dentries, inodes) cannot be told from other
//! slab pages, and pinned user pages cannot be told from unpinned ones.

use serde::Serialize;

use crate::snapshot::flags::{KPF_HACKING_FIRST, has, kpf};

/// kpageflags bit 26: page table page (since 6.8; 0 before).
const PGTABLE: u32 = 26;
/// kpageflags bit 19: hardware-poisoned page.
const HWPOISON: u32 = 19;
/// kpageflags kernel-hacking bit 32: PG_reserved.
const RESERVED: u32 = 32;

/// The class of a page. Every page is in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PageClass {
    /// Free in the buddy allocator (kpageflags sets BUDDY on every page of
    /// a free block, not only its head).
    Free,
    /// Part of a transparent huge page or other large anon/file folio.
    Thp,
    /// Part of a hugetlb page, free in its pool or in use.
    Hugetlb,
    /// Anonymous or shmem user page (movable).
    Anon,
    /// File page on the LRU or mapped (movable).
    File,
    /// Page cache state without LRU or mapping (being added, buffer heads):
    /// reclaimable rather than movable.
    Reclaimable,
    /// Slab page (unmovable; reclaimable caches cannot be told apart).
    Slab,
    /// Page table page (unmovable).
    Pgtable,
    /// PG_reserved: firmware, kernel image, memmap holes (unmovable).
    Reserved,
    /// No flags at all: a kernel allocation without a page type, or a free
    /// page on a per-CPU list (unmovable as far as the flags tell).
    Kernel,
    /// Any other combination (kernel compound pages, hwpoison, ...).
    Other,
    /// PG_offline: ballooned out or memory being unplugged.
    Offline,
    /// No struct page (a memory hole) or outside every zone's span.
    Hole,
}

/// Number of classes.
pub const NCLASS: usize = 13;

/// Every class, in [`PageClass`] order.
pub const CLASSES: [PageClass; NCLASS] = [
    PageClass::Free,
    PageClass::Thp,
    PageClass::Hugetlb,
    PageClass::Anon,
    PageClass::File,
    PageClass::Reclaimable,
    PageClass::Slab,
    PageClass::Pgtable,
    PageClass::Reserved,
    PageClass::Kernel,
    PageClass::Other,
    PageClass::Offline,
    PageClass::Hole,
];

impl PageClass {
    /// The serialized name.
    pub fn name(self) -> &'static str {
        match self {
            PageClass::Free => "free",
            PageClass::Thp => "thp",
            PageClass::Hugetlb => "hugetlb",
            PageClass::Anon => "anon",
            PageClass::File => "file",
            PageClass::Reclaimable => "reclaimable",
            PageClass::Slab => "slab",
            PageClass::Pgtable => "pgtable",
            PageClass::Reserved => "reserved",
            PageClass::Kernel => "kernel",
            PageClass::Other => "other",
            PageClass::Offline => "offline",
            PageClass::Hole => "hole",
        }
    }

    /// Whether a page of this class keeps its block from ever becoming a
    /// free huge page (compaction cannot move it).
    pub fn blocks(self) -> bool {
        matches!(
            self,
            PageClass::Slab
                | PageClass::Pgtable
                | PageClass::Reserved
                | PageClass::Kernel
                | PageClass::Other
                | PageClass::Hole
        )
    }
}

/// Bits that say nothing about what a page is used for.
const NOISE: u64 = (1 << kpf::IDLE) | (1 << kpf::REFERENCED);

/// Page cache state bits (uptodate, dirty, writeback, swapcache,
/// k:mappedtodisk, k:private, k:private_2).
const CACHE_BITS: u64 = (1 << 3) | (1 << 4) | (1 << 8) | (1 << 13) | (7 << 34);

/// The class of a page with kpageflags `f`.
#[inline]
pub fn classify(f: u64) -> PageClass {
    if has(f, kpf::NOPAGE) {
        PageClass::Hole
    } else if has(f, kpf::OFFLINE) {
        PageClass::Offline
    } else if has(f, kpf::BUDDY) {
        PageClass::Free
    } else if has(f, kpf::HUGE) {
        PageClass::Hugetlb
    } else if has(f, kpf::SLAB) {
        PageClass::Slab
    } else if has(f, PGTABLE) {
        PageClass::Pgtable
    } else if has(f, RESERVED) {
        PageClass::Reserved
    } else if has(f, kpf::THP) {
        PageClass::Thp
    } else if has(f, HWPOISON) {
        PageClass::Other
    } else if f & ((1 << kpf::LRU) | (1 << kpf::ANON) | (1 << kpf::MMAP)) != 0 {
        if has(f, kpf::ANON) || has(f, kpf::SWAPBACKED) {
            PageClass::Anon
        } else {
            PageClass::File
        }
    } else if f & CACHE_BITS != 0 && f & (3 << kpf::COMPOUND_HEAD) == 0 {
        PageClass::Reclaimable
    } else if f & !NOISE & ((1 << KPF_HACKING_FIRST) - 1) == 0 {
        PageClass::Kernel
    } else {
        PageClass::Other
    }
}

/// What a pageblock is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Entirely free: a free huge page.
    Free,
    /// One THP (PMD size or larger) covers it: a huge page in use.
    Thp,
    /// A hugetlb page covers it (free in the pool or in use).
    Hugetlb,
    /// Only free and movable pages: compaction could make it free.
    Compactable,
    /// Holds pages compaction cannot move (see the block's blocker).
    Blocked,
    /// Holds ballooned-out or offlined pages and nothing unmovable.
    Offline,
    /// No memory at all.
    Hole,
}

/// Every verdict, in [`Verdict`] order.
pub const VERDICTS: [Verdict; 7] = [
    Verdict::Free,
    Verdict::Thp,
    Verdict::Hugetlb,
    Verdict::Compactable,
    Verdict::Blocked,
    Verdict::Offline,
    Verdict::Hole,
];

impl Verdict {
    /// The serialized name.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Free => "free",
            Verdict::Thp => "thp",
            Verdict::Hugetlb => "hugetlb",
            Verdict::Compactable => "compactable",
            Verdict::Blocked => "blocked",
            Verdict::Offline => "offline",
            Verdict::Hole => "hole",
        }
    }
}

/// The verdict of a block of `n` pages with `counts` pages per class, of
/// which `heads` are compound heads (one head and THP everywhere: one
/// huge folio), and the class of most blocking pages when blocked.
pub fn verdict(counts: &[u32; NCLASS], heads: u32, n: u32) -> (Verdict, Option<PageClass>) {
    let c = |k: PageClass| counts[k as usize];
    if c(PageClass::Hole) == n {
        return (Verdict::Hole, None);
    }
    if c(PageClass::Free) == n {
        return (Verdict::Free, None);
    }
    if c(PageClass::Hugetlb) == n {
        return (Verdict::Hugetlb, None);
    }
    if c(PageClass::Thp) == n && heads <= 1 {
        return (Verdict::Thp, None);
    }
    let blocker = CLASSES
        .iter()
        .filter(|k| k.blocks() && c(**k) > 0)
        .max_by_key(|k| (c(**k), std::cmp::Reverse(**k)))
        .copied();
    if blocker.is_some() {
        (Verdict::Blocked, blocker)
    } else if c(PageClass::Offline) > 0 {
        (Verdict::Offline, None)
    } else {
        (Verdict::Compactable, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_classify() {
        let b = |bits: &[u32]| bits.iter().fold(0u64, |f, b| f | 1 << b);
        assert_eq!(classify(b(&[kpf::NOPAGE])), PageClass::Hole);
        assert_eq!(classify(b(&[kpf::BUDDY])), PageClass::Free);
        assert_eq!(classify(b(&[kpf::OFFLINE])), PageClass::Offline);
        assert_eq!(
            classify(b(&[kpf::HUGE, kpf::COMPOUND_TAIL])),
            PageClass::Hugetlb
        );
        assert_eq!(
            classify(b(&[kpf::THP, kpf::LRU, kpf::ANON, kpf::COMPOUND_HEAD])),
            PageClass::Thp
        );
        assert_eq!(
            classify(b(&[kpf::LRU, kpf::ANON, kpf::SWAPBACKED])),
            PageClass::Anon
        );
        assert_eq!(classify(b(&[kpf::LRU, 3])), PageClass::File);
        assert_eq!(classify(b(&[3, 34])), PageClass::Reclaimable);
        assert_eq!(classify(b(&[kpf::SLAB])), PageClass::Slab);
        assert_eq!(classify(b(&[PGTABLE])), PageClass::Pgtable);
        assert_eq!(classify(b(&[RESERVED])), PageClass::Reserved);
        assert_eq!(classify(b(&[kpf::IDLE])), PageClass::Kernel);
        assert_eq!(classify(b(&[kpf::COMPOUND_HEAD])), PageClass::Other);
        for (i, k) in CLASSES.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }

    #[test]
    fn verdicts_follow_the_counts() {
        let mut c = [0u32; NCLASS];
        c[PageClass::Free as usize] = 512;
        assert_eq!(verdict(&c, 0, 512), (Verdict::Free, None));
        c[PageClass::Free as usize] = 500;
        c[PageClass::Anon as usize] = 12;
        assert_eq!(verdict(&c, 0, 512), (Verdict::Compactable, None));
        c[PageClass::Anon as usize] = 10;
        c[PageClass::Kernel as usize] = 1;
        c[PageClass::Slab as usize] = 1;
        assert_eq!(
            verdict(&c, 0, 512),
            (Verdict::Blocked, Some(PageClass::Slab))
        );
        let mut t = [0u32; NCLASS];
        t[PageClass::Thp as usize] = 512;
        assert_eq!(verdict(&t, 1, 512), (Verdict::Thp, None));
        assert_eq!(verdict(&t, 8, 512), (Verdict::Compactable, None));
    }
}
