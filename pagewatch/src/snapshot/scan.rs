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
    source::{ProcRoot, U64Table},
};

/// Pages per PMD mapping (x86-64, arm64 with 4 KiB pages).
pub const PMD_PAGES: u64 = 512;
/// VMAs larger than this many pages are first scanned with PAGEMAP_SCAN to
/// skip unpopulated ranges.
const SPARSE_SCAN_PAGES: u64 = 1 << 18;
/// Merge PFN runs closer than this many entries into one read.
const PFN_GAP: u64 = 16;

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
    let mut buf = Vec::new();
    for (off, n) in ranges {
        buf.resize(n as usize, 0);
        let got = pagemap.read_into(first + off, &mut buf)?;
        if got < n as usize {
            return Ok(None);
        }
        for (i, &e) in buf.iter().enumerate() {
            if e & (PM_PRESENT | PM_SWAP) != 0 {
                v.idx.push((off + i as u64) as u32);
                v.pm.push(e);
            }
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

/// (pfn, vma index, kept index) for reads.
type Want = (u64, u32, u32);

fn fill_kpage(kp: &KpageFiles, vmas: &mut [VmaPages]) -> io::Result<()> {
    let mut want_flags: Vec<Want> = Vec::new();
    let mut want_count: Vec<Want> = Vec::new();
    // Blocks whose first page stands for all 512: (vma, first kept index).
    let mut blocks: Vec<(u32, u32)> = Vec::new();
    for (vi, v) in vmas.iter().enumerate() {
        let n = v.pm.len();
        let mut k = 0;
        while k < n {
            let e = v.pm[k];
            let Some(pfn) = v.pfn(k) else {
                k += 1;
                continue;
            };
            if v.pmd[k]
                && pfn.is_multiple_of(PMD_PAGES)
                && k + 511 < n
                && v.idx[k + 511] == v.idx[k] + 511
                && v.pm[k + 511] & PM_PFN_MASK == pfn + 511
                && v.pmd[k + 511]
            {
                blocks.push((vi as u32, k as u32));
                want_flags.push((pfn, vi as u32, k as u32));
                for j in k..k + 512 {
                    if !PagemapEntry(v.pm[j]).exclusive() {
                        want_count.push((pfn + (j - k) as u64, vi as u32, j as u32));
                    }
                }
                k += 512;
                continue;
            }
            want_flags.push((pfn, vi as u32, k as u32));
            if !PagemapEntry(e).exclusive() {
                want_count.push((pfn, vi as u32, k as u32));
            }
            k += 1;
        }
    }
    sort_wants(&mut want_flags);
    sort_wants(&mut want_count);
    let (flags, count, cgroup) = std::thread::scope(|s| {
        let f = s.spawn(|| gather(kp.flags.as_ref(), &want_flags));
        let c = s.spawn(|| gather(kp.cgroup.as_ref(), &want_flags));
        let m = gather(kp.count.as_ref(), &want_count);
        (
            f.join().expect("flags reader"),
            m,
            c.join().expect("cgroup reader"),
        )
    });
    let (flags, count, cgroup) = (flags?, count?, cgroup?);
    for (w, f) in want_flags.iter().zip(&flags) {
        vmas[w.1 as usize].flags[w.2 as usize] = *f;
    }
    for (w, c) in want_flags.iter().zip(&cgroup) {
        vmas[w.1 as usize].cgroup[w.2 as usize] = *c;
    }
    for (w, c) in want_count.iter().zip(&count) {
        vmas[w.1 as usize].mapcount[w.2 as usize] = (*c).min(u64::from(u32::MAX)) as u32;
    }
    for (vi, k) in blocks {
        let v = &mut vmas[vi as usize];
        let k = k as usize;
        let head = v.flags[k];
        let tail = if has(head, kpf::COMPOUND_HEAD) {
            (head & !(1 << kpf::COMPOUND_HEAD)) | (1 << kpf::COMPOUND_TAIL)
        } else {
            head
        };
        let cg = v.cgroup[k];
        v.flags[k + 1..k + 512].fill(tail);
        v.cgroup[k + 1..k + 512].fill(cg);
    }
    Ok(())
}

/// Sort by PFN unless already sorted (common for fresh anonymous memory).
fn sort_wants(w: &mut [Want]) {
    if !w.is_sorted_by_key(|x| x.0) {
        w.sort_unstable_by_key(|x| x.0);
    }
}

/// Read the entries of `table` at the PFNs of `want` (sorted), coalescing
/// near PFNs into one pread; returns one value per want (0 without table).
fn gather(table: Option<&U64Table>, want: &[Want]) -> io::Result<Vec<u64>> {
    let mut out = vec![0u64; want.len()];
    let Some(table) = table else {
        return Ok(out);
    };
    let mut buf = Vec::new();
    let mut i = 0;
    while i < want.len() {
        let first = want[i].0;
        let mut j = i + 1;
        while j < want.len()
            && want[j].0 < want[j - 1].0 + PFN_GAP
            && want[j].0 - first < super::source::BATCH_ENTRIES as u64
        {
            j += 1;
        }
        let len = (want[j - 1].0 - first + 1) as usize;
        buf.resize(len, 0);
        table.read_into(first, &mut buf)?;
        for (o, w) in out[i..j].iter_mut().zip(&want[i..j]) {
            *o = buf[(w.0 - first) as usize];
        }
        i = j;
    }
    Ok(out)
}

/// Whether a kpageflags word is a large folio's head that is not hugetlb.
pub fn is_large_head(f: u64) -> bool {
    has(f, kpf::COMPOUND_HEAD)
        && !has(f, kpf::HUGE)
        && !has(f, kpf::ZERO_PAGE)
        && !has(f, kpf::SLAB)
}
