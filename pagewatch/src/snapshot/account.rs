//! smaps-exact accounting of one page at a time, the way
//! fs/proc/task_mmu.c (smaps_account, smaps_page_accumulate,
//! smaps_hugetlb_range) does it, from what pagemap and /proc/kpage* expose.
//!
//! How each smaps field is reproduced:
//! - Rss counts present pages that the kernel's `vm_normal_page()` would
//!   return: pages with kpageflags MMAP set and ZERO_PAGE clear (the zero
//!   page, the huge zero page and PFN mappings such as `[vvar]` are not
//!   counted by smaps either). Hugetlb pages are not in Rss.
//! - Pss is accumulated in `(page_size() << PSS_SHIFT) / mapcount` units with
//!   PSS_SHIFT = 12 and shifted down only when printed, so per-VMA and
//!   rollup values round exactly like the kernel's. The mapcount is 1 for
//!   pages pagemap marks exclusive (bit 56, which the kernel sets when the
//!   precise page mapcount is 1) and kpagecount otherwise. On kernels with
//!   CONFIG_NO_PAGE_MAPCOUNT (6.15+ option) kpagecount is the folio's
//!   *average* mapcount, which is also what smaps divides by there.
//! - Private vs Shared: private when pagemap says exclusive.
//! - Dirty: the kernel uses `pte_dirty || folio_test_dirty`; the PTE dirty
//!   bit is not exported. kpageflags DIRTY gives the folio flag; an
//!   anonymous swap-backed page outside the swap cache always has a dirty
//!   PTE (it was created by a write fault or COW, and migration/KSM move the
//!   PTE bit into the folio flag), so it is counted dirty. Known gap: an anon
//!   page swapped in by a read fault is PTE-clean until written and still in
//!   the swap cache, so it reads clean here as in smaps unless it was
//!   written after a swap cache drop (rare; no swap is configured here).
//!   Before 6.10, kpageflags of a large folio's tail pages lack the folio's
//!   SWAPBACKED/DIRTY/LRU bits (6.10 reads them from the folio): an
//!   anonymous tail without LRU is taken as swap-backed, like its head.
//! - AnonHugePages / ShmemPmdMapped / FilePmdMapped: PMD-mapped folios, as
//!   reported by the PAGEMAP_SCAN ioctl's PAGE_IS_HUGE category.
//! - Private_Hugetlb / Shared_Hugetlb: per page of a hugetlb folio (HUGE),
//!   private when pagemap says exclusive (`!folio_maybe_mapped_shared`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::flags::{PagemapEntry, has, kpf};

/// PSS fixed-point shift used by the kernel (fs/proc/task_mmu.c).
pub const PSS_SHIFT: u32 = 12;
pub use crate::kernel::page_size;

/// The kpageflags bits [`MemStats::add_n`] reads: pages differing only in
/// other bits (referenced, active, idle, ...) count alike.
pub const ACCOUNTED_FLAGS: u64 = (1 << kpf::OFFLINE)
    | (1 << kpf::ZERO_PAGE)
    | (1 << kpf::HUGE)
    | (1 << kpf::MMAP)
    | (1 << kpf::ANON)
    | (1 << kpf::SWAPBACKED)
    | (1 << kpf::KSM)
    | (1 << kpf::COMPOUND_TAIL)
    | (1 << kpf::LRU)
    | (1 << kpf::DIRTY)
    | (1 << kpf::SWAPCACHE);

/// What is known about one mapped page.
#[derive(Debug, Clone, Copy)]
pub struct PageFacts {
    /// Raw pagemap entry.
    pub pm: u64,
    /// kpageflags word (0 when not readable).
    pub flags: u64,
    /// Map count used for PSS (1 for exclusive pages).
    pub mapcount: u64,
    /// Inside a PMD mapping (PAGEMAP_SCAN PAGE_IS_HUGE).
    pub pmd_mapped: bool,
}

