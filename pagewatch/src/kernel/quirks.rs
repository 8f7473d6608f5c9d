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
    let page = usize::try_from(super::page_size()).unwrap_or(4096);
    // SAFETY: a fresh private anonymous mapping, checked, handed to `f`
    // and unmapped here only.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
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
    unsafe { libc::munmap(p, page) };
    Some(r)
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
        let mut entry = [0u8; 8];
        File::open("/proc/self/pagemap")
            .and_then(|pm| pm.read_exact_at(&mut entry, p as u64 / page_size() * 8))
            .ok()?;
        let pfn = PagemapEntry(u64::from_ne_bytes(entry))
            .pfn()
            .filter(|&pfn| pfn != 0)?;
        kpageflags(pfn)
    })
    .flatten();
    word.is_some_and(|w| has(w, kpf::ANON) && has(w, kpf::KSM))
}
