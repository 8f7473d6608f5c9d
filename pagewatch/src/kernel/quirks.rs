//! Probes of how this kernel reports pages, where versions differ: each
//! runs once, on a page of pagewatch's own, and says what it found.

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