/// Counters in bytes (Pss fields in `bytes << PSS_SHIFT`), like the
/// kernel's `struct mem_size_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemStats {
    /// Resident bytes (smaps Rss).
    pub rss: u64,
    /// Raw PSS, `bytes << PSS_SHIFT` (see [`MemStats::pss_kb`]).
    pub pss_raw: u64,
    /// Raw PSS of anonymous pages.
    pub pss_anon_raw: u64,
    /// Raw PSS of file pages.
    pub pss_file_raw: u64,
    /// Raw PSS of shmem pages.
    pub pss_shmem_raw: u64,
    /// Raw PSS of dirty pages.
    pub pss_dirty_raw: u64,
    /// Bytes mapped only here (USS).
    pub uss: u64,
    /// smaps Shared_Clean.
    pub shared_clean: u64,
    /// smaps Shared_Dirty.
    pub shared_dirty: u64,
    /// smaps Private_Clean.
    pub private_clean: u64,
    /// smaps Private_Dirty.
    pub private_dirty: u64,
    /// smaps Anonymous.
    pub anonymous: u64,
    /// Resident file-backed bytes (not shmem).
    pub file: u64,
    /// Resident shmem / shared anonymous bytes.
    pub shmem: u64,
    /// smaps KSM.
    pub ksm: u64,
    /// smaps AnonHugePages.
    pub anon_huge: u64,
    /// smaps ShmemPmdMapped.
    pub shmem_pmd: u64,
    /// smaps FilePmdMapped.
    pub file_pmd: u64,
    /// smaps Swap.
    pub swap: u64,
    /// smaps Private_Hugetlb.
    pub private_hugetlb: u64,
    /// smaps Shared_Hugetlb.
    pub shared_hugetlb: u64,
    /// Pages mapping the zero page or huge zero page (not in Rss).
    pub zero_pages: u64,
    /// Soft-dirty pages (pagemap bit 55).
    pub soft_dirty_pages: u64,
    /// Pages pagemap marks exclusive.
    pub exclusive_pages: u64,
    /// Pages whose kpageflags say OFFLINE.
    pub offline_pages: u64,
    /// Pages present in pagemap (Rss when PFNs are hidden).
    pub present_pages: u64,
    /// Swapped pages by swap type (device index in /proc/swaps order).
    pub swap_by_type: BTreeMap<u8, u64>,
}

impl MemStats {
    /// Pss in kB exactly as smaps prints it.
    pub fn pss_kb(&self) -> u64 {
        self.pss_raw >> (PSS_SHIFT + 10)
    }

    /// Add one page. `pfns_visible` is false when kpageflags could not be
    /// read (then only pagemap facts are counted, see the module docs).
    pub fn add(&mut self, p: &PageFacts, pfns_visible: bool) {
        self.add_n(p, 1, pfns_visible);
    }

    /// Add `n` pages with identical facts (e.g. the 512 pages of a THP).
    pub fn add_n(&mut self, p: &PageFacts, n: u64, pfns_visible: bool) {
        let bytes = page_size() * n;
        let e = PagemapEntry(p.pm);
        if e.soft_dirty() {
            self.soft_dirty_pages += n;
        }
        // smaps counts swap files' entries only: a page caught
        // mid-migration (a non-swap entry pagemap also marks swapped) is
        // neither swap nor, its page unread, resident here.
        if e.in_swap_file() {
            self.swap += bytes;
            *self
                .swap_by_type
                .entry(e.swap_type().unwrap_or(0))
                .or_default() += n;
            return;
        }
        if !e.present() {
            return;
        }
        self.present_pages += n;
        if e.exclusive() {
            self.exclusive_pages += n;
        }
        if !pfns_visible {
            self.rss += bytes;
            if e.file() {
                self.file += bytes;
            } else {
                self.anonymous += bytes;
            }
            if e.exclusive() {
                self.uss += bytes;
            }
            if p.pmd_mapped && !e.file() {
                self.anon_huge += bytes;
            }
            return;
        }
        let f = p.flags;
        if has(f, kpf::OFFLINE) {
            self.offline_pages += n;
        }
        if has(f, kpf::ZERO_PAGE) {
            self.zero_pages += n;
            return;
        }
        if has(f, kpf::HUGE) {
            if e.exclusive() {
                self.private_hugetlb += bytes;
            } else {
                self.shared_hugetlb += bytes;
            }
            return;
        }
        if !has(f, kpf::MMAP) {
            return;
        }
        let anon = has(f, kpf::ANON);
        let swapbacked = has(f, kpf::SWAPBACKED);
        self.rss += bytes;
        if anon {
            self.anonymous += bytes;
        } else if swapbacked {
            self.shmem += bytes;
        } else {
            self.file += bytes;
        }
        if has(f, kpf::KSM) {
            self.ksm += bytes;
        }
        if p.pmd_mapped {
            if anon {
                self.anon_huge += bytes;
            } else if swapbacked {
                self.shmem_pmd += bytes;
            } else {
                self.file_pmd += bytes;
            }
        }
        let private = e.exclusive();
        let mapcount = if private { 1 } else { p.mapcount.max(1) };
        let mut pss = page_size() << PSS_SHIFT;
        if mapcount >= 2 {
            pss /= mapcount;
        }
        if mapcount == 1 {
            self.uss += bytes;
        }
        self.pss_raw += pss * n;
        if anon {
            self.pss_anon_raw += pss * n;
        } else if swapbacked {
            self.pss_shmem_raw += pss * n;
        } else {
            self.pss_file_raw += pss * n;
        }
        // Before 6.10 a tail page's kpageflags are its own, without the
        // folio's (head-only) SWAPBACKED, DIRTY or LRU bits: an anonymous
        // tail off the LRU then counts as its swap-backed folio does.
        let folio_swapbacked = swapbacked || (has(f, kpf::COMPOUND_TAIL) && !has(f, kpf::LRU));
        let dirty = has(f, kpf::DIRTY)
            || (anon && folio_swapbacked && !has(f, kpf::SWAPCACHE) && !has(f, kpf::KSM));
        match (dirty, private) {
            (true, true) => self.private_dirty += bytes,
            (true, false) => self.shared_dirty += bytes,
            (false, true) => self.private_clean += bytes,
            (false, false) => self.shared_clean += bytes,
        }
        if dirty {
            self.pss_dirty_raw += pss * n;
        }
    }

