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
    pfnplan::PfnPlan,
    source::{BATCH_ENTRIES, ProcRoot, U64Table},
};

/// Pages per PMD mapping (x86-64, arm64 with 4 KiB pages).
pub const PMD_PAGES: u64 = 512;
/// VMAs larger than this many pages are first scanned with PAGEMAP_SCAN to
/// skip unpopulated ranges.
const SPARSE_SCAN_PAGES: u64 = 1 << 18;

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
                 Pss, USS, clean/dirty, KSM, zero-page, hugetlb, memcg and large-folio figures are unavailable, and Rss counts every present PTE"
            )),
        };
        KpageFiles {
            flags: flags.ok(),
            count: open("kpagecount").ok(),
            cgroup: open("kpagecgroup").ok(),
            missing,
        }
    }
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

/// Scan one process. `pause` sleeps after each VMA (a test hook that widens
/// the window in which the process can exit mid-scan).
pub fn scan_process(
    root: &ProcRoot,
    kp: &KpageFiles,
    pid: u32,
    pause: Option<std::time::Duration>,
) -> Result<ProcessPages> {
    let maps_path = root.pid_file(pid, "maps");
    let text = std::fs::read_to_string(&maps_path).map_err(|e| open_err(pid, &maps_path, e))?;
    let vmas = parse_maps(&text, &maps_path)?;
    let comm = std::fs::read_to_string(root.pid_file(pid, "comm"))
        .map(|s| s.trim_end().to_string())
        .unwrap_or_default();
    let pm_path = root.pid_file(pid, "pagemap");
    let pagemap = U64Table::open(&pm_path).map_err(|e| open_err(pid, &pm_path, e))?;
    let mut out = ProcessPages {
        pid,
        comm,
        vmas: Vec::with_capacity(vmas.len()),
        pfns_visible: kp.flags.is_some(),
        partial: false,
        notes: Vec::new(),
    };
    let mut scan_ok = true;
    for vma in vmas {
        match read_vma(&pagemap, vma, &mut scan_ok) {
            Ok(Some(v)) => {
                out.vmas.push(v);
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
            }
            Ok(None) | Err(_) if alive(root, pid) => {
                // Still there: the kernel exports nothing above TASK_SIZE
                // ([vsyscall]); keep the VMA with no pages.
            }
            Ok(None) | Err(_) => {
                out.partial = true;
                out.notes.push(format!(
                    "pid {pid} exited during the scan: figures cover the {} VMAs read before it went",
                    out.vmas.len()
                ));
                break;
            }
        }
    }
    if !scan_ok {
        out.notes.push(
            "PAGEMAP_SCAN is unavailable (kernel < 6.7): PMD-mapped THP cannot be told from PTE-mapped, AnonHugePages reads 0"
                .into(),
        );
    }
    if out.pfns_visible
        && out
            .vmas
            .iter()
            .any(|v| v.pm.iter().any(|e| PagemapEntry(*e).present()))
        && !out
            .vmas
            .iter()
            .any(|v| (0..v.pm.len()).any(|k| v.pfn(k).is_some()))
    {
        out.pfns_visible = false;
        out.notes
            .push("pagemap PFNs read as zero (no CAP_SYS_ADMIN): kpage* data unavailable".into());
    }
    if out.pfns_visible {
        fill_kpage(kp, &mut out.vmas).map_err(|e| SnapshotError::read("/proc/kpage*", e))?;
    } else {
        for v in &mut out.vmas {
            v.mapcount.iter_mut().for_each(|m| *m = 1);
        }
    }
    Ok(out)
}

