//! Facts about the running kernel and machine that every layer may ask:
//! clocks, the page size, and (in [`quirks`]) probes of how this kernel
//! reports things that differ between versions; the pagemap and
//! kpageflags bit layouts ([`pageflags`]). The bottom layer: it imports
//! nothing else from the crate.

pub mod pageflags;
pub mod quirks;

/// Nanoseconds on `clock`.
pub fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clocks used exist on
    // every Linux pagewatch supports, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC now, in ns (the clock of the events' timestamps).
pub fn monotonic_ns() -> u64 {
    u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0)
}

/// The base page size, read once at run time (`sysconf(_SC_PAGESIZE)`;
/// 4096 on x86-64): the size of one pagemap, kpageflags or kpagecount
/// entry's page.
pub fn page_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
    })
}

/// Clock ticks per second (USER_HZ: the unit of /proc/PID/stat times).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100)
}

/// A `Name:   123 kB` line of /proc/PID/status.
pub fn status_kb(status: &str, name: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(':')?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}
