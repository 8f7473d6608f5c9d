//! Turning scanned pages into per-VMA and per-process reports in smaps
//! units (kB), with the memcg and large-folio breakdowns. Figures that
//! need /proc/kpage* are `None` when PFNs were hidden.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    account::{ACCOUNTED_FLAGS, MemStats, PageFacts},
    flags::{PM_PFN_MASK, PagemapEntry, has, kpf},
    folios::{FolioStats, compound_runs, folio_stats},
    maps::VmaSource,
    memcg::MemcgNames,
    scan::{ProcessPages, ScanInfo, Segment, VmaPages},
};

/// smaps-style usage in kB. `None`: needs PFNs, which were hidden.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Rss (with hidden PFNs: every present PTE, zero page included).
    pub rss: u64,
    /// Pss, rounded as smaps rounds it.
    pub pss: Option<u64>,
    /// Pss_Anon.
    pub pss_anon: Option<u64>,
    /// Pss_File.
    pub pss_file: Option<u64>,
    /// Pss_Shmem.
    pub pss_shmem: Option<u64>,
    /// Pss_Dirty.
    pub pss_dirty: Option<u64>,
    /// USS: resident memory mapped only by this process (with hidden PFNs:
    /// pages pagemap marks exclusive).
    pub uss: u64,
    /// Shared_Clean.
    pub shared_clean: Option<u64>,
    /// Shared_Dirty.
    pub shared_dirty: Option<u64>,
    /// Private_Clean.
    pub private_clean: Option<u64>,
    /// Private_Dirty.
    pub private_dirty: Option<u64>,
    /// Anonymous.
    pub anonymous: u64,
    /// Resident file pages (not shmem).
    pub file: u64,
    /// Resident shmem pages.
    pub shmem: Option<u64>,
    /// KSM.
    pub ksm: Option<u64>,
    /// AnonHugePages.
    pub anon_huge_pages: Option<u64>,
    /// ShmemPmdMapped.
    pub shmem_pmd_mapped: Option<u64>,
    /// FilePmdMapped.
    pub file_pmd_mapped: Option<u64>,
    /// Swap.
    pub swap: u64,
    /// Private_Hugetlb.
    pub private_hugetlb: Option<u64>,
    /// Shared_Hugetlb.
    pub shared_hugetlb: Option<u64>,
    /// Pages mapping the (huge) zero page.
    pub zero_pages: Option<u64>,
    /// Soft-dirty pages.
    pub soft_dirty_pages: u64,
    /// Exclusively mapped pages.
    pub exclusive_pages: u64,
    /// Logically offline pages (balloon).
    pub offline_pages: Option<u64>,
    /// Swapped pages per swap type.
    pub swap_pages_by_type: BTreeMap<u8, u64>,
}

impl Usage {
    /// Convert raw counters.
    /// `visible`: PFNs (and so kpage* data) were readable; `pmd_known`:
    /// PMD mappings were (PAGEMAP_SCAN).
    pub fn from_stats(s: &MemStats, visible: bool, pmd_known: bool) -> Self {
        let kb = |b: u64| b >> 10;
        let pss = |raw: u64| raw >> (super::account::PSS_SHIFT + 10);
        let v = |x: u64| visible.then_some(x);
        Usage {
            rss: kb(s.rss),
            pss: v(pss(s.pss_raw)),
            pss_anon: v(pss(s.pss_anon_raw)),
            pss_file: v(pss(s.pss_file_raw)),
            pss_shmem: v(pss(s.pss_shmem_raw)),
            pss_dirty: v(pss(s.pss_dirty_raw)),
            uss: kb(s.uss),
            shared_clean: v(kb(s.shared_clean)),
            shared_dirty: v(kb(s.shared_dirty)),
            private_clean: v(kb(s.private_clean)),
            private_dirty: v(kb(s.private_dirty)),
            anonymous: kb(s.anonymous),
            file: kb(s.file),
            shmem: v(kb(s.shmem)),
            ksm: v(kb(s.ksm)),
            anon_huge_pages: pmd_known.then_some(kb(s.anon_huge)),
            shmem_pmd_mapped: v(kb(s.shmem_pmd)).filter(|_| pmd_known),
            file_pmd_mapped: v(kb(s.file_pmd)).filter(|_| pmd_known),
            swap: kb(s.swap),
            private_hugetlb: v(kb(s.private_hugetlb)),
            shared_hugetlb: v(kb(s.shared_hugetlb)),
            zero_pages: v(s.zero_pages),
            soft_dirty_pages: s.soft_dirty_pages,
            exclusive_pages: s.exclusive_pages,
            offline_pages: v(s.offline_pages),
            swap_pages_by_type: s.swap_by_type.clone(),
        }
    }
}

