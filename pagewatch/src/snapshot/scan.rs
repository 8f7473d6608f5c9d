//! Reading one process: /proc/PID/maps, then pagemap for every VMA in
//! batches, then kpageflags / kpagecount / kpagecgroup for the PFNs
//! actually present (planned per run of neighbouring PFNs, see
//! [`super::pfnplan`]); big VMAs on two threads (see [`super::batches`]).
//!
//! Work is kept per folio where that is exact: a 2 MiB-aligned block of 512
//! pagemap entries that PAGEMAP_SCAN reports as PMD-mapped, whose entries are
//! `e, e + 1, ..., e + 511` (one exclusive PTE-level view of a PMD: same
//! bits, consecutive PFNs from a 512-aligned head) is one *folded* entry:
//! only the head's kpageflags and kpagecgroup are read, the 511 tails are
//! derived (COMPOUND_HEAD becomes COMPOUND_TAIL, as the kernel's
//! stable_page_flags reports a tail of the same folio), and the mapcount is
//! 1 for all (pagemap's exclusive bit is the kernel's per-page mapcount == 1
//! test). The accounting then handles the block as two runs (head, tails)
//! instead of 512 pages. Shared (non-exclusive) PMD mappings are kept per
//! page, since per-page mapcounts of one folio can differ. kpagecount is
//! read only for pages pagemap does not mark exclusive.

use std::{
    io,
    sync::atomic::{AtomicBool, Ordering},
};

use super::account::page_size;
use super::{
    batches,
    error::{Result, SnapshotError},
    flags::{PM_EXCLUSIVE, PM_PFN_MASK, PM_PRESENT, PM_SWAP, PagemapEntry, has, kpf},
    maps::{Vma, VmaSource, read_vmas},
    observer::{OwnPages, release_before},
    pagemap_scan::{self, PAGE_IS_HUGE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED},
    pfnplan::PfnPlan,
    source::{ProcRoot, U64Table},
};
use crate::{
    kernel::quirks,
    privileges::{CAP_SYS_ADMIN, CapSets},
};

/// Pages per PMD mapping (x86-64, arm64 with 4 KiB pages).
pub const PMD_PAGES: u64 = 512;
/// VMAs larger than this many pages are first scanned with PAGEMAP_SCAN to
/// skip unpopulated ranges.
const SPARSE_SCAN_PAGES: u64 = 1 << 22;

/// The /proc/kpage* tables, or why they cannot be read.
#[derive(Debug)]
pub struct KpageFiles {
    /// /proc/kpageflags.
    pub flags: Option<U64Table>,
    /// /proc/kpagecount.
    pub count: Option<U64Table>,
    /// /proc/kpagecgroup (CONFIG_MEMCG).
    pub cgroup: Option<U64Table>,
    /// Why flags/count are missing, said once by the caller.
    pub missing: Option<String>,
    /// Why the KSM flag is not used (a kernel bug), said once by the caller.
    pub ksm_unreliable: Option<String>,
}

impl KpageFiles {
    /// Open what can be opened under `root`.
    pub fn open(root: &ProcRoot) -> Self {
        let open = |n: &str| U64Table::open(root.proc_file(n));
        let flags = open("kpageflags");
        let missing = match &flags {
            Ok(_) => None,
            Err(e) => Some(format!(
                "/proc/kpageflags is not readable ({e}); it needs root (CAP_SYS_ADMIN), and without it pagemap PFNs read as zero: \
                 Pss, clean/dirty, KSM, zero-page, hugetlb, memcg and large-folio figures are unavailable; Rss counts every present PTE and USS every page pagemap marks exclusive"
            )),
        };
        let mut flags = flags.ok();
        let ksm_unreliable = flags
            .as_mut()
            // Only for the live /proc: a captured tree has no such page.
            .filter(|f| {
                root.proc == std::path::Path::new("/proc")
                    && quirks::ksm_flag_on_plain_anon_page(|pfn| {
                        f.read(pfn, 1).ok()?.first().copied()
                    })
            })
            .map(|f| {
                f.clear_bits(1 << kpf::KSM);
                "this kernel's /proc/kpageflags sets KSM on every anonymous page (stable_page_flags() \
                 tests `mapping & PAGE_MAPPING_KSM`, true for any anon mapping; kernels from 6.10 until \
                 the fix): per-process figures ignore the flag, so KSM pages count as ordinary anonymous \
                 pages and KSM merges are not seen; the system census shows the flags as the kernel \
                 gives them"
                    .to_owned()
            });
        KpageFiles {
            flags,
            count: open("kpagecount").ok(),
            cgroup: open("kpagecgroup").ok(),
            missing,
            ksm_unreliable,
        }
    }
}

