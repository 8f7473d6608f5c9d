//! Compact columnar per-page state of a set of processes, for the
//! correlator: what each present or swapped page of each process was at
//! snapshot time, and the PFN -> (pid, VMA, address) map.
//!
//! The state is kept per process ([`ProcessTable`]) and a snapshot
//! ([`PageTable`]) is the processes' tables in pid order, each behind an
//! `Arc`: a process that cannot have changed since the last snapshot is
//! carried into the next one by cloning the `Arc`, at no copy, and the
//! correlator's diff skips a pair that is the same table.
//!
//! Per page kept between snapshots: at most 16 bytes.
//! - `frame` (8 bytes): bits 0-39 the PFN (or swap type|offset<<5), bits
//!   40-46 the pagemap flag bits 55-58 and 61-63, bit 47 PMD-mapped
//!   (PAGEMAP_SCAN's PAGE_IS_HUGE), bits 48-63 the mapcount (saturating at
//!   65535). 40 bits of PFN cover 4 PiB of RAM; swap
//!   offsets past 2^35 pages (128 TiB) are truncated.
//! - `flags_idx`, `memcg_idx` (2 bytes each): indices into small per-process
//!   tables of the distinct kpageflags words and memcg inodes seen (no
//!   `memcg_idx` when no page has a memcg, as in the session, which does
//!   not read kpagecgroup).
//! - `by_pfn` (4 bytes, built on the first owner lookup only): the
//!   process's page indices sorted by PFN.
//!
//! Virtual addresses are not stored per page: `runs` of consecutive pages
//! (20 bytes per run, typically a few per VMA) give them. What the
//! correlator reports per process at each snapshot (counters, PMD-mapped
//! pages per VMA) is counted once, when the table is built
//! ([`PageTotals`]), so a carried process costs nothing per interval.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use serde::Serialize;

use super::account::page_size;
use super::{
    flags::{PM_FILE, PM_PFN_MASK, PM_PRESENT, PM_SWAP, has, kpf},
    scan::{ProcessPages, ScanInfo, VmaPages},
};

const FRAME_BITS: u32 = 40;
const FRAME_MASK: u64 = (1 << FRAME_BITS) - 1;
const PMD_BIT: u64 = 1 << 47;
const MAPCOUNT_SHIFT: u32 = 48;
const MAPCOUNT_MAX: u64 = (1 << (64 - MAPCOUNT_SHIFT)) - 1;
/// The pagemap bits kept, in order: 55, 56, 57, 58, 61, 62, 63.
const PM_KEPT: [u32; 7] = [55, 56, 57, 58, 61, 62, 63];
/// Pages of a 2 MiB frame: hugetlb runs do not cross one (see
/// [`PageTotals::hugetlb`]).
const PMD_PAGES: u64 = 512;

/// A mapping of one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmaMeta {
    /// Owning process id.
    pub pid: u32,
    /// First address.
    pub start: u64,
    /// End address.
    pub end: u64,
    /// Permissions.
    pub perms: String,
    /// File or pseudo name.
    pub name: String,
}

/// Consecutive pages of one VMA stored consecutively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    va: u64,
    first: u32,
    len: u32,
    vma: u32,
}

/// Who maps a PFN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// Process id.
    pub pid: u32,
    /// Start of the VMA.
    pub vma_start: u64,
    /// Virtual address.
    pub va: u64,
}

/// What a process's pages add up to, counted when its table is built.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageTotals {
    /// Present pages.
    pub present: u64,
    /// Present pages pagemap does not mark file-backed.
    pub anon: u64,
    /// Present file-backed (and shmem) pages.
    pub file: u64,
    /// Swapped pages.
    pub swapped: u64,
    /// Present pages of large folios (kpageflags THP).
    pub thp: u64,
    /// Present hugetlb pages as (first PFN, pages) runs of consecutive
    /// PFNs inside one 2 MiB frame (so each lies on one NUMA node).
    pub hugetlb: Vec<(u64, u64)>,
    /// (VMA index, pages mapped by a PMD that are not hugetlb), for the
    /// VMAs that have any.
    pub pmd_thp: Vec<(u32, u64)>,
}