/// Read the pagemap entries of one VMA, keeping present or swapped pages.
/// Ok(None) when the process is gone.
fn read_vma(pagemap: &U64Table, vma: Vma, scan_ok: &mut bool) -> io::Result<Option<VmaPages>> {
    let first = vma.start / 4096;
    let pages = vma.len() / 4096;
    let ranges: Vec<(u64, u64)> = if pages > SPARSE_SCAN_PAGES && *scan_ok {
        match pagemap_scan::scan(
            pagemap.file(),
            vma.start,
            vma.end,
            0,
            PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ) {
            Ok(r) => r
                .iter()
                .map(|r| (r.start / 4096 - first, (r.end - r.start) / 4096))
                .collect(),
            Err(_) => {
                *scan_ok = false;
                vec![(0, pages)]
            }
        }
    } else {
        vec![(0, pages)]
    };
    let mut v = VmaPages {
        vma,
        idx: Vec::new(),
        pm: Vec::new(),
        flags: Vec::new(),
        mapcount: Vec::new(),
        cgroup: Vec::new(),
        pmd: Vec::new(),
    };
    let mut buf = vec![0u64; (pages as usize).min(BATCH_ENTRIES)];
    for (off, n) in ranges {
        let mut done = 0;
        while done < n {
            let want = (n - done).min(buf.len() as u64) as usize;
            let got = pagemap.read_into(first + off + done, &mut buf[..want])?;
            if got < want {
                return Ok(None);
            }
            for (i, &e) in buf[..want].iter().enumerate() {
                if e & (PM_PRESENT | PM_SWAP) != 0 {
                    v.idx.push((off + done + i as u64) as u32);
                    v.pm.push(e);
                }
            }
            done += want as u64;
        }
    }
    let n = v.pm.len();
    v.flags = vec![0; n];
    v.mapcount = vec![1; n];
    v.cgroup = vec![0; n];
    v.pmd = vec![false; n];
    if *scan_ok && pages >= PMD_PAGES && has_huge_candidate(&v, first) {
        match pagemap_scan::scan(pagemap.file(), v.vma.start, v.vma.end, PAGE_IS_HUGE, 0) {
            Ok(regions) => mark_pmd(&mut v, &regions),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(_) => *scan_ok = false,
        }
    }
    Ok(Some(v))
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

/// Call `f(vma, k, pfn, block)` for every visible PFN to read flags for:
/// each page outside PMD blocks and the first page of each block.
fn for_each_flag_pfn(vmas: &[VmaPages], mut f: impl FnMut(usize, usize, u64, bool)) {
    for (vi, v) in vmas.iter().enumerate() {
        let mut k = 0;
        while k < v.pm.len() {
            match v.pfn(k) {
                Some(pfn) if block_at(v, k, pfn) => {
                    f(vi, k, pfn, true);
                    k += PMD_PAGES as usize;
                }
                Some(pfn) => {
                    f(vi, k, pfn, false);
                    k += 1;
                }
                None => k += 1,
            }
        }
    }
}

/// Call `f(pfn)` for every visible PFN pagemap does not mark exclusive.
fn for_each_shared_pfn(vmas: &[VmaPages], f: &mut dyn FnMut(u64)) {
    for v in vmas {
        for (k, &e) in v.pm.iter().enumerate() {
            if !PagemapEntry(e).exclusive()
                && let Some(pfn) = v.pfn(k)
            {
                f(pfn);
            }
        }
    }
}

fn fill_kpage(kp: &KpageFiles, vmas: &mut [VmaPages]) -> io::Result<()> {
    let flag_plan = PfnPlan::new(|f| for_each_flag_pfn(vmas, |_, _, pfn, _| f(pfn)));
    let count_plan = PfnPlan::new(|f| for_each_shared_pfn(vmas, f));
    log::debug!(
        "kpage reads: flags/cgroup {} entries in {} preads, count {} entries in {} preads",
        flag_plan.entries(),
        flag_plan.preads(),
        count_plan.entries(),
        count_plan.preads()
    );
    let (flags, cgroup, count) = std::thread::scope(|s| {
        let f = s.spawn(|| flag_plan.read(kp.flags.as_ref()));
        let c = s.spawn(|| flag_plan.read(kp.cgroup.as_ref()));
        let m = count_plan.read(kp.count.as_ref());
        (
            f.join().expect("flags reader"),
            c.join().expect("cgroup reader"),
            m,
        )
    });
    let (flags, cgroup, count) = (flags?, cgroup?, count?);
    for v in vmas.iter_mut() {
        let mut k = 0;
        while k < v.pm.len() {
            let Some(pfn) = v.pfn(k) else {
                k += 1;
                continue;
            };
            let f = flag_plan.get(&flags, pfn);
            let cg = flag_plan.get(&cgroup, pfn);
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
    }
    for v in vmas.iter_mut() {
        for k in 0..v.pm.len() {
            if !PagemapEntry(v.pm[k]).exclusive()
                && let Some(pfn) = v.pfn(k)
            {
                v.mapcount[k] = count_plan.get(&count, pfn).min(u64::from(u32::MAX)) as u32;
            }
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