impl KpageFiles {
    /// The tables for snapshots by this process, as its capabilities
    /// allow. Without CAP_SYS_ADMIN pagemap reads every PFN as zero, so
    /// the tables would describe PFN 0 for every page: they are left out
    /// and the snapshots degrade as for non-root users.
    pub fn for_snapshots(root: &ProcRoot) -> Self {
        if CapSets::current().is_ok_and(|c| !c.has(CAP_SYS_ADMIN)) {
            return Self {
                flags: None,
                count: None,
                cgroup: None,
                ksm_unreliable: None,
                missing: Some(
                    "no CAP_SYS_ADMIN: pagemap hides PFNs, so snapshots leave out what \
                     /proc/kpageflags, kpagecount and kpagecgroup tell (Pss, clean/dirty, KSM, memcg, folios)"
                        .to_owned(),
                ),
            };
        }
        Self::open(root)
    }
}

/// The pages of one VMA that are present or swapped, one entry per page or
/// per folded PMD block (see the module docs and [`VmaPages::segments`]).
#[derive(Debug, Clone)]
pub struct VmaPages {
    /// The mapping.
    pub vma: Vma,
    /// Page index inside the VMA of each entry's first page.
    pub idx: Vec<u32>,
    /// Raw pagemap entry of each entry's first page.
    pub pm: Vec<u64>,
    /// kpageflags (0 if unreadable); a folded block's head.
    pub flags: Vec<u64>,
    /// Mapcount used for PSS (1 for exclusive pages).
    pub mapcount: Vec<u32>,
    /// Memory cgroup inode (0 if unknown).
    pub cgroup: Vec<u64>,
    /// Whether each entry is PMD-mapped (PAGEMAP_SCAN PAGE_IS_HUGE).
    pub pmd: Vec<bool>,
    /// Whether each entry is a folded block of [`PMD_PAGES`] pages.
    pub folded: Vec<bool>,
}

/// A run of pages with the same facts: page `i` of the run is at page
/// index `idx + i` with pagemap entry `pm + i` (runs longer than one page
/// are the tails of a folded block, whose PFNs are consecutive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Page index inside the VMA of the first page.
    pub idx: u32,
    /// Pages in the run.
    pub pages: u32,
    /// Raw pagemap entry of the first page.
    pub pm: u64,
    /// kpageflags of every page.
    pub flags: u64,
    /// Mapcount of every page.
    pub mapcount: u32,
    /// Memory cgroup inode of every page.
    pub cgroup: u64,
    /// PMD-mapped.
    pub pmd: bool,
}

impl Segment {
    /// The 511 tails of the folded block whose head this is.
    fn tails(&self) -> Segment {
        Segment {
            idx: self.idx + 1,
            pages: PMD_PAGES as u32 - 1,
            pm: self.pm + 1,
            flags: tail_flags(self.flags),
            ..*self
        }
    }
    /// PFN of the first page (None if swapped or hidden).
    pub fn pfn(&self) -> Option<u64> {
        PagemapEntry(self.pm).pfn().filter(|p| *p != 0)
    }
}

impl VmaPages {
    /// No pages of `vma` yet.
    pub fn empty(vma: Vma) -> Self {
        VmaPages {
            vma,
            idx: Vec::new(),
            pm: Vec::new(),
            flags: Vec::new(),
            mapcount: Vec::new(),
            cgroup: Vec::new(),
            pmd: Vec::new(),
            folded: Vec::new(),
        }
    }
    /// Virtual address of entry `k`'s first page.
    pub fn va(&self, k: usize) -> u64 {
        self.vma.start + u64::from(self.idx[k]) * page_size()
    }
    /// PFN of entry `k`'s first page (None if swapped or hidden).
    pub fn pfn(&self, k: usize) -> Option<u64> {
        PagemapEntry(self.pm[k]).pfn().filter(|p| *p != 0)
    }
    /// The entries as runs in address order: an unfolded page is one run,
    /// a folded block two (its head, then its 511 tails).
    pub fn segments(&self) -> Segments<'_> {
        Segments {
            v: self,
            k: 0,
            tails: None,
        }
    }
    /// Call `f` for each of [`VmaPages::segments`] (cheaper than the
    /// iterator in the per-page loops).
    #[inline]
    pub fn for_each_segment(&self, mut f: impl FnMut(Segment)) {
        let n = self.pm.len();
        let columns = self.idx[..n]
            .iter()
            .zip(&self.pm)
            .zip(&self.flags[..n])
            .zip(&self.mapcount[..n])
            .zip(&self.cgroup[..n])
            .zip(&self.pmd[..n])
            .zip(&self.folded[..n]);
        for ((((((&idx, &pm), &flags), &mapcount), &cgroup), &pmd), &folded) in columns {
            let head = Segment {
                idx,
                pages: 1,
                pm,
                flags,
                mapcount,
                cgroup,
                pmd,
            };
            f(head);
            if folded {
                f(head.tails());
            }
        }
    }
    /// Append another batch of the same VMA, one entry per page (folded
    /// blocks unfolded), for callers that index pages.
    fn extend_unfolded(&mut self, b: &VmaPages) {
        for s in b.segments() {
            for i in 0..s.pages {
                self.idx.push(s.idx + i);
                self.pm.push(s.pm + u64::from(i));
                self.flags.push(s.flags);
                self.mapcount.push(s.mapcount);
                self.cgroup.push(s.cgroup);
                self.pmd.push(s.pmd);
                self.folded.push(false);
            }
        }
    }
}

