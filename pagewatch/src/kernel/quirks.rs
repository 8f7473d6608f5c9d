//! Probes of how this kernel reports pages, where versions differ: each
//! runs on a page of pagewatch's own, through the live /proc/self, and
//! says what it found.

use std::{fs::File, os::unix::fs::FileExt as _};

use super::{
    page_size,
    pageflags::{PagemapEntry, has, kpf},
    status_kb,
};

/// Runs `f` on a fresh private anonymous page of this process (mapped,
/// not yet touched, unmapped afterwards), for probes of how the kernel
/// reports a page; None when no page can be mapped.
pub fn with_scratch_page<T>(f: impl FnOnce(*mut u8) -> T) -> Option<T> {
    with_scratch_mapping(usize::try_from(page_size()).unwrap_or(4096), f)
}

/// [`with_scratch_page`] for a mapping of `len` bytes.
fn with_scratch_mapping<T>(len: usize, f: impl FnOnce(*mut u8) -> T) -> Option<T> {
    // SAFETY: a fresh private anonymous mapping, checked, handed to `f`
    // and unmapped here only.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let r = f(p.cast());
    // SAFETY: unmapping the mapping made above.
    unsafe { libc::munmap(p, len) };
    Some(r)
}

/// `count` words of the u64 table `path` (pagemap, kpageflags,
/// kpagecount) from word `index`.
fn read_words(path: &str, index: u64, count: usize) -> Option<Vec<u64>> {
    let mut bytes = vec![0u8; count * 8];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut bytes, index * 8))
        .ok()?;
    Some(
        bytes
            .chunks_exact(8)
            .map(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")))
            .collect(),
    )
}

/// The PFN `p` (a page of this process) is on, if present.
fn own_pfn(p: *const u8) -> Option<u64> {
    let entry = *read_words("/proc/self/pagemap", p as u64 / page_size(), 1)?.first()?;
    PagemapEntry(entry).pfn().filter(|&pfn| pfn != 0)
}

/// Whether /proc/PID/status shows this kernel's RSS counters exactly (a
/// page faulted in shows at once) rather than through per-CPU batches.
/// Probed on this process with a fresh page, three times (another thread
/// faulting at the same moment can spoil one try; an approximate counter
/// never moves by exactly one page).
pub fn exact_rss_counters() -> bool {
    let status = "/proc/self/status";
    let page_kb = page_size() / 1024;
    let rss_anon = || status_kb(&std::fs::read_to_string(status).ok()?, "RssAnon");
    (0..3).any(|_| {
        with_scratch_page(|p| {
            let before = rss_anon();
            // SAFETY: p is the scratch page.
            unsafe { p.write_volatile(1) };
            matches!((before, rss_anon()), (Some(b), Some(a)) if a == b + page_kb)
        })
        .unwrap_or(false)
    })
}

/// Whether kpageflags says KSM for a page that cannot be one: a private
/// anonymous page of this process, written, never marked mergeable
/// (`kpageflags` reads the live kernel's flags word of a PFN): false when
/// the probe cannot run.
pub fn ksm_flag_on_plain_anon_page(kpageflags: impl FnOnce(u64) -> Option<u64>) -> bool {
    let word = with_scratch_page(|p| {
        // SAFETY: p is the scratch page.
        unsafe { p.write_volatile(1) };
        kpageflags(own_pfn(p)?)
    })
    .flatten();
    word.is_some_and(|w| has(w, kpf::ANON) && has(w, kpf::KSM))
}

/// Whether kpagecount is a folio's average page mapcount
/// (CONFIG_NO_PAGE_MAPCOUNT, 6.15+) rather than per page: splits the PMD
/// of a THP of this process's own and asks kpagecount of a mapped and an
/// unmapped page of it: per-page mapcounts say 1 and 0, a folio average
/// (256 of 512 pages mapped, rounded) says 1 for both. None when no THP
/// could be had or the tables are unreadable.
pub fn kpagecount_is_folio_average() -> Option<bool> {
    const PMD: usize = 2 << 20;
    with_scratch_mapping(2 * PMD, |raw| {
        let p = raw.wrapping_add(raw.align_offset(PMD));
        // SAFETY: p and the PMD after it lie inside the scratch mapping.
        unsafe {
            libc::madvise(p.cast(), PMD, libc::MADV_HUGEPAGE);
            p.write_volatile(1);
        }
        let pfn = own_pfn(p)?;
        let flags = |pfn| read_words("/proc/kpageflags", pfn, 1)?.first().copied();
        let f = flags(pfn)?;
        if !has(f, kpf::THP) || !has(f, kpf::COMPOUND_HEAD) || pfn % 512 != 0 {
            return None;
        }
        // Drop the second half: the PMD is split into PTEs for the first
        // 256 pages, the folio stays whole until deferred split.
        // SAFETY: the second half of the PMD, inside the scratch mapping.
        if unsafe { libc::madvise(p.add(PMD / 2).cast(), PMD / 2, libc::MADV_DONTNEED) } != 0 {
            return None;
        }
        let c = read_words("/proc/kpagecount", pfn, 512)?;
        let (first, last) = (*c.first()?, *c.get(511)?);
        // Still one folio (not split meanwhile): its tail.
        if !has(flags(pfn + 511)?, kpf::COMPOUND_TAIL) {
            return None;
        }
        match (first, last) {
            (1, 0) => Some(false),
            (1, 1) => Some(true),
            _ => None,
        }
    })
    .flatten()
}
