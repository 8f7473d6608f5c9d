//! `snapshot --cont SIZE`: per process and VMA, the memory mapped in
//! naturally aligned, physically contiguous blocks of SIZE (a power of two
//! of at least a page), anonymous and file apart, like the kernel's
//! tools/mm/thpmaps `--cont`.
//!
//! A block counts when its virtual address is aligned to SIZE, every page
//! of it is present, the PFNs are consecutive from one aligned to SIZE,
//! and all pages are of one kind (anon by kpageflags ANON; file otherwise,
//! shmem included). Any pages count, 4 KiB pages that happen to be
//! contiguous too; `anon_thp`/`file_thp` are thpmaps' own figure (its
//! `*-cont-pmd-aligned` plus `*-cont-pte-aligned`): blocks of large-folio
//! pages (kpageflags THP) that hold no folio head past their first page.

use serde::Serialize;

use super::{
    flags::{has, kpf},
    scan::{ProcessPages, ScanInfo, VmaPages},
};

/// Contiguous memory of one VMA or process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContUsage {
    /// Anonymous bytes in contiguous blocks.
    pub anon: u64,
    /// File (and shmem) bytes in contiguous blocks.
    pub file: u64,
    /// Anonymous bytes in blocks inside one large folio (thpmaps' figure).
    pub anon_thp: u64,
    /// File bytes in blocks inside one large folio (thpmaps' figure).
    pub file_thp: u64,
}

/// One VMA with contiguous blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContVma {
    /// Start address (hex).
    pub start: String,
    /// End address (hex).
    pub end: String,
    /// Mapping name.
    pub name: String,
    /// Its contiguous memory.
    #[serde(flatten)]
    pub usage: ContUsage,
}

/// One process's contiguous memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContReport {
    /// Process.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Block size in bytes.
    pub size: u64,
    /// Totals.
    pub total: ContUsage,
    /// VMAs holding any block.
    pub vmas: Vec<ContVma>,
}

/// A block being followed.
#[derive(Debug, Clone, Copy)]
struct Open {
    next_vpn: u64,
    next_pfn: u64,
    file: bool,
    /// Every page so far in a large folio, no head after the first.
    thp: bool,
}

/// Accumulates one process's batches (in address order, VMA by VMA).
#[derive(Debug)]
pub struct ContBuilder {
    pages: u64,
    vmas: Vec<ContUsage>,
    open: Option<Open>,
    vma: usize,
}

impl ContBuilder {
    /// Blocks of `size` bytes (a power of two, at least 4096).
    pub fn new(size: u64) -> Self {
        ContBuilder {
            pages: size / 4096,
            vmas: Vec::new(),
            open: None,
            vma: usize::MAX,
        }
    }

    /// Adds a batch of VMA `vi`'s pages.
    pub fn add(&mut self, vi: usize, batch: &VmaPages) {
        if vi != self.vma {
            self.open = None;
            self.vma = vi;
        }
        if self.vmas.len() <= vi {
            self.vmas.resize(vi + 1, ContUsage::default());
        }
        let base = batch.vma.start / 4096;
        batch.for_each_segment(|s| {
            let Some(pfn) = s.pfn() else {
                self.open = None;
                return;
            };
            let file = !has(s.flags, kpf::ANON);
            let thp = has(s.flags, kpf::THP);
            let head = has(s.flags, kpf::COMPOUND_HEAD);
            for i in 0..u64::from(s.pages) {
                self.page(vi, base + u64::from(s.idx) + i, pfn + i, (file, thp, head));
            }
        });
    }

