//! Large folios per VMA as tools/mm/thpmaps reports them: anonymous and
//! file memory by folio size (PMD THP and every mTHP size), PMD-mapped vs
//! PTE-mapped, and naturally aligned vs unaligned vs partially mapped.
//!
//! A folio is a COMPOUND_HEAD page (not hugetlb) followed by COMPOUND_TAIL
//! pages at consecutive PFNs and consecutive virtual pages. When the run
//! ends at the VMA's end or at a PFN gap, the next PFN's kpageflags is not
//! read: a folio whose mapped part is a power of two but which continues
//! unmapped past it is counted as complete (thpmaps reads that PFN; this is
//! the one simplification). Runs starting with a tail, or whose length is
//! not a power of two, are partial.
//!
//! Version trap: since 6.8 (large_rmappable folios) kpageflags THP is set
//! for every large anonymous/file folio, mTHP included; before it, only for
//! PMD-sized ones, so this code keys on COMPOUND_HEAD/TAIL, not on THP.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    flags::{PagemapEntry, has, kpf},
    scan::{Segment, VmaPages, is_large_head},
};

/// Bytes of one folio size, split by how they are mapped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolioBucket {
    /// Number of folios.
    pub folios: u64,
    /// Bytes in these folios.
    pub bytes: u64,
    /// Bytes mapped by a PMD.
    pub pmd_mapped: u64,
    /// Bytes mapped by PTEs.
    pub pte_mapped: u64,
    /// Bytes in folios whose virtual address is aligned to their size.
    pub aligned: u64,
    /// Bytes in fully mapped but unaligned folios.
    pub unaligned: u64,
}

/// Large-folio statistics of one VMA (or a whole process).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FolioStats {
    /// Anonymous folios by size in kB.
    pub anon: BTreeMap<u64, FolioBucket>,
    /// File/shmem folios by size in kB.
    pub file: BTreeMap<u64, FolioBucket>,
    /// Bytes of anonymous folios only partly mapped here.
    pub anon_partial: u64,
    /// Bytes of file folios only partly mapped here.
    pub file_partial: u64,
}

impl FolioStats {
    /// Whether no large folio was seen.
    pub fn is_empty(&self) -> bool {
        self.anon.is_empty()
            && self.file.is_empty()
            && self.anon_partial == 0
            && self.file_partial == 0
    }

    /// Add another VMA's statistics.
    pub fn merge(&mut self, o: &FolioStats) {
        for (mine, theirs) in [(&mut self.anon, &o.anon), (&mut self.file, &o.file)] {
            for (k, b) in theirs {
                let m = mine.entry(*k).or_default();
                m.folios += b.folios;
                m.bytes += b.bytes;
                m.pmd_mapped += b.pmd_mapped;
                m.pte_mapped += b.pte_mapped;
                m.aligned += b.aligned;
                m.unaligned += b.unaligned;
            }
        }
        self.anon_partial += o.anon_partial;
        self.file_partial += o.file_partial;
    }
}

/// Call `each(first, pages)` for every run of pages at consecutive PFNs
/// (and, with `same_va`, consecutive virtual pages) that starts with a
/// segment `starts` accepts and goes on through COMPOUND_TAIL pages.
pub fn compound_runs(
    v: &VmaPages,
    same_va: bool,
    starts: impl Fn(&Segment) -> bool,
    mut each: impl FnMut(&Segment, u64),
) {
    let mut cur: Option<(Segment, u64)> = None;
    v.for_each_segment(|g| {
        if let Some((first, len)) = &mut cur {
            if g.pfn() == first.pfn().map(|p| p + *len)
                && (!same_va || u64::from(g.idx) == u64::from(first.idx) + *len)
                && has(g.flags, kpf::COMPOUND_TAIL)
            {
                *len += u64::from(g.pages);
                return;
            }
            each(first, *len);
            cur = None;
        }
        if g.pfn().is_some() && starts(&g) {
            cur = Some((g, u64::from(g.pages)));
        }
    });
    if let Some((first, len)) = cur {
        each(&first, len);
    }
}

/// Large-folio statistics of one VMA's pages.
pub fn folio_stats(v: &VmaPages) -> FolioStats {
    let mut st = FolioStats::default();
    // One cheap pass over the flags spares the walk in batches of small
    // folios only.
    let compound = (1 << kpf::COMPOUND_HEAD) | (1 << kpf::COMPOUND_TAIL);
    if !v.flags.iter().any(|f| f & compound != 0) {
        return st;
    }
    let first_vpn = v.vma.start / 4096;
    let starts = |g: &Segment| {
        let f = g.flags;
        is_large_head(f)
            || (has(f, kpf::COMPOUND_TAIL) && !has(f, kpf::HUGE) && !has(f, kpf::ZERO_PAGE))
    };
    compound_runs(v, true, starts, |g, len| {
        let bytes = len * 4096;
        let anon = has(g.flags, kpf::ANON) || !PagemapEntry(g.pm).file();
        if is_large_head(g.flags) && len.is_power_of_two() {
            let map = if anon { &mut st.anon } else { &mut st.file };
            let b = map.entry(bytes / 1024).or_default();
            b.folios += 1;
            b.bytes += bytes;
            if g.pmd {
                b.pmd_mapped += bytes;
            } else {
                b.pte_mapped += bytes;
            }
            if (first_vpn + u64::from(g.idx)).is_multiple_of(len) {
                b.aligned += bytes;
            } else {
                b.unaligned += bytes;
            }
        } else if anon {
            st.anon_partial += bytes;
        } else {
            st.file_partial += bytes;
        }
    });
    st
}