/// Iterator of [`VmaPages::segments`].
#[derive(Debug)]
pub struct Segments<'a> {
    v: &'a VmaPages,
    k: usize,
    tails: Option<Segment>,
}

impl Iterator for Segments<'_> {
    type Item = Segment;
    #[inline]
    fn next(&mut self) -> Option<Segment> {
        if let Some(t) = self.tails.take() {
            return Some(t);
        }
        let (v, k) = (self.v, self.k);
        if k >= v.pm.len() {
            return None;
        }
        self.k += 1;
        let head = Segment {
            idx: v.idx[k],
            pages: 1,
            pm: v.pm[k],
            flags: v.flags[k],
            mapcount: v.mapcount[k],
            cgroup: v.cgroup[k],
            pmd: v.pmd[k],
        };
        if v.folded[k] {
            self.tails = Some(head.tails());
        }
        Some(head)
    }
}

/// kpageflags of a tail page of the folio whose head has flags `f`.
fn tail_flags(f: u64) -> u64 {
    if has(f, kpf::COMPOUND_HEAD) {
        (f & !(1 << kpf::COMPOUND_HEAD)) | (1 << kpf::COMPOUND_TAIL)
    } else {
        f
    }
}

/// Everything read about one process, every page kept.
#[derive(Debug, Clone)]
pub struct ProcessPages {
    /// What the scan learnt besides the pages.
    pub info: ScanInfo,
    /// Per VMA pages, one entry per page (nothing folded), in the order of
    /// `info.vmas`.
    pub vmas: Vec<VmaPages>,
}

/// Whether `pid` still exists and is not a zombie.
fn alive(root: &ProcRoot, pid: u32) -> bool {
    std::fs::read_to_string(root.pid_file(pid, "stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// What a scan learnt besides the pages themselves.
#[derive(Debug, Clone)]
pub struct ScanInfo {
    /// Process id.
    pub pid: u32,
    /// /proc/PID/comm.
    pub comm: String,
    /// How the VMA list was read.
    pub vma_source: VmaSource,
    /// All VMAs of the process.
    pub vmas: Vec<Vma>,
    /// Whether PFNs (and so kpage* data) were visible.
    pub pfns_visible: bool,
    /// The process exited during the scan.
    pub partial: bool,
    /// Whether PMD mappings were seen (PAGEMAP_SCAN, 6.7+): without it
    /// AnonHugePages, ShmemPmdMapped and FilePmdMapped are unknown.
    pub pmd_known: bool,
    /// Things worth telling the user about this scan.
    pub notes: Vec<String>,
}

/// Pages per batch: 64 MiB of address space (128 KiB of pagemap). Batches
/// end on 2 MiB boundaries so a PMD-mapped folio never straddles two.
/// Small batches keep the memory faulted in small (in VMs with free page
/// reporting every new page is a host fault too) and let the two reader
/// threads share the work finely.
const BATCH_PAGES: u64 = 1 << 14;
/// Pages per batch in hugetlb VMAs: 1 GiB, so a 1 GiB page is never split.
const HUGETLB_BATCH_PAGES: u64 = 1 << 18;
/// VMAs of at least this many pages are read in two or more batches, on
/// two threads (below it, starting a thread costs more than it saves).
const PARALLEL_PAGES: u64 = 1 << 12;
/// Batches in memory at once: read ahead of the one being handed over.
const SLOTS: usize = 4;

/// One batch and the memory reused to read it.
#[derive(Debug)]
struct Slot {
    batch: VmaPages,
    /// Offsets of the PMD-mapping candidates (see [`pmd_candidates`]).
    blocks: Vec<usize>,
    /// kpageflags / kpagecgroup reads, for every visible PFN.
    flag_plan: PfnPlan,
    /// kpagecount reads, for PFNs pagemap does not mark exclusive.
    count_plan: PfnPlan,
    /// Values read from one kpage table.
    values: Vec<u64>,
    /// How reading the batch went.
    read: Option<io::Result<Read>>,
}

/// Slots reused from batch to batch and from VMA to VMA: keeping the peak
/// footprint small matters because fresh memory is expensive to fault in.
#[derive(Debug, Default)]
struct Buffers {
    slots: Vec<Slot>,
}

/// How to scan a process.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Sleep after each VMA (a test hook widening the window in which the
    /// process can exit mid-scan).
    pub pause: Option<std::time::Duration>,
    /// How to read the VMA list (PROCMAP_QUERY falls back to the text).
    pub vma_source: VmaSource,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            pause: None,
            vma_source: VmaSource::ProcmapQuery,
        }
    }
}

