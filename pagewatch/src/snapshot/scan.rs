//! Reading one process: /proc/PID/maps, then pagemap for every VMA in large
//! preads, then kpageflags / kpagecount / kpagecgroup for the sorted,
//! coalesced PFNs actually present, on up to three threads.
//!
//! Work is kept per folio where the kernel allows it: a 2 MiB-aligned run of
//! 512 contiguous PFNs that PAGEMAP_SCAN reports as PMD-mapped is one folio,
//! so only its first PFN's flags and memcg are read and the 511 tails are
//! derived (COMPOUND_HEAD becomes COMPOUND_TAIL). kpagecount is read only
//! for pages pagemap does not mark exclusive (exclusive means mapcount 1).

use std::io;

use super::{
    error::{Result, SnapshotError},
    flags::{PM_PFN_MASK, PM_PRESENT, PM_SWAP, PagemapEntry, has, kpf},
    maps::{Vma, parse_maps},
    pagemap_scan::{self, PAGE_IS_HUGE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED},
    pfnplan::{PfnPlan, PlanPart},
    source::{ProcRoot, U64Table},
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
            .filter(|f| ksm_flag_on_plain_anon_page(root, f))
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

/// Whether kpageflags says KSM for a page that cannot be one: a private
/// anonymous page of this process, written, never marked mergeable. Only
/// for the live /proc (a captured tree has no such page): false when the
/// probe cannot run.
fn ksm_flag_on_plain_anon_page(root: &ProcRoot, flags: &U64Table) -> bool {
    const PAGE: usize = 4096;
    if root.proc != std::path::Path::new("/proc") {
        return false;
    }
    // SAFETY: a fresh private anonymous mapping, checked, written and
    // unmapped here only.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: p is our one-page mapping.
    unsafe { p.cast::<u8>().write_volatile(1) };
    let pfn = U64Table::open(root.proc_file("self/pagemap"))
        .and_then(|pm| pm.read(p as u64 / PAGE as u64, 1))
        .ok()
        .and_then(|e| e.first().copied())
        .filter(|e| e & PM_PRESENT != 0 && e & PM_PFN_MASK != 0)
        .map(|e| e & PM_PFN_MASK);
    let word = pfn.and_then(|pfn| flags.read(pfn, 1).ok()?.first().copied());
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p, PAGE) };
    word.is_some_and(|w| has(w, kpf::ANON) && has(w, kpf::KSM))
}

/// The pages of one VMA that are present or swapped.
#[derive(Debug, Clone)]
pub struct VmaPages {
    /// The mapping.
    pub vma: Vma,
    /// Page index inside the VMA of each kept page.
    pub idx: Vec<u32>,
    /// Raw pagemap entry.
    pub pm: Vec<u64>,
    /// kpageflags (0 if unreadable).
    pub flags: Vec<u64>,
    /// Mapcount used for PSS (1 for exclusive pages).
    pub mapcount: Vec<u32>,
    /// Memory cgroup inode (0 if unknown).
    pub cgroup: Vec<u64>,
    /// Whether each page is PMD-mapped (PAGEMAP_SCAN PAGE_IS_HUGE).
    pub pmd: Vec<bool>,
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
        }
    }
    /// Virtual address of kept page `k`.
    pub fn va(&self, k: usize) -> u64 {
        self.vma.start + u64::from(self.idx[k]) * 4096
    }
    /// PFN of kept page `k` (None if swapped or hidden).
    pub fn pfn(&self, k: usize) -> Option<u64> {
        PagemapEntry(self.pm[k]).pfn().filter(|p| *p != 0)
    }
}

/// Everything read about one process.
#[derive(Debug, Clone)]
pub struct ProcessPages {
    /// Process id.
    pub pid: u32,
    /// /proc/PID/comm.
    pub comm: String,
    /// Per VMA pages.
    pub vmas: Vec<VmaPages>,
    /// Whether PFNs (and so kpage* data) were visible.
    pub pfns_visible: bool,
    /// The process exited during the scan: the result covers what was read.
    pub partial: bool,
    /// Things worth telling the user about this scan.
    pub notes: Vec<String>,
}