/// One VMA's report.
#[derive(Debug, Clone, Serialize)]
pub struct VmaReport {
    /// First address (hex).
    pub start: String,
    /// End address (hex).
    pub end: String,
    /// Permissions.
    pub perms: String,
    /// Mapped file or pseudo name.
    pub name: String,
    /// Size in kB.
    pub size: u64,
    /// Usage.
    pub usage: Usage,
    /// Hugetlb bytes (kB) by huge page size (kB).
    pub hugetlb_by_size: BTreeMap<u64, u64>,
    /// Large folios.
    pub folios: FolioStats,
    /// Resident kB per memory cgroup path.
    pub memcg: BTreeMap<String, u64>,
}

/// One process's report.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessReport {
    /// Process id.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// How the VMA list was read (`procmap_query` or `maps_text`).
    pub vma_source: VmaSource,
    /// Whether PFN-based figures are present.
    pub pfns_visible: bool,
    /// The process exited mid-scan.
    pub partial: bool,
    /// Totals over all VMAs (equal smaps_rollup).
    pub total: Usage,
    /// Hugetlb kB by huge page size (kB).
    pub hugetlb_by_size: BTreeMap<u64, u64>,
    /// Large folios over the process.
    pub folios: FolioStats,
    /// Resident kB per memory cgroup path.
    pub memcg: BTreeMap<String, u64>,
    /// Per-VMA reports (only with `--vma`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vmas: Option<Vec<VmaReport>>,
    /// Notes about this scan.
    pub notes: Vec<String>,
}

/// Account every page of one VMA, runs of pages with the same accounted
/// facts at once (a folded PMD block is two runs: head and tails).
pub fn vma_stats(v: &VmaPages, visible: bool) -> MemStats {
    let mut s = MemStats::default();
    // Swapped entries carry per-page swap offsets: compare those whole.
    let key = |g: &Segment| {
        let pm = if PagemapEntry(g.pm).present() {
            g.pm & !PM_PFN_MASK
        } else {
            g.pm
        };
        (pm, g.flags & ACCOUNTED_FLAGS, g.mapcount, g.pmd)
    };
    let mut run: Option<(Segment, u64)> = None;
    v.for_each_segment(|g| match &mut run {
        Some((first, n)) if key(first) == key(&g) => *n += u64::from(g.pages),
        _ => {
            if let Some((first, n)) = run.replace((g, u64::from(g.pages))) {
                s.add_n(&facts(&first), n, visible);
            }
        }
    });
    if let Some((first, n)) = run {
        s.add_n(&facts(&first), n, visible);
    }
    s
}

/// What the accounting needs of a run's pages.
fn facts(g: &Segment) -> PageFacts {
    PageFacts {
        pm: g.pm,
        flags: g.flags,
        mapcount: u64::from(g.mapcount),
        pmd_mapped: g.pmd,
    }
}

fn hugetlb_sizes(v: &VmaPages) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    // One cheap pass over the flags spares the walk in most batches.
    if !v.flags.iter().any(|f| has(*f, kpf::HUGE)) {
        return out;
    }
    compound_runs(
        v,
        false,
        |g| has(g.flags, kpf::HUGE) && has(g.flags, kpf::COMPOUND_HEAD),
        |_, len| *out.entry(len * 4).or_default() += len * 4,
    );
    out
}