/// The pages of one process at one snapshot.
#[derive(Debug, Default)]
pub struct ProcessTable {
    /// Process id.
    pub pid: u32,
    /// The mappings, in address order.
    pub vmas: Vec<VmaMeta>,
    runs: Vec<Run>,
    frame: Vec<u64>,
    flags_idx: Vec<u16>,
    memcg_idx: Vec<u16>,
    flag_values: Vec<u64>,
    memcg_values: Vec<u64>,
    /// Page indices with a PFN, sorted by PFN: built on the first owner
    /// lookup (most intervals resolve no PFN).
    by_pfn: OnceLock<Box<[u32]>>,
    totals: PageTotals,
}

/// Interns `v` in `values` through `map`, with a fast path for a repeat
/// of the last value (consecutive pages mostly share their flags).
#[derive(Debug, Default)]
struct Interner {
    map: HashMap<u64, u16>,
    last: Option<(u64, u16)>,
}

impl Interner {
    fn get(&mut self, values: &mut Vec<u64>, v: u64) -> u16 {
        if let Some((lv, li)) = self.last
            && lv == v
        {
            return li;
        }
        let i = *self.map.entry(v).or_insert_with(|| {
            values.push(v);
            (values.len() - 1).min(usize::from(u16::MAX)) as u16
        });
        self.last = Some((v, i));
        i
    }
}

/// Builds a [`ProcessTable`] from a scan's batches as they come (see
/// [`crate::snapshot::scan::scan_process_with`]), so no scan of the whole
/// process is ever kept.
#[derive(Debug)]
pub struct ProcessTableBuilder {
    t: ProcessTable,
    flags: Interner,
    memcgs: Interner,
}

impl ProcessTableBuilder {
    /// A table for `pid`, with room for `pages` pages (a hint).
    pub fn new(pid: u32, pages: usize) -> Self {
        let mut t = ProcessTable {
            pid,
            ..ProcessTable::default()
        };
        t.frame.reserve(pages);
        t.flags_idx.reserve(pages);
        t.memcg_idx.reserve(pages);
        Self {
            t,
            flags: Interner::default(),
            memcgs: Interner::default(),
        }
    }

    /// Adds one batch of VMA number `vi` (batches come in address order).
    pub fn add(&mut self, vi: usize, batch: &VmaPages) {
        let t = &mut self.t;
        let vma = vi as u32;
        let page = page_size();
        for s in batch.segments() {
            let va0 = batch.vma.start + u64::from(s.idx) * page;
            let first = t.frame.len() as u32;
            match t.runs.last_mut() {
                Some(r) if r.vma == vma && r.va + u64::from(r.len) * page == va0 => {
                    r.len += s.pages
                }
                _ => t.runs.push(Run {
                    va: va0,
                    first,
                    len: s.pages,
                    vma,
                }),
            }
            let bits = PM_KEPT
                .iter()
                .enumerate()
                .fold(0u64, |a, (j, b)| a | (((s.pm >> b) & 1) << j));
            let high = (bits << FRAME_BITS)
                | if s.pmd { PMD_BIT } else { 0 }
                | (u64::from(s.mapcount).min(MAPCOUNT_MAX) << MAPCOUNT_SHIFT);
            let fi = self.flags.get(&mut t.flag_values, s.flags);
            let ci = self.memcgs.get(&mut t.memcg_values, s.cgroup);
            let pfn = s.pm & PM_PFN_MASK & FRAME_MASK;
            // Only the tails of a folded PMD block come as runs (of present
            // pages with consecutive PFNs).
            t.frame
                .extend((0..u64::from(s.pages)).map(|i| ((pfn + i) & FRAME_MASK) | high));
            t.flags_idx
                .extend(std::iter::repeat_n(fi, s.pages as usize));
            t.memcg_idx
                .extend(std::iter::repeat_n(ci, s.pages as usize));
        }
    }