fn open_err(pid: u32, path: &std::path::Path, e: io::Error) -> SnapshotError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => SnapshotError::NoSuchProcess(pid),
        Some(libc::EACCES) | Some(libc::EPERM) => SnapshotError::ProcessAccessDenied(pid),
        _ => SnapshotError::read(path, e),
    }
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
    /// All VMAs of the process.
    pub vmas: Vec<Vma>,
    /// Whether PFNs (and so kpage* data) were visible.
    pub pfns_visible: bool,
    /// The process exited during the scan.
    pub partial: bool,
    /// Things worth telling the user about this scan.
    pub notes: Vec<String>,
}

/// Pages per batch: 256 MiB of address space (512 KiB of pagemap). Batches
/// end on 2 MiB boundaries so a PMD-mapped folio never straddles two.
/// (128 MiB batches fault in less buffer memory but made 4 KiB-page runs
/// ~20% slower.)
const BATCH_PAGES: u64 = 1 << 16;
/// Pages per batch in hugetlb VMAs: 1 GiB, so a 1 GiB page is never split.
const HUGETLB_BATCH_PAGES: u64 = 1 << 18;

/// Buffers reused from batch to batch: keeping the peak footprint at one
/// batch matters because fresh memory is expensive to fault in (in VMs
/// with free page reporting every new page is a host fault too).
#[derive(Debug, Default)]
struct Buffers {
    flags: Vec<u64>,
    cgroup: Vec<u64>,
    count: Vec<u64>,
    /// Batches and buffers of the pairs read in parallel (see `scan_vma`).
    slots: Vec<(VmaPages, Buffers)>,
}