/// Scan one process, handing its pages to `sink` one batch at a time
/// (`sink(vma_index, batch, pfns_visible)`; a VMA can come in several
/// batches).
pub fn scan_process_with(
    root: &ProcRoot,
    kp: &KpageFiles,
    pid: u32,
    opts: &ScanOptions,
    mut sink: impl FnMut(usize, &VmaPages, bool),
) -> Result<ScanInfo> {
    let (vmas, vma_source) = read_vmas(root, pid, opts.vma_source)?;
    // pagewatch's own mappings matter only to the mapcounts: without
    // kpagecount (the correlator's snapshots) there is nothing to discount.
    let own = if kp.count.is_some() {
        OwnPages::read(root, pid, &vmas)
    } else {
        OwnPages::default()
    };
    let comm = root.comm(pid).unwrap_or_default();
    let pm_path = root.pid_file(pid, "pagemap");
    let pagemap =
        U64Table::open(&pm_path).map_err(|e| SnapshotError::of_process(pid, &pm_path, e))?;
    let mut info = ScanInfo {
        pid,
        comm,
        vma_source,
        vmas: Vec::new(),
        pfns_visible: kp.flags.is_some(),
        partial: false,
        pmd_known: true,
        notes: own.note().map(String::from).into_iter().collect(),
    };
    let mut scan_ok = true;
    let mut bufs = Buffers::default();
    for (vi, vma) in vmas.into_iter().enumerate() {
        info.vmas.push(vma.clone());
        let r = scan_vma(
            &pagemap,
            (kp, &own),
            &vma,
            &mut bufs,
            &mut scan_ok,
            &mut info,
            &mut |b, vis| sink(vi, b, vis),
        );
        match r {
            Ok(true) => {
                if let Some(p) = opts.pause {
                    std::thread::sleep(p);
                }
            }
            Ok(false) | Err(_) if alive(root, pid) => {
                // Still there: the kernel exports nothing above TASK_SIZE
                // ([vsyscall]).
            }
            Ok(false) | Err(_) => {
                info.partial = true;
                info.notes.push(format!(
                    "pid {pid} exited during the scan: figures cover the {} VMAs read before it went",
                    info.vmas.len() - 1
                ));
                info.vmas.pop();
                break;
            }
        }
    }
    info.pmd_known = scan_ok;
    if !scan_ok {
        info.notes.push(
            "PAGEMAP_SCAN is unavailable (kernel < 6.7): PMD-mapped THP cannot be told from PTE-mapped, so AnonHugePages, ShmemPmdMapped and FilePmdMapped are unknown (null)"
                .into(),
        );
    }
    Ok(info)
}

/// Scan one process keeping every page (for owner lookups and working sets).
pub fn scan_process(
    root: &ProcRoot,
    kp: &KpageFiles,
    pid: u32,
    opts: &ScanOptions,
) -> Result<ProcessPages> {
    let mut kept: Vec<Option<VmaPages>> = Vec::new();
    let info = scan_process_with(root, kp, pid, opts, |vi, b, _| {
        if kept.len() <= vi {
            kept.resize_with(vi + 1, || None);
        }
        kept[vi]
            .get_or_insert_with(|| VmaPages::empty(b.vma.clone()))
            .extend_unfolded(b);
    })?;
    // VMAs with no pages sent no batch.
    kept.resize_with(info.vmas.len(), || None);
    let vmas = kept
        .into_iter()
        .zip(&info.vmas)
        .map(|(v, vma)| v.unwrap_or_else(|| VmaPages::empty(vma.clone())))
        .collect();
    Ok(ProcessPages { info, vmas })
}