    /// The table, with the VMAs `info` says the scan covered (pages of a
    /// VMA read before the process went are dropped) and its totals.
    pub fn finish(mut self, info: &ScanInfo) -> ProcessTable {
        let t = &mut self.t;
        let nvmas = info.vmas.len() as u32;
        if let Some(cut) = t.runs.iter().position(|r| r.vma >= nvmas) {
            let pages = t.runs[cut].first as usize;
            t.runs.truncate(cut);
            t.frame.truncate(pages);
            t.flags_idx.truncate(pages);
            t.memcg_idx.truncate(pages);
        }
        t.vmas = info
            .vmas
            .iter()
            .map(|v| VmaMeta {
                pid: info.pid,
                start: v.start,
                end: v.end,
                perms: v.perms.clone(),
                name: v.name.clone(),
            })
            .collect();
        if t.memcg_values.iter().all(|&v| v == 0) {
            // No memcg known (the session reads no kpagecgroup): no column.
            t.memcg_idx = Vec::new();
        }
        t.frame.shrink_to_fit();
        t.flags_idx.shrink_to_fit();
        t.memcg_idx.shrink_to_fit();
        t.runs.shrink_to_fit();
        t.totals = t.count();
        self.t
    }
}

impl ProcessTable {
    /// Number of pages.
    pub fn len(&self) -> usize {
        self.frame.len()
    }
    /// Whether no page is stored.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
    /// What the pages add up to.
    pub fn totals(&self) -> &PageTotals {
        &self.totals
    }
    /// Raw pagemap entry of page `i`, rebuilt (PFN truncated to 40 bits).
    pub fn pagemap(&self, i: usize) -> u64 {
        let f = self.frame[i];
        let bits = (f >> FRAME_BITS) & 0x7f;
        PM_KEPT
            .iter()
            .enumerate()
            .fold(f & FRAME_MASK, |a, (j, b)| a | (((bits >> j) & 1) << b))
    }
    /// PFN of page `i` if present and visible.
    pub fn pfn(&self, i: usize) -> Option<u64> {
        let pm = self.pagemap(i);
        (pm >> 63 == 1 && pm & FRAME_MASK != 0).then_some(pm & FRAME_MASK)
    }
    /// Whether page `i` was mapped by a PMD (part of a PMD-mapped THP).
    pub fn pmd_mapped(&self, i: usize) -> bool {
        self.frame[i] & PMD_BIT != 0
    }
    /// kpageflags of page `i`.
    pub fn flags(&self, i: usize) -> u64 {
        self.flag_values
            .get(usize::from(self.flags_idx[i]))
            .copied()
            .unwrap_or(0)
    }
    /// Mapcount of page `i` (1 for exclusive pages).
    pub fn mapcount(&self, i: usize) -> u64 {
        self.frame[i] >> MAPCOUNT_SHIFT
    }
    /// Memory cgroup inode of page `i` (0: unknown).
    pub fn memcg(&self, i: usize) -> u64 {
        self.memcg_idx
            .get(i)
            .and_then(|&m| self.memcg_values.get(usize::from(m)))
            .copied()
            .unwrap_or(0)
    }
    /// Every page as (VMA index, virtual address, page index), in address
    /// order.
    pub fn pages(&self) -> impl Iterator<Item = (u32, u64, usize)> + '_ {
        self.runs.iter().flat_map(|r| {
            (0..r.len).map(move |k| {
                (
                    r.vma,
                    r.va + u64::from(k) * page_size(),
                    (r.first + k) as usize,
                )
            })
        })
    }
    /// Owner (pid, VMA, address) of page `i`.
    pub fn owner(&self, i: usize) -> Owner {
        let r = &self.runs[self.runs.partition_point(|r| r.first as usize <= i) - 1];
        Owner {
            pid: self.pid,
            vma_start: self.vmas[r.vma as usize].start,
            va: r.va + (i - r.first as usize) as u64 * page_size(),
        }
    }
    /// Every mapping of `pfn` in this process.
    pub fn owners(&self, pfn: u64) -> impl Iterator<Item = Owner> + '_ {
        let by_pfn = self.by_pfn.get_or_init(|| {
            let mut idx: Vec<u32> = (0..self.frame.len() as u32)
                .filter(|&i| self.pfn(i as usize).is_some())
                .collect();
            idx.sort_unstable_by_key(|&i| (self.frame[i as usize] & FRAME_MASK, i));
            idx.into_boxed_slice()
        });
        let lo = by_pfn.partition_point(|&i| self.frame[i as usize] & FRAME_MASK < pfn);
        by_pfn[lo..]
            .iter()
            .take_while(move |&&i| self.frame[i as usize] & FRAME_MASK == pfn)
            .map(|&i| self.owner(i as usize))
    }
    /// The VMA starting at `start`.
    pub fn vma(&self, start: u64) -> Option<&VmaMeta> {
        let i = self.vmas.partition_point(|v| v.start < start);
        self.vmas.get(i).filter(|v| v.start == start)
    }

    fn count(&self) -> PageTotals {
        let mut t = PageTotals::default();
        for r in &self.runs {
            let mut pmd_thp = 0;
            for i in r.first as usize..(r.first + r.len) as usize {
                let pm = self.pagemap(i);
                if pm & PM_SWAP != 0 {
                    t.swapped += 1;
                    continue;
                }
                if pm & PM_PRESENT == 0 {
                    continue;
                }
                let f = self.flags(i);
                t.present += 1;
                if pm & PM_FILE != 0 {
                    t.file += 1;
                } else {
                    t.anon += 1;
                }
                if has(f, kpf::THP) {
                    t.thp += 1;
                }
                if has(f, kpf::HUGE) {
                    let pfn = self.pfn(i).unwrap_or(0);
                    match t.hugetlb.last_mut() {
                        Some((p, n)) if *p + *n == pfn && !pfn.is_multiple_of(PMD_PAGES) => *n += 1,
                        _ => t.hugetlb.push((pfn, 1)),
                    }
                } else if self.pmd_mapped(i) {
                    pmd_thp += 1;
                }
            }
            if pmd_thp > 0 {
                match t.pmd_thp.last_mut() {
                    Some((v, n)) if *v == r.vma => *n += pmd_thp,
                    _ => t.pmd_thp.push((r.vma, pmd_thp)),
                }
            }
        }
        t
    }
}