    /// Add another set of counters (rollup).
    pub fn merge(&mut self, o: &MemStats) {
        self.rss += o.rss;
        self.pss_raw += o.pss_raw;
        self.pss_anon_raw += o.pss_anon_raw;
        self.pss_file_raw += o.pss_file_raw;
        self.pss_shmem_raw += o.pss_shmem_raw;
        self.pss_dirty_raw += o.pss_dirty_raw;
        self.uss += o.uss;
        self.shared_clean += o.shared_clean;
        self.shared_dirty += o.shared_dirty;
        self.private_clean += o.private_clean;
        self.private_dirty += o.private_dirty;
        self.anonymous += o.anonymous;
        self.file += o.file;
        self.shmem += o.shmem;
        self.ksm += o.ksm;
        self.anon_huge += o.anon_huge;
        self.shmem_pmd += o.shmem_pmd;
        self.file_pmd += o.file_pmd;
        self.swap += o.swap;
        self.private_hugetlb += o.private_hugetlb;
        self.shared_hugetlb += o.shared_hugetlb;
        self.zero_pages += o.zero_pages;
        self.soft_dirty_pages += o.soft_dirty_pages;
        self.exclusive_pages += o.exclusive_pages;
        self.offline_pages += o.offline_pages;
        self.present_pages += o.present_pages;
        for (k, v) in &o.swap_by_type {
            *self.swap_by_type.entry(*k).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::flags::{PM_EXCLUSIVE, PM_PRESENT};

    fn page(pm: u64, bits: &[u32], mapcount: u64) -> PageFacts {
        PageFacts {
            pm,
            flags: bits.iter().fold(0, |a, b| a | (1 << b)),
            mapcount,
            pmd_mapped: false,
        }
    }

    #[test]
    fn pss_rounds_like_the_kernel() {
        // Three pages each mapped three times: 3 * ((4096 << 12) / 3) is one
        // unit short of 4 kB, and smaps prints 3, so must we.
        let mut s = MemStats::default();
        for _ in 0..3 {
            s.add(&page(PM_PRESENT | 7, &[kpf::MMAP, 5], 3), true);
        }
        assert_eq!(s.pss_kb(), 3);
        assert_eq!(s.shared_clean, 3 * 4096);
        assert_eq!(s.uss, 0);
        // Private anon page: dirty by the anon rule.
        let mut a = MemStats::default();
        a.add(
            &page(
                PM_PRESENT | PM_EXCLUSIVE | 9,
                &[kpf::MMAP, kpf::ANON, kpf::SWAPBACKED],
                0,
            ),
            true,
        );
        assert_eq!((a.private_dirty, a.anonymous, a.pss_kb()), (4096, 4096, 4));
        // The zero page is not resident.
        let mut z = MemStats::default();
        z.add(&page(PM_PRESENT | 1, &[kpf::ZERO_PAGE], 0), true);
        assert_eq!((z.rss, z.zero_pages), (0, 1));
    }

    #[test]
    fn only_the_accounted_flags_change_the_counts() {
        let pms = [PM_PRESENT | 5, PM_PRESENT | PM_EXCLUSIVE | 5];
        for pm in pms {
            for mapcount in [1, 3] {
                // Every subset of the accounted bits, with and without all
                // the other bits set.
                let bits: Vec<u32> = (0..64).filter(|b| ACCOUNTED_FLAGS >> b & 1 == 1).collect();
                for subset in 0..1u64 << bits.len() {
                    let f = bits
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| subset >> i & 1 == 1)
                        .fold(0u64, |a, (_, b)| a | (1 << b));
                    let count = |flags| {
                        let mut s = MemStats::default();
                        let p = PageFacts {
                            pm,
                            flags,
                            mapcount,
                            pmd_mapped: false,
                        };
                        s.add(&p, true);
                        s
                    };
                    assert_eq!(count(f), count(f | !ACCOUNTED_FLAGS), "flags {f:#x}");
                }
            }
        }
    }

    #[test]
    fn adding_a_run_equals_adding_each_page() {
        let p = page(PM_PRESENT | 3, &[kpf::MMAP, kpf::DIRTY], 2);
        let mut one = MemStats::default();
        for _ in 0..7 {
            one.add(&p, true);
        }
        let mut run = MemStats::default();
        run.add_n(&p, 7, true);
        assert_eq!(one, run);
    }
}