/// Read one VMA batch by batch, filling kpage data, and hand each batch
/// to `sink` in order. Ok(false) when the process is gone.
///
/// VMAs of [`PARALLEL_PAGES`] or more are cut into at least two batches
/// read by two threads (see [`batches::run_ordered`]): the kernel work
/// (pagemap walk, ~50-90 ns per kpage* entry) runs on both CPUs, and this
/// thread also hands finished batches to `sink` while the other reads.
fn scan_vma(
    pagemap: &U64Table,
    kp: (&KpageFiles, &OwnPages),
    vma: &Vma,
    bufs: &mut Buffers,
    scan_ok: &mut bool,
    info: &mut ScanInfo,
    sink: &mut dyn FnMut(&VmaPages, bool),
) -> io::Result<bool> {
    let (start, end) = (vma.start, vma.end);
    let first = start / page_size();
    let pages = (end - start) / page_size();
    let batch_pages = if vma.maybe_hugetlb() {
        HUGETLB_BATCH_PAGES
    } else if pages >= PARALLEL_PAGES {
        // At least two batches, so both threads have work.
        BATCH_PAGES.min((pages / 2).next_multiple_of(PMD_PAGES))
    } else {
        BATCH_PAGES
    };
    let ranges: Vec<(u64, u64)> = if pages > SPARSE_SCAN_PAGES && *scan_ok {
        match pagemap_scan::scan(
            pagemap.file(),
            start,
            end,
            0,
            PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ) {
            Ok(r) => r
                .iter()
                .map(|r| (r.start / page_size() - first, r.end / page_size() - first))
                .collect(),
            Err(_) => {
                *scan_ok = false;
                vec![(0, pages)]
            }
        }
    } else {
        vec![(0, pages)]
    };
    let mut spans = Vec::new();
    for (lo, hi) in ranges {
        let mut pos = lo;
        while pos < hi {
            // End batches on 2 MiB boundaries of the address space.
            let stop = ((first + pos + batch_pages) & !(PMD_PAGES - 1)) - first;
            let stop = stop.min(hi).max(pos + 1);
            spans.push((pos, stop));
            pos = stop;
        }
    }
    let slots = &mut bufs.slots;
    slots.resize_with(SLOTS, || Slot {
        batch: VmaPages::empty(vma.clone()),
        blocks: Vec::new(),
        flag_plan: PfnPlan::default(),
        count_plan: PfnPlan::default(),
        values: Vec::new(),
        read: None,
    });
    for s in slots.iter_mut() {
        s.batch.vma = vma.clone();
    }
    // What one batch learns (PAGEMAP_SCAN fails, PFNs are hidden) spares
    // the batches read after it the attempt.
    let ok = AtomicBool::new(*scan_ok);
    let visible = AtomicBool::new(info.pfns_visible);
    batches::run_ordered(
        spans.len(),
        slots,
        |s, i| {
            let r = read_batch(pagemap, kp, s, spans[i], &ok, &visible);
            s.read = Some(r);
        },
        |s, _| deliver(s, scan_ok, info, sink),
    )
}

/// Hand a read batch to `sink`, applying what its read learnt. Ok(false)
/// when the process is gone.
fn deliver(
    s: &mut Slot,
    scan_ok: &mut bool,
    info: &mut ScanInfo,
    sink: &mut dyn FnMut(&VmaPages, bool),
) -> io::Result<bool> {
    match s.read.take().expect("batch read before delivery")? {
        Read::Gone => Ok(false),
        Read::Done {
            scan_failed,
            hidden,
        } => {
            if scan_failed {
                *scan_ok = false;
            }
            if hidden && info.pfns_visible {
                info.pfns_visible = false;
                info.notes.push(
                    "pagemap PFNs read as zero (no CAP_SYS_ADMIN): kpage* data unavailable".into(),
                );
            }
            if !s.batch.pm.is_empty() {
                sink(&s.batch, info.pfns_visible);
            }
            Ok(true)
        }
    }
}

/// How reading one batch went.
#[derive(Debug)]
enum Read {
    /// The process is gone.
    Gone,
    /// Read; the flags say what changed for later batches.
    Done {
        /// PAGEMAP_SCAN failed (kernel < 6.7).
        scan_failed: bool,
        /// PFNs read as zero (no CAP_SYS_ADMIN).
        hidden: bool,
    },
}