/// Columnar per-page snapshot of processes: their tables in pid order.
#[derive(Debug, Clone, Default)]
pub struct PageTable {
    procs: Vec<Arc<ProcessTable>>,
}

impl PageTable {
    /// A snapshot of these processes' tables (sorted by pid here).
    pub fn from_processes(mut procs: Vec<Arc<ProcessTable>>) -> Self {
        procs.sort_by_key(|p| p.pid);
        Self { procs }
    }

    /// Build from scanned processes.
    pub fn from_scans(procs: &[ProcessPages]) -> Self {
        Self::from_processes(
            procs
                .iter()
                .map(|p| {
                    let pages = p.vmas.iter().map(|v| v.pm.len()).sum();
                    let mut b = ProcessTableBuilder::new(p.info.pid, pages);
                    for (vi, v) in p.vmas.iter().enumerate() {
                        b.add(vi, v);
                    }
                    Arc::new(b.finish(&p.info))
                })
                .collect(),
        )
    }

    /// The processes' tables, in pid order.
    pub fn processes(&self) -> &[Arc<ProcessTable>] {
        &self.procs
    }
    /// The table of `pid`.
    pub fn process(&self, pid: u32) -> Option<&Arc<ProcessTable>> {
        self.procs
            .binary_search_by_key(&pid, |p| p.pid)
            .ok()
            .map(|i| &self.procs[i])
    }
    /// The VMA of `pid` starting at `start`.
    pub fn vma(&self, pid: u32, start: u64) -> Option<&VmaMeta> {
        self.process(pid)?.vma(start)
    }
    /// Number of pages.
    pub fn len(&self) -> usize {
        self.procs.iter().map(|p| p.len()).sum()
    }
    /// Whether no page is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of per-page state kept (the 16-byte target), PFN index included.
    pub fn bytes_per_page(&self) -> usize {
        8 + 2 + 2 + 4
    }
    /// Every mapping of `pfn` among the snapshotted processes.
    pub fn owners(&self, pfn: u64) -> Vec<Owner> {
        self.procs.iter().flat_map(|p| p.owners(pfn)).collect()
    }
}

