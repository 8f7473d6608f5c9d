//! Benchmark workload: `pw-hold SIZE_MIB [thp|nothp]` maps SIZE_MIB of
//! anonymous memory (2 MiB aligned), advises MADV_HUGEPAGE or
//! MADV_NOHUGEPAGE, writes every page, prints `pid PID` and `ready`, and
//! holds the memory until stdin closes.

use std::io::{Read, Write};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: pw-hold SIZE_MIB [thp|nothp]");
    let thp = args.next().as_deref() == Some("thp");
    let len = mib << 20;
    let huge = 2 << 20;
    // SAFETY: anonymous mapping request with no address hint.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + huge,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert!(
        raw != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let p = ((raw as usize + huge - 1) & !(huge - 1)) as *mut u8;
    let advice = if thp {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    // SAFETY: p..p+len lies inside the mapping.
    let r = unsafe { libc::madvise(p.cast(), len, advice) };
    assert_eq!(r, 0, "madvise: {}", std::io::Error::last_os_error());
    for off in (0..len).step_by(4096) {
        // SAFETY: off < len inside the mapping.
        unsafe { p.add(off).write_volatile(1) };
    }
    println!("pid {}", std::process::id());
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut buf = [0u8; 64];
    while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
}