/// Read pages `pos..stop` of the slot's VMA into its batch (pagemap, PMD
/// marks, and kpage data while PFNs are `visible`). Clears `scan_ok` when
/// PAGEMAP_SCAN fails and `visible` when the PFNs read as zero.
fn read_batch(
    pagemap: &U64Table,
    (kp, own): (&KpageFiles, &OwnPages),
    s: &mut Slot,
    (pos, stop): (u64, u64),
    scan_ok: &AtomicBool,
    visible: &AtomicBool,
) -> io::Result<Read> {
    let batch = &mut s.batch;
    let start = batch.vma.start;
    let first = start / page_size();
    let n = (stop - pos) as usize;
    let pfns_visible = visible.load(Ordering::Relaxed);
    // Read straight into `pm` and keep the present or swapped entries in
    // place (no separate pagemap buffer to fault in).
    batch.pm.resize(n, 0);
    let got = pagemap.read_into(first + pos, &mut batch.pm[..n])?;
    if got < n {
        return Ok(Read::Gone);
    }
    pmd_candidates(&batch.pm, first + pos, &mut s.blocks);
    let (mut scan_failed, mut huge) = (false, Vec::new());
    if !s.blocks.is_empty() && scan_ok.load(Ordering::Relaxed) {
        let (a, b) = (start + pos * page_size(), start + stop * page_size());
        match pagemap_scan::scan(pagemap.file(), a, b, PAGE_IS_HUGE, 0) {
            Ok(regions) => huge = regions,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(Read::Gone),
            Err(_) => {
                scan_ok.store(false, Ordering::Relaxed);
                scan_failed = true;
            }
        }
    }
    let (any_present, any_pfn) = compact(batch, pos, &s.blocks, &huge, pfns_visible);
    let hidden = pfns_visible && any_present && !any_pfn;
    if hidden {
        visible.store(false, Ordering::Relaxed);
    }
    let m = batch.pm.len();
    batch.flags.clear();
    batch.flags.resize(m, 0);
    batch.mapcount.clear();
    batch.mapcount.resize(m, 1);
    batch.cgroup.clear();
    batch.cgroup.resize(m, 0);
    if pfns_visible && !hidden && m > 0 {
        fill_kpage(kp, own, s)?;
    }
    Ok(Read::Done {
        scan_failed,
        hidden,
    })
}

/// Fill `out` with the offsets in `pm` (whose first entry is virtual page
/// `vpn`) of the 2 MiB-aligned blocks that look like a PMD mapping: 512
/// present entries `e, e + 1, ..., e + 511` (same bits, consecutive
/// PFNs), or 512 equal present entries when PFNs are hidden.
fn pmd_candidates(pm: &[u64], vpn: u64, out: &mut Vec<usize>) {
    let b = PMD_PAGES as usize;
    let mut i = ((PMD_PAGES - vpn % PMD_PAGES) % PMD_PAGES) as usize;
    out.clear();
    while i + b <= pm.len() {
        let e = pm[i];
        let step = u64::from(e & PM_PFN_MASK != 0);
        if e & PM_PRESENT != 0
            && pm[i..i + b]
                .iter()
                .zip(0..)
                .all(|(x, j)| *x == e + j * step)
        {
            out.push(i);
        }
        i += b;
    }
}

/// Keep the present or swapped entries of the batch just read into `v.pm`
/// (page `pos + i` at `v.pm[i]`) in place, folding the `blocks` that
/// PAGEMAP_SCAN's `huge` regions show PMD-mapped, exclusive, with a
/// 512-aligned head PFN. Returns whether any entry was present and whether
/// any had a PFN.
fn compact(
    v: &mut VmaPages,
    pos: u64,
    blocks: &[usize],
    huge: &[pagemap_scan::Region],
    pfns_visible: bool,
) -> (bool, bool) {
    let start = v.vma.start;
    let n = v.pm.len();
    v.idx.clear();
    v.pmd.clear();
    v.folded.clear();
    let (mut any_present, mut any_pfn) = (false, false);
    let mut regions = huge.iter().peekable();
    let mut in_huge = |va: u64, len: u64| {
        while regions.peek().is_some_and(|r| r.end <= va) {
            regions.next();
        }
        regions
            .peek()
            .is_some_and(|r| r.start <= va && va + len <= r.end)
    };
    let mut blocks = blocks.iter().copied().peekable();
    let (mut kept, mut i) = (0, 0);
    let page = page_size();
    while i < n {
        let e = v.pm[i];
        let va = start + (pos + i as u64) * page;
        let pfn = e & PM_PFN_MASK;
        if blocks.next_if_eq(&i).is_some()
            && pfns_visible
            && e & PM_EXCLUSIVE != 0
            && pfn != 0
            && pfn.is_multiple_of(PMD_PAGES)
            && in_huge(va, PMD_PAGES * page)
        {
            v.idx.push((pos + i as u64) as u32);
            v.pm[kept] = e;
            v.pmd.push(true);
            v.folded.push(true);
            (any_present, any_pfn) = (true, true);
            kept += 1;
            i += PMD_PAGES as usize;
            continue;
        }
        if e & (PM_PRESENT | PM_SWAP) != 0 {
            let present = e & PM_PRESENT != 0;
            any_present |= present;
            any_pfn |= present && pfn != 0;
            v.idx.push((pos + i as u64) as u32);
            v.pm[kept] = e;
            v.pmd.push(present && in_huge(va, page));
            v.folded.push(false);
            kept += 1;
        }
        i += 1;
    }
    v.pm.truncate(kept);
    (any_present, any_pfn)
}