/// Scan one process, handing its pages to `sink` one batch at a time
/// (`sink(vma_index, batch, pfns_visible)`; a VMA can come in several
/// batches). `pause`
/// sleeps after each VMA (a test hook widening the window in which the
/// process can exit mid-scan).
pub fn scan_process_with(
    root: &ProcRoot,
    kp: &KpageFiles,
    pid: u32,
    pause: Option<std::time::Duration>,
    mut sink: impl FnMut(usize, &VmaPages, bool),
) -> Result<ScanInfo> {
    let maps_path = root.pid_file(pid, "maps");
    let text = std::fs::read_to_string(&maps_path).map_err(|e| open_err(pid, &maps_path, e))?;
    let vmas = parse_maps(&text, &maps_path)?;
    let comm = root.comm(pid).unwrap_or_default();
    let pm_path = root.pid_file(pid, "pagemap");
    let pagemap = U64Table::open(&pm_path).map_err(|e| open_err(pid, &pm_path, e))?;
    let mut info = ScanInfo {
        pid,
        comm,
        vmas: Vec::new(),
        pfns_visible: kp.flags.is_some(),
        partial: false,
        notes: Vec::new(),
    };
    let mut scan_ok = true;
    let mut bufs = Buffers::default();
    for (vi, vma) in vmas.into_iter().enumerate() {
        info.vmas.push(vma.clone());
        let r = scan_vma(
            &pagemap,
            kp,
            &vma,
            &mut bufs,
            &mut scan_ok,
            &mut info,
            &mut |b, vis| sink(vi, b, vis),
        );
        match r {
            Ok(true) => {
                if let Some(p) = pause {
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
    if !scan_ok {
        info.notes.push(
            "PAGEMAP_SCAN is unavailable (kernel < 6.7): PMD-mapped THP cannot be told from PTE-mapped, AnonHugePages reads 0"
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
    pause: Option<std::time::Duration>,
) -> Result<ProcessPages> {
    let mut kept: Vec<VmaPages> = Vec::new();
    let info = scan_process_with(root, kp, pid, pause, |vi, b, _| {
        while kept.len() <= vi {
            kept.push(VmaPages {
                vma: b.vma.clone(),
                idx: Vec::new(),
                pm: Vec::new(),
                flags: Vec::new(),
                mapcount: Vec::new(),
                cgroup: Vec::new(),
                pmd: Vec::new(),
            });
        }
        let v = &mut kept[vi];
        v.vma = b.vma.clone();
        v.idx.extend_from_slice(&b.idx);
        v.pm.extend_from_slice(&b.pm);
        v.flags.extend_from_slice(&b.flags);
        v.mapcount.extend_from_slice(&b.mapcount);
        v.cgroup.extend_from_slice(&b.cgroup);
        v.pmd.extend_from_slice(&b.pmd);
    })?;
    for (vi, vma) in info.vmas.iter().enumerate() {
        if kept.len() <= vi || kept[vi].vma.start != vma.start {
            kept.insert(
                vi,
                VmaPages {
                    vma: vma.clone(),
                    idx: Vec::new(),
                    pm: Vec::new(),
                    flags: Vec::new(),
                    mapcount: Vec::new(),
                    cgroup: Vec::new(),
                    pmd: Vec::new(),
                },
            );
        }
    }
    Ok(ProcessPages {
        pid: info.pid,
        comm: info.comm,
        vmas: kept,
        pfns_visible: info.pfns_visible,
        partial: info.partial,
        notes: info.notes,
    })
}

/// Read one VMA batch by batch, filling kpage data, and hand each batch
/// to `sink`. Ok(false) when the process is gone.
///
/// Batches are read two at a time, one on a helper thread, each into its
/// own slot, while this thread also hands the previous pair to `sink`: the
/// kernel work (pagemap walk, ~50 ns per kpage* entry) and the accounting
/// overlap on two CPUs, and `sink` still sees the batches in order.
fn scan_vma(
    pagemap: &U64Table,
    kp: &KpageFiles,
    vma: &Vma,
    bufs: &mut Buffers,
    scan_ok: &mut bool,
    info: &mut ScanInfo,
    sink: &mut dyn FnMut(&VmaPages, bool),
) -> io::Result<bool> {
    let (start, end) = (vma.start, vma.end);
    let first = start / 4096;
    let pages = (end - start) / 4096;
    let batch_pages = if vma.maybe_hugetlb() {
        HUGETLB_BATCH_PAGES
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
                .map(|r| (r.start / 4096 - first, r.end / 4096 - first))
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
    let pairs: Vec<&[(u64, u64)]> = spans.chunks(2).collect();
    // Slots 0-1 take even pairs, 2-3 odd ones.
    let mut slots = std::mem::take(&mut bufs.slots);
    slots.resize_with(4, || (VmaPages::empty(vma.clone()), Buffers::default()));
    for s in &mut slots {
        s.0.vma = vma.clone();
    }
    let mut pending: Option<[Option<io::Result<Read>>; 2]> = None;
    let r = (|| {
        for p in 0..=pairs.len() {
            let (lo, hi) = slots.split_at_mut(2);
            let (cur, prev) = if p % 2 == 0 { (lo, hi) } else { (hi, lo) };
            let (c0, c1) = cur.split_at_mut(1);
            let (c0, c1) = (&mut c0[0], &mut c1[0]);
            let pair = pairs.get(p).copied();
            let (ok, vis) = (*scan_ok, info.pfns_visible);
            let earlier = pending.take();
            let (done, read) = std::thread::scope(|sc| {
                let helper = pair.filter(|q| q.len() == 2).map(|q| {
                    let s1 = q[1];
                    sc.spawn(move || {
                        read_batch(pagemap, kp, &mut c1.0, &mut c1.1, s1, ok, vis, false)
                    })
                });
                let done = match earlier {
                    Some(rs) => deliver(rs, prev, scan_ok, info, sink),
                    None => Ok(true),
                };
                let r0 = match (&done, pair) {
                    (Ok(true), Some(q)) => Some(read_batch(
                        pagemap,
                        kp,
                        &mut c0.0,
                        &mut c0.1,
                        q[0],
                        ok,
                        vis,
                        q.len() == 1,
                    )),
                    _ => None,
                };
                let r1 = helper.map(|h| h.join().expect("batch reader"));
                (done, [r0, r1])
            });
            if !done? {
                return Ok(false);
            }
            pending = Some(read);
        }
        Ok(true)
    })();
    bufs.slots = slots;
    r
}

/// Hand a pair's batches to `sink` in order, applying what their reads
/// learnt. Ok(false) when the process is gone.
fn deliver(
    read: [Option<io::Result<Read>>; 2],
    slots: &[(VmaPages, Buffers)],
    scan_ok: &mut bool,
    info: &mut ScanInfo,
    sink: &mut dyn FnMut(&VmaPages, bool),
) -> io::Result<bool> {
    for (r, (b, _)) in read.into_iter().zip(slots) {
        let Some(r) = r else { continue };
        match r? {
            Read::Gone => return Ok(false),
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
                        "pagemap PFNs read as zero (no CAP_SYS_ADMIN): kpage* data unavailable"
                            .into(),
                    );
                }
                if !b.pm.is_empty() {
                    sink(b, info.pfns_visible);
                }
            }
        }
    }
    Ok(true)
}

/// How reading one batch went.
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

/// Read pages `pos..stop` of `batch`'s VMA into `batch` (pagemap, PMD
/// marks, and kpage data when `pfns_visible`); `split` reads the kpage
/// tables on two threads.
#[allow(clippy::too_many_arguments)]
fn read_batch(
    pagemap: &U64Table,
    kp: &KpageFiles,
    batch: &mut VmaPages,
    bufs: &mut Buffers,
    (pos, stop): (u64, u64),
    scan_ok: bool,
    pfns_visible: bool,
    split: bool,
) -> io::Result<Read> {
    let start = batch.vma.start;
    let first = start / 4096;
    let n = (stop - pos) as usize;
    // Read straight into `pm` and keep the present or swapped entries in
    // place (no separate pagemap buffer to fault in).
    batch.pm.resize(n, 0);
    let got = pagemap.read_into(first + pos, &mut batch.pm[..n])?;
    if got < n {
        return Ok(Read::Gone);
    }
    batch.idx.clear();
    let mut kept = 0;
    for i in 0..n {
        let e = batch.pm[i];
        if e & (PM_PRESENT | PM_SWAP) != 0 {
            batch.idx.push((pos + i as u64) as u32);
            batch.pm[kept] = e;
            kept += 1;
        }
    }
    batch.pm.truncate(kept);
    let m = batch.pm.len();
    batch.flags.clear();
    batch.flags.resize(m, 0);
    batch.mapcount.clear();
    batch.mapcount.resize(m, 1);
    batch.cgroup.clear();
    batch.cgroup.resize(m, 0);
    batch.pmd.clear();
    batch.pmd.resize(m, false);
    let (mut scan_failed, mut hidden) = (false, false);
    if m > 0 {
        if scan_ok && m >= PMD_PAGES as usize && has_huge_candidate(batch, first) {
            let (a, b) = (start + pos * 4096, start + stop * 4096);
            match pagemap_scan::scan(pagemap.file(), a, b, PAGE_IS_HUGE, 0) {
                Ok(regions) => mark_pmd(batch, &regions),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(Read::Gone),
                Err(_) => scan_failed = true,
            }
        }
        if pfns_visible
            && batch
                .pm
                .iter()
                .all(|e| e & PM_PFN_MASK == 0 || e & PM_PRESENT == 0)
            && batch.pm.iter().any(|e| e & PM_PRESENT != 0)
        {
            hidden = true;
        }
        if pfns_visible && !hidden {
            fill_kpage(kp, batch, bufs, split)?;
        }
    }
    Ok(Read::Done {
        scan_failed,
        hidden,
    })
}

/// Whether some 2 MiB-aligned run of 512 kept pages could be a PMD mapping
/// (contiguous PFNs, or PFNs hidden).
fn has_huge_candidate(v: &VmaPages, first: u64) -> bool {
    let n = v.pm.len();
    (0..n).any(|k| {
        (first + u64::from(v.idx[k])).is_multiple_of(PMD_PAGES)
            && v.pm[k] & PM_PRESENT != 0
            && k + 511 < n
            && v.idx[k + 511] == v.idx[k] + 511
            && v.pm[k + 511] & PM_PFN_MASK
                == (v.pm[k] & PM_PFN_MASK) + if v.pm[k] & PM_PFN_MASK == 0 { 0 } else { 511 }
    })
}

fn mark_pmd(v: &mut VmaPages, regions: &[pagemap_scan::Region]) {
    let mut r = regions.iter().peekable();
    for k in 0..v.pm.len() {
        let va = v.va(k);
        while r.peek().is_some_and(|x| x.end <= va) {
            r.next();
        }
        if r.peek().is_some_and(|x| x.start <= va) {
            v.pmd[k] = true;
        }
    }
}

/// Whether kept page `k` starts a PMD-mapped block of 512 contiguous PFNs
/// (one folio: only its first entry needs reading).
fn block_at(v: &VmaPages, k: usize, pfn: u64) -> bool {
    v.pmd[k]
        && pfn.is_multiple_of(PMD_PAGES)
        && k + 511 < v.pm.len()
        && v.idx[k + 511] == v.idx[k] + 511
        && v.pm[k + 511] & PM_PFN_MASK == pfn + 511
        && v.pmd[k + 511]
}

/// Call `f(pfn)` for every visible PFN to read flags for: each page
/// outside PMD blocks and the first page of each block.
fn for_each_flag_pfn(v: &VmaPages, f: &mut dyn FnMut(u64)) {
    let mut k = 0;
    while k < v.pm.len() {
        match v.pfn(k) {
            Some(pfn) if block_at(v, k, pfn) => {
                f(pfn);
                k += PMD_PAGES as usize;
            }
            Some(pfn) => {
                f(pfn);
                k += 1;
            }
            None => k += 1,
        }
    }
}

/// Call `f(pfn)` for every visible PFN pagemap does not mark exclusive.
fn for_each_shared_pfn(v: &VmaPages, f: &mut dyn FnMut(u64)) {
    for (k, &e) in v.pm.iter().enumerate() {
        if !PagemapEntry(e).exclusive()
            && let Some(pfn) = v.pfn(k)
        {
            f(pfn);
        }
    }
}

/// Below this much work (entries, plus [`PREAD_COST`] per pread) a
/// batch's kpage reads stay on one thread: starting one costs more.
const MIN_SPLIT_WORK: usize = 2048;
/// A pread's fixed cost in entries (~1.5 us against ~50 ns an entry).
const PREAD_COST: usize = 32;

/// Read kpageflags, kpagecgroup and kpagecount for the batch's PFNs (on
/// two threads) and store them per page.
fn fill_kpage(
    kp: &KpageFiles,
    v: &mut VmaPages,
    bufs: &mut Buffers,
    split: bool,
) -> io::Result<()> {
    let flag_plan = PfnPlan::new(|f| for_each_flag_pfn(v, f));
    let count_plan = PfnPlan::new(|f| for_each_shared_pfn(v, f));
    log::debug!(
        "kpage reads for {} pages: flags/cgroup {} entries in {} preads, count {} entries in {} preads",
        v.pm.len(),
        flag_plan.entries(),
        flag_plan.preads(),
        count_plan.entries(),
        count_plan.preads()
    );
    let Buffers {
        flags,
        cgroup,
        count,
        ..
    } = bufs;
    // The kernel's cost is per entry: give each of two threads (this one
    // and a helper) half of every table's entries, so both stay busy
    // whatever the tables cost.
    let [f0, f1] = flag_plan.halves(flags);
    let [c0, c1] = flag_plan.halves(cgroup);
    let [m0, m1] = count_plan.halves(count);
    let read = |f: PlanPart, c: PlanPart, m: PlanPart| -> io::Result<()> {
        f.read(kp.flags.as_ref())?;
        c.read(kp.cgroup.as_ref())?;
        m.read(kp.count.as_ref())
    };
    let work = 2 * (flag_plan.entries() + PREAD_COST * flag_plan.preads())
        + count_plan.entries()
        + PREAD_COST * count_plan.preads();
    if !split || work < MIN_SPLIT_WORK {
        read(f0, c0, m0)?;
        read(f1, c1, m1)?;
    } else {
        let (r0, r1) = std::thread::scope(|s| {
            let h = s.spawn(|| read(f1, c1, m1));
            let r0 = read(f0, c0, m0);
            (r0, h.join().expect("kpage reader"))
        });
        r0?;
        r1?;
    }
    let mut k = 0;
    while k < v.pm.len() {
        let Some(pfn) = v.pfn(k) else {
            k += 1;
            continue;
        };
        let f = flag_plan.get(flags, pfn);
        let cg = flag_plan.get(cgroup, pfn);
        v.flags[k] = f;
        v.cgroup[k] = cg;
        if block_at(v, k, pfn) {
            let tail = if has(f, kpf::COMPOUND_HEAD) {
                (f & !(1 << kpf::COMPOUND_HEAD)) | (1 << kpf::COMPOUND_TAIL)
            } else {
                f
            };
            let end = k + PMD_PAGES as usize;
            v.flags[k + 1..end].fill(tail);
            v.cgroup[k + 1..end].fill(cg);
            k = end;
        } else {
            k += 1;
        }
    }
    for k in 0..v.pm.len() {
        if !PagemapEntry(v.pm[k]).exclusive()
            && let Some(pfn) = v.pfn(k)
        {
            v.mapcount[k] = count_plan.get(count, pfn).min(u64::from(u32::MAX)) as u32;
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