fn memcg_kb(v: &VmaPages, names: &MemcgNames, out: &mut BTreeMap<String, u64>) {
    let mut by_ino: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut cur, mut kb) = (0u64, 0u64);
    v.for_each_segment(|g| {
        let f = g.flags;
        if !(PagemapEntry(g.pm).present() && has(f, kpf::MMAP) && !has(f, kpf::ZERO_PAGE)) {
            return;
        }
        if g.cgroup != cur {
            if kb > 0 {
                *by_ino.entry(cur).or_default() += kb;
            }
            (cur, kb) = (g.cgroup, 0);
        }
        kb += 4 * u64::from(g.pages);
    });
    if kb > 0 {
        *by_ino.entry(cur).or_default() += kb;
    }
    for (ino, kb) in by_ino {
        *out.entry(names.name(ino)).or_default() += kb;
    }
}

/// Per-VMA accumulator.
#[derive(Debug, Default)]
struct VmaAcc {
    stats: MemStats,
    folios: FolioStats,
    hugetlb: BTreeMap<u64, u64>,
    memcg: BTreeMap<String, u64>,
}

/// Builds a [`ProcessReport`] from batches of pages as a scan produces
/// them (see [`super::scan::scan_process_with`]).
#[derive(Debug)]
pub struct ReportBuilder<'a> {
    names: &'a MemcgNames,
    with_vmas: bool,
    vmas: Vec<VmaAcc>,
}

impl<'a> ReportBuilder<'a> {
    /// Start a report; `with_vmas` keeps per-VMA sections.
    pub fn new(names: &'a MemcgNames, with_vmas: bool) -> Self {
        ReportBuilder {
            names,
            with_vmas,
            vmas: Vec::new(),
        }
    }

    /// Account a batch of VMA `vi`'s pages.
    pub fn add(&mut self, vi: usize, v: &VmaPages, visible: bool) {
        if self.vmas.len() <= vi {
            self.vmas.resize_with(vi + 1, VmaAcc::default);
        }
        let acc = &mut self.vmas[vi];
        acc.stats.merge(&vma_stats(v, visible));
        acc.folios.merge(&folio_stats(v));
        for (k, b) in hugetlb_sizes(v) {
            *acc.hugetlb.entry(k).or_default() += b;
        }
        if visible {
            memcg_kb(v, self.names, &mut acc.memcg);
        }
    }

    /// Finish with what the scan learnt.
    pub fn finish(mut self, info: &ScanInfo) -> ProcessReport {
        let mut total = MemStats::default();
        let mut folios = FolioStats::default();
        let mut memcg = BTreeMap::new();
        let mut hugetlb: BTreeMap<u64, u64> = BTreeMap::new();
        let mut vmas = Vec::new();
        self.vmas.resize_with(info.vmas.len(), VmaAcc::default);
        for (vma, acc) in info.vmas.iter().zip(self.vmas) {
            total.merge(&acc.stats);
            folios.merge(&acc.folios);
            for (k, b) in &acc.hugetlb {
                *hugetlb.entry(*k).or_default() += b;
            }
            for (k, b) in &acc.memcg {
                *memcg.entry(k.clone()).or_default() += b;
            }
            if self.with_vmas {
                vmas.push(VmaReport {
                    start: format!("{:x}", vma.start),
                    end: format!("{:x}", vma.end),
                    perms: vma.perms.clone(),
                    name: vma.name.clone(),
                    size: vma.len() >> 10,
                    usage: Usage::from_stats(&acc.stats, info.pfns_visible, info.pmd_known),
                    hugetlb_by_size: acc.hugetlb,
                    folios: acc.folios,
                    memcg: acc.memcg,
                });
            }
        }
        ProcessReport {
            pid: info.pid,
            comm: info.comm.clone(),
            vma_source: info.vma_source,
            pfns_visible: info.pfns_visible,
            partial: info.partial,
            total: Usage::from_stats(&total, info.pfns_visible, info.pmd_known),
            hugetlb_by_size: hugetlb,
            folios,
            memcg,
            vmas: self.with_vmas.then_some(vmas),
            notes: info.notes.clone(),
        }
    }
}

/// Build a process report from a scan that kept every page.
pub fn process_report(p: &ProcessPages, names: &MemcgNames, with_vmas: bool) -> ProcessReport {
    let mut b = ReportBuilder::new(names, with_vmas);
    for (vi, v) in p.vmas.iter().enumerate() {
        b.add(vi, v, p.info.pfns_visible);
    }
    b.finish(&p.info)
}