/// Read kpageflags, kpagecgroup and kpagecount for the batch's PFNs and
/// store them per entry (kpagecount only where pagemap does not say
/// exclusive), without pagewatch's own mappings (see [`OwnPages`]).
fn fill_kpage(kp: &KpageFiles, own: &OwnPages, s: &mut Slot) -> io::Result<()> {
    let v = &mut s.batch;
    let pfn = |e: u64| PagemapEntry(e).pfn().filter(|p| *p != 0);
    s.flag_plan.plan(
        v.pm.iter()
            .enumerate()
            .filter_map(|(k, &e)| Some((k, pfn(e)?))),
    );
    s.count_plan.plan(
        v.pm.iter()
            .enumerate()
            .filter(|(_, e)| !PagemapEntry(**e).exclusive())
            .filter_map(|(k, &e)| Some((k, pfn(e)?))),
    );
    log::debug!(
        "kpage reads for {} entries: flags/cgroup {} entries in {} preads, count {} entries in {} preads",
        v.pm.len(),
        s.flag_plan.entries(),
        s.flag_plan.preads(),
        s.count_plan.entries(),
        s.count_plan.preads()
    );
    s.flag_plan.read(kp.flags.as_ref(), &mut s.values)?;
    s.flag_plan.store(&s.values, &mut v.flags, |f| f);
    if tails_lack_folio_flags()
        && let Some(flags) = &kp.flags
    {
        inherit_folio_flags(flags, v)?;
    }
    // Without kpagecgroup (no CONFIG_MEMCG, or left out by the collector)
    // every memcg stays 0.
    if kp.cgroup.is_some() {
        s.flag_plan.read(kp.cgroup.as_ref(), &mut s.values)?;
        s.flag_plan.store(&s.values, &mut v.cgroup, |c| c);
    }
    s.count_plan.read(kp.count.as_ref(), &mut s.values)?;
    s.count_plan.store(&s.values, &mut v.mapcount, |c| {
        c.min(u64::from(u32::MAX)) as u32
    });
    if !own.is_empty() {
        for ((pm, &flags), count) in v.pm.iter_mut().zip(&v.flags).zip(&mut v.mapcount) {
            if !PagemapEntry(*pm).exclusive() {
                (*pm, *count) = own.discount(*pm, flags, *count);
            }
        }
    }
    Ok(())
}

/// kpageflags bits that belong to the folio: before 6.10 a tail page
/// reports its own (clear) copies, and smaps reads the folio's.
const FOLIO_FLAGS: u64 = (1 << kpf::DIRTY) | (1 << kpf::SWAPBACKED) | (1 << kpf::LRU);

/// Whether this kernel's kpageflags of a tail page lack the folio's
/// DIRTY/SWAPBACKED/LRU (before 6.10, `stable_page_flags()` copied them
/// from the page itself; 6.10 reads the folio).
fn tails_lack_folio_flags() -> bool {
    static BEFORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *BEFORE.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        release_before(&release, (6, 10))
    })
}

/// Give every tail page of a large folio (not hugetlb) its head's
/// [`FOLIO_FLAGS`], as 6.10+ kpageflags does: a shmem THP's tails are
/// otherwise not swap-backed (counted as file) and clean. The head is the
/// previous page when the run continues; otherwise, folios being naturally
/// aligned, the first COMPOUND_HEAD at `pfn` rounded down to 2, 4, ...,
/// 512 pages (read from kpageflags: the head may be outside the VMA).
fn inherit_folio_flags(kflags: &U64Table, v: &mut VmaPages) -> io::Result<()> {
    let mut head: Option<(u64, u64)> = None; // (last PFN seen, head flags)
    for (pm, f) in v.pm.iter().zip(v.flags.iter_mut()) {
        let Some(pfn) = PagemapEntry(*pm).pfn().filter(|p| *p != 0) else {
            head = None;
            continue;
        };
        if has(*f, kpf::COMPOUND_HEAD) && !has(*f, kpf::HUGE) {
            head = Some((pfn, *f));
            continue;
        }
        if !has(*f, kpf::COMPOUND_TAIL) || has(*f, kpf::HUGE) {
            head = None;
            continue;
        }
        let hf = match head {
            Some((last, hf)) if last + 1 == pfn => Some(hf),
            _ => {
                let mut found = None;
                for order in 1..=PMD_PAGES.trailing_zeros() {
                    let cand = pfn & !((1 << order) - 1);
                    let cf = kflags.read(cand, 1)?.first().copied().unwrap_or(0);
                    if has(cf, kpf::COMPOUND_HEAD) {
                        found = Some(cf);
                        break;
                    }
                }
                found
            }
        };
        head = hf.map(|hf| (pfn, hf));
        if let Some(hf) = hf {
            *f |= hf & FOLIO_FLAGS;
        }
    }
    Ok(())
}