    #[inline]
    fn page(&mut self, vi: usize, vpn: u64, pfn: u64, (file, thp, head): (bool, bool, bool)) {
        let n = self.pages;
        let go_on = self
            .open
            .is_some_and(|o| o.next_vpn == vpn && o.next_pfn == pfn && o.file == file);
        if !go_on {
            self.open = (vpn.is_multiple_of(n) && pfn.is_multiple_of(n)).then_some(Open {
                next_vpn: vpn,
                next_pfn: pfn,
                file,
                thp: true,
            });
        }
        let Some(o) = self.open.as_mut() else { return };
        o.thp &= thp && (!head || vpn.is_multiple_of(n));
        o.next_vpn += 1;
        o.next_pfn += 1;
        if o.next_vpn.is_multiple_of(n) {
            let u = &mut self.vmas[vi];
            let bytes = n * 4096;
            let (all, in_folio) = if o.file {
                (&mut u.file, &mut u.file_thp)
            } else {
                (&mut u.anon, &mut u.anon_thp)
            };
            *all += bytes;
            if o.thp {
                *in_folio += bytes;
            }
            self.open = None;
        }
    }

    /// The report of a process scanned with every page kept.
    pub fn finish_pages(mut self, p: &ProcessPages) -> ContReport {
        for (vi, v) in p.vmas.iter().enumerate() {
            self.add(vi, v);
        }
        self.finish(&p.info)
    }

    /// The report, with the VMAs the scan read.
    pub fn finish(self, info: &ScanInfo) -> ContReport {
        let mut total = ContUsage::default();
        let mut vmas = Vec::new();
        for (v, u) in info.vmas.iter().zip(&self.vmas) {
            total.anon += u.anon;
            total.file += u.file;
            total.anon_thp += u.anon_thp;
            total.file_thp += u.file_thp;
            if u.anon + u.file > 0 {
                vmas.push(ContVma {
                    start: format!("{:x}", v.start),
                    end: format!("{:x}", v.end),
                    name: v.name.clone(),
                    usage: u.clone(),
                });
            }
        }
        ContReport {
            pid: info.pid,
            comm: info.comm.clone(),
            size: self.pages * 4096,
            total,
            vmas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(size: u64, pages: &[(u64, u64, bool)]) -> ContUsage {
        let mut b = ContBuilder::new(size);
        b.vmas.push(ContUsage::default());
        for &(vpn, pfn, file) in pages {
            // A large folio of 8 pages from PFN 96.
            let thp = (96..104).contains(&pfn);
            b.page(0, vpn, pfn, (file, thp, thp && pfn == 96));
        }
        b.vmas[0].clone()
    }

    #[test]
    fn only_aligned_contiguous_blocks_of_one_kind_count() {
        // 16 KiB blocks (4 pages).
        let good: Vec<_> = (0..4).map(|i| (8 + i, 100 + i, false)).collect();
        let u = run(16384, &good);
        assert_eq!((u.anon, u.anon_thp), (16384, 16384));
        // The folio and the 8 pages past it: contiguous, not thpmaps'.
        let across: Vec<_> = (0..16).map(|i| (16 + i, 96 + i, false)).collect();
        let u = run(65536, &across);
        assert_eq!((u.anon, u.anon_thp), (65536, 0));
        // Physically unaligned.
        let unaligned: Vec<_> = (0..4).map(|i| (8 + i, 101 + i, false)).collect();
        assert_eq!(run(16384, &unaligned), ContUsage::default());
        // Virtually unaligned.
        let vun: Vec<_> = (0..4).map(|i| (9 + i, 100 + i, false)).collect();
        assert_eq!(run(16384, &vun), ContUsage::default());
        // A gap in the PFNs, then a good block of file pages.
        let mut gap: Vec<_> = vec![(0, 4, true), (1, 5, true), (2, 9, true), (3, 7, true)];
        gap.extend((4..8).map(|i| (i, 8 + i, true)));
        assert_eq!(run(16384, &gap).file, 16384);
        // Mixed kinds break a block.
        let mixed = vec![(0, 4, true), (1, 5, false), (2, 6, false), (3, 7, false)];
        assert_eq!(run(16384, &mixed), ContUsage::default());
        // Page-sized blocks: every page.
        assert_eq!(run(4096, &mixed).anon, 3 * 4096);
    }
}
