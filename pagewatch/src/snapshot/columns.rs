//! Compact columnar per-page state of a set of processes, for the
//! correlator: what each present or swapped page of each process was at
//! snapshot time, and the PFN -> (pid, VMA, address) map.
//!
//! Per page kept between snapshots: 16 bytes.
//! - `frame` (8 bytes): bits 0-39 the PFN (or swap type|offset<<5), bits
//!   40-46 the pagemap flag bits 55-58 and 61-63, bit 47 PMD-mapped
//!   (PAGEMAP_SCAN's PAGE_IS_HUGE), bits 48-63 the mapcount (saturating at
//!   65535). 40 bits of PFN cover 4 PiB of RAM; swap
//!   offsets past 2^35 pages (128 TiB) are truncated.
//! - `flags_idx`, `memcg_idx` (2 bytes each): indices into small tables of
//!   the distinct kpageflags words and memcg inodes seen.
//! - `by_pfn` (4 bytes): page indices sorted by PFN, for owner lookups.
//!
//! Virtual addresses are not stored per page: `runs` of consecutive pages
//! (20 bytes per run, typically a few per VMA) give them.

use std::collections::HashMap;

use serde::Serialize;

use super::{flags::PM_PFN_MASK, scan::ProcessPages};

const FRAME_BITS: u32 = 40;
const FRAME_MASK: u64 = (1 << FRAME_BITS) - 1;
const PMD_BIT: u64 = 1 << 47;
const MAPCOUNT_SHIFT: u32 = 48;
const MAPCOUNT_MAX: u64 = (1 << (64 - MAPCOUNT_SHIFT)) - 1;
/// The pagemap bits kept, in order: 55, 56, 57, 58, 61, 62, 63.
const PM_KEPT: [u32; 7] = [55, 56, 57, 58, 61, 62, 63];

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
    /// Index into [`PageTable::vmas`].
    pub vma: u32,
    /// Virtual address.
    pub va: u64,
}

/// Columnar per-page snapshot of processes.
#[derive(Debug, Clone, Default)]
pub struct PageTable {
    /// The mappings, in process then address order.
    pub vmas: Vec<VmaMeta>,
    runs: Vec<Run>,
    frame: Vec<u64>,
    flags_idx: Vec<u16>,
    memcg_idx: Vec<u16>,
    flag_values: Vec<u64>,
    memcg_values: Vec<u64>,
    by_pfn: Vec<u32>,
}

fn intern(map: &mut HashMap<u64, u16>, values: &mut Vec<u64>, v: u64) -> u16 {
    *map.entry(v).or_insert_with(|| {
        values.push(v);
        (values.len() - 1).min(usize::from(u16::MAX)) as u16
    })
}

impl PageTable {
    /// Build from scanned processes.
    pub fn from_scans(procs: &[ProcessPages]) -> Self {
        let mut t = PageTable::default();
        let (mut fmap, mut cmap) = (HashMap::new(), HashMap::new());
        for p in procs {
            for v in &p.vmas {
                let vi = t.vmas.len() as u32;
                t.vmas.push(VmaMeta {
                    pid: p.info.pid,
                    start: v.vma.start,
                    end: v.vma.end,
                    perms: v.vma.perms.clone(),
                    name: v.vma.name.clone(),
                });
                for k in 0..v.pm.len() {
                    let i = t.frame.len() as u32;
                    let va = v.va(k);
                    match t.runs.last_mut() {
                        Some(r) if r.vma == vi && r.va + u64::from(r.len) * 4096 == va => {
                            r.len += 1
                        }
                        _ => t.runs.push(Run {
                            va,
                            first: i,
                            len: 1,
                            vma: vi,
                        }),
                    }
                    let pm = v.pm[k];
                    let bits = PM_KEPT
                        .iter()
                        .enumerate()
                        .fold(0u64, |a, (j, b)| a | (((pm >> b) & 1) << j));
                    let mc = u64::from(v.mapcount[k]).min(MAPCOUNT_MAX);
                    t.frame.push(
                        (pm & PM_PFN_MASK & FRAME_MASK)
                            | (bits << FRAME_BITS)
                            | if v.pmd[k] { PMD_BIT } else { 0 }
                            | (mc << MAPCOUNT_SHIFT),
                    );
                    t.flags_idx
                        .push(intern(&mut fmap, &mut t.flag_values, v.flags[k]));
                    t.memcg_idx
                        .push(intern(&mut cmap, &mut t.memcg_values, v.cgroup[k]));
                }
            }
        }
        let mut idx: Vec<u32> = (0..t.frame.len() as u32)
            .filter(|&i| t.pfn(i as usize).is_some())
            .collect();
        idx.sort_unstable_by_key(|&i| t.frame[i as usize] & FRAME_MASK);
        t.by_pfn = idx;
        t
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.frame.len()
    }
    /// Whether no page is stored.
    pub fn is_empty(&self) -> bool {
        self.frame.is_empty()
    }
    /// Bytes of per-page state kept (the 16-byte target).
    pub fn bytes_per_page(&self) -> usize {
        8 + 2 + 2 + 4
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
    /// Memory cgroup inode of page `i`.
    pub fn memcg(&self, i: usize) -> u64 {
        self.memcg_values
            .get(usize::from(self.memcg_idx[i]))
            .copied()
            .unwrap_or(0)
    }
    fn run_of(&self, i: usize) -> &Run {
        let r = self.runs.partition_point(|r| r.first as usize <= i) - 1;
        &self.runs[r]
    }
    /// Owner (pid, VMA, address) of page `i`.
    pub fn owner(&self, i: usize) -> Owner {
        let r = self.run_of(i);
        Owner {
            pid: self.vmas[r.vma as usize].pid,
            vma: r.vma,
            va: r.va + (i - r.first as usize) as u64 * 4096,
        }
    }
    /// Every mapping of `pfn` among the snapshotted processes.
    pub fn owners(&self, pfn: u64) -> Vec<Owner> {
        let lo = self
            .by_pfn
            .partition_point(|&i| self.frame[i as usize] & FRAME_MASK < pfn);
        self.by_pfn[lo..]
            .iter()
            .take_while(|&&i| self.frame[i as usize] & FRAME_MASK == pfn)
            .map(|&i| self.owner(i as usize))
            .collect()
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
    use super::{
        maps::{Vma, VmaSource},
        scan::{ScanInfo, VmaPages},
    };
    let n = pm.len();
    let pages = u64::from(idx.iter().max().map_or(0, |m| m + 1));
    let vma = Vma {
        start,
        end: start + pages.max(512) * 4096,
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
        flags::{PM_EXCLUSIVE, PM_PRESENT, PM_SOFT_DIRTY},
        maps::{Vma, VmaSource},
        scan::{ScanInfo, VmaPages},
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
        let t = PageTable::from_scans(&[p]);
        assert_eq!(t.len(), 3);
        for (i, e) in pm.iter().enumerate() {
            assert_eq!(t.pagemap(i), *e);
        }
        assert_eq!((t.mapcount(1), t.flags(2), t.memcg(2)), (3, 1 << 5, 43));
        assert_eq!((t.pmd_mapped(0), t.pmd_mapped(1)), (false, true));
        let o = t.owners(77);
        assert_eq!(o.len(), 2);
        assert_eq!(
            o.iter().map(|o| o.va).collect::<Vec<_>>(),
            vec![0x1000_0000, 0x1000_9000]
        );
        assert!(t.owners(6).is_empty());
    }
}