/// Whether a kpageflags word is a large folio's head that is not hugetlb.
pub fn is_large_head(f: u64) -> bool {
    has(f, kpf::COMPOUND_HEAD)
        && !has(f, kpf::HUGE)
        && !has(f, kpf::ZERO_PAGE)
        && !has(f, kpf::SLAB)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages covered by `v`'s entries.
    fn pages_len(v: &VmaPages) -> usize {
        v.segments().map(|s| s.pages as usize).sum()
    }

    fn vma(pages: u64) -> Vma {
        Vma {
            start: 0x4000_0000,
            end: 0x4000_0000 + pages * page_size(),
            perms: "rw-p".into(),
            offset: 0,
            dev: "00:00".into(),
            inode: 0,
            name: String::new(),
        }
    }

    #[test]
    fn folds_exclusive_pmd_blocks_only() {
        let b = PMD_PAGES;
        let head = PM_PRESENT | PM_EXCLUSIVE | (7 * b);
        // Block 0: a PMD-mapped exclusive THP. Block 1: the same pattern but
        // not PMD-mapped (PTE-mapped THP). Block 2: shared (no exclusive
        // bit). Block 3: one hole.
        let mut pm: Vec<u64> = (0..b).map(|j| head + j).collect();
        pm.extend((0..b).map(|j| head + b + j));
        pm.extend((0..b).map(|j| (head & !PM_EXCLUSIVE) + 2 * b + j));
        pm.extend((0..b).map(|j| if j == 3 { 0 } else { head + 3 * b + j }));
        let mut v = VmaPages::empty(vma(4 * b));
        v.pm = pm;
        let mut blocks = Vec::new();
        pmd_candidates(&v.pm, v.vma.start / page_size(), &mut blocks);
        assert_eq!(blocks, vec![0, 512, 1024]);
        let huge = [
            pagemap_scan::Region {
                start: v.vma.start,
                end: v.vma.start + b * page_size(),
                categories: PAGE_IS_HUGE,
            },
            pagemap_scan::Region {
                start: v.vma.start + 2 * b * page_size(),
                end: v.vma.start + 3 * b * page_size(),
                categories: PAGE_IS_HUGE,
            },
        ];
        assert_eq!(compact(&mut v, 0, &blocks, &huge, true), (true, true));
        v.flags = vec![1 << kpf::COMPOUND_HEAD; v.pm.len()];
        v.mapcount = vec![1; v.pm.len()];
        v.cgroup = vec![0; v.pm.len()];
        assert_eq!(v.pm.len(), 1 + 3 * b as usize - 1);
        assert_eq!((v.folded[0], v.folded[1]), (true, false));
        assert_eq!(v.folded.iter().filter(|f| **f).count(), 1);
        assert_eq!(pages_len(&v), 4 * b as usize - 1);
        // PMD marks: the folded block and the shared PMD-mapped block.
        assert_eq!(v.pmd.iter().filter(|p| **p).count(), 1 + b as usize);
        let segs: Vec<Segment> = v.segments().take(3).collect();
        assert_eq!((segs[0].pages, segs[1].pages, segs[2].pages), (1, 511, 1));
        assert_eq!(segs[1].pm, head + 1);
        assert!(has(segs[1].flags, kpf::COMPOUND_TAIL) && !has(segs[1].flags, kpf::COMPOUND_HEAD));
        // Unfolding gives back one entry per page, equal to what was read.
        let mut flat = VmaPages::empty(v.vma.clone());
        flat.extend_unfolded(&v);
        assert_eq!(flat.pm.len(), pages_len(&v));
        assert_eq!(
            &flat.pm[..b as usize],
            &(0..b).map(|j| head + j).collect::<Vec<_>>()[..]
        );
        // With PFNs hidden nothing folds.
        let mut h = VmaPages::empty(vma(b));
        h.pm = vec![PM_PRESENT | PM_EXCLUSIVE; b as usize];
        pmd_candidates(&h.pm, h.vma.start / page_size(), &mut blocks);
        assert_eq!(compact(&mut h, 0, &blocks, &huge[..1], true), (true, false));
        assert!(h.folded.iter().all(|f| !f) && h.pmd.iter().all(|p| *p));
    }
}