/// A table of process `pid` with one anonymous VMA at `start` whose pages
/// `idx` have pagemap entries `pm`, kpageflags `flags`, PMD-mapped bits
/// `pmd`, mapcount 1 and no memcg (for unit tests).
#[cfg(test)]
pub(crate) fn test_table(
    pid: u32,
    start: u64,
    idx: Vec<u32>,
    pm: Vec<u64>,
    flags: Vec<u64>,
    pmd: Vec<bool>,
) -> PageTable {
    use super::maps::{Vma, VmaSource};
    let n = pm.len();
    let pages = u64::from(idx.iter().max().map_or(0, |m| m + 1));
    let vma = Vma {
        start,
        end: start + pages.max(512) * page_size(),
        perms: "rw-p".into(),
        offset: 0,
        dev: "00:00".into(),
        inode: 0,
        name: String::new(),
    };
    let v = VmaPages {
        vma: vma.clone(),
        idx,
        pm,
        flags,
        mapcount: vec![1; n],
        cgroup: vec![0; n],
        pmd,
        folded: vec![false; n],
    };
    PageTable::from_scans(&[ProcessPages {
        info: ScanInfo {
            pid,
            comm: "x".into(),
            vma_source: VmaSource::MapsText,
            vmas: vec![vma],
            pfns_visible: true,
            partial: false,
            pmd_known: true,
            notes: vec![],
        },
        vmas: vec![v],
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{
        flags::{PM_EXCLUSIVE, PM_SOFT_DIRTY},
        maps::{Vma, VmaSource},
    };

    #[test]
    fn round_trips_pages_and_finds_owners() {
        let vma = Vma {
            start: 0x1000_0000,
            end: 0x1001_0000,
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            name: String::new(),
        };
        let pm = vec![
            PM_PRESENT | PM_EXCLUSIVE | 77,
            PM_PRESENT | PM_SOFT_DIRTY | 5,
            PM_PRESENT | 77,
        ];
        let v = VmaPages {
            vma,
            idx: vec![0, 1, 9],
            pm: pm.clone(),
            flags: vec![1 << 12, 1 << 12, 1 << 5],
            mapcount: vec![1, 3, 2],
            cgroup: vec![42, 42, 43],
            pmd: vec![false, true, false],
            folded: vec![false; 3],
        };
        let p = ProcessPages {
            info: ScanInfo {
                pid: 7,
                comm: "x".into(),
                vma_source: VmaSource::MapsText,
                vmas: vec![v.vma.clone()],
                pfns_visible: true,
                partial: false,
                pmd_known: true,
                notes: vec![],
            },
            vmas: vec![v],
        };
        let table = PageTable::from_scans(&[p]);
        assert_eq!(table.len(), 3);
        let t = &table.processes()[0];
        for (i, e) in pm.iter().enumerate() {
            assert_eq!(t.pagemap(i), *e);
        }
        assert_eq!((t.mapcount(1), t.flags(2), t.memcg(2)), (3, 1 << 5, 43));
        assert_eq!((t.pmd_mapped(0), t.pmd_mapped(1)), (false, true));
        let o = table.owners(77);
        assert_eq!(o.len(), 2);
        assert_eq!(
            o.iter().map(|o| o.va).collect::<Vec<_>>(),
            vec![0x1000_0000, 0x1000_9000]
        );
        assert!(table.owners(6).is_empty());
        assert_eq!(table.vma(7, 0x1000_0000).map(|v| v.end), Some(0x1001_0000));
    }

    /// A scan batch of one VMA at `start` of `pages` pages.
    fn batch(start: u64, pages: u64) -> VmaPages {
        VmaPages::empty(Vma {
            start,
            end: start + pages * page_size(),
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            name: String::new(),
        })
    }

    fn info(pid: u32, vmas: Vec<Vma>) -> ScanInfo {
        ScanInfo {
            pid,
            comm: "x".into(),
            vma_source: VmaSource::MapsText,
            vmas,
            pfns_visible: true,
            partial: false,
            pmd_known: true,
            notes: vec![],
        }
    }

    #[test]
    fn folded_batches_build_page_by_page_tables_with_their_totals() {
        const THP: u64 = 1 << kpf::THP | 1 << kpf::COMPOUND_HEAD;
        // A folded PMD block (head + 511 tails) at page 0, then a swapped
        // page, in one batch; a second VMA in a second batch with a 2 MiB
        // hugetlb page PTE by PTE; a third VMA cut by the process exiting.
        let mut a = batch(0x4000_0000, 1024);
        a.idx = vec![0, 600];
        a.pm = vec![PM_PRESENT | PM_EXCLUSIVE | 0x200, PM_SWAP | (9 << 5)];
        a.flags = vec![THP, 0];
        a.mapcount = vec![1, 1];
        a.cgroup = vec![0, 0];
        a.pmd = vec![true, false];
        a.folded = vec![true, false];
        let mut h = batch(0x8000_0000, 512);
        h.idx = (0..512).collect();
        h.pm = (0..512)
            .map(|i| PM_PRESENT | PM_FILE | (0x400 + i))
            .collect();
        h.flags = vec![1 << kpf::HUGE; 512];
        h.mapcount = vec![1; 512];
        h.cgroup = vec![0; 512];
        h.pmd = vec![true; 512];
        h.folded = vec![false; 512];
        let mut gone = batch(0x9000_0000, 1);
        gone.idx = vec![0];
        gone.pm = vec![PM_PRESENT | 0x999];
        gone.flags = vec![0];
        gone.mapcount = vec![1];
        gone.cgroup = vec![0];
        gone.pmd = vec![false];
        gone.folded = vec![false];
        let mut b = ProcessTableBuilder::new(5, 0);
        b.add(0, &a);
        b.add(1, &h);
        b.add(2, &gone);
        let t = b.finish(&info(5, vec![a.vma.clone(), h.vma.clone()]));
        assert_eq!(t.len(), 512 + 1 + 512, "the exited VMA's page is dropped");
        assert_eq!(t.pagemap(1), PM_PRESENT | PM_EXCLUSIVE | 0x201);
        assert!(has(t.flags(1), kpf::COMPOUND_TAIL) && !has(t.flags(1), kpf::COMPOUND_HEAD));
        assert_eq!(t.owner(511).va, 0x4000_0000 + 511 * page_size());
        assert_eq!(t.owner(512).va, 0x4000_0000 + 600 * page_size());
        assert_eq!(t.owner(513).vma_start, 0x8000_0000);
        let pages: Vec<(u32, u64, usize)> = t.pages().collect();
        assert_eq!(pages[512], (0, 0x4000_0000 + 600 * page_size(), 512));
        assert_eq!(pages[513], (1, 0x8000_0000, 513));
        let totals = t.totals();
        assert_eq!(
            (
                totals.present,
                totals.anon,
                totals.file,
                totals.swapped,
                totals.thp
            ),
            (1024, 512, 512, 1, 512)
        );
        assert_eq!(totals.hugetlb, vec![(0x400, 512)]);
        assert_eq!(totals.pmd_thp, vec![(0, 512)], "hugetlb is not THP");
        let table = PageTable::from_processes(vec![Arc::new(t)]);
        assert_eq!(table.owners(0x205)[0].va, 0x4000_0000 + 5 * page_size());
        assert!(table.owners(0x999).is_empty());
    }
}
