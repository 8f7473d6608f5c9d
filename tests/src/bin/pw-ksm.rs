//! KSM workload: maps MIB of anonymous memory, fills page i with the byte
//! pattern i % 251 + 1 (so pages of one process differ from each other but
//! match the same pages of another instance), and marks it MADV_MERGEABLE.
//!
//! `pw-ksm MIB`: prints `pid N` and `ready`, then waits for stdin to close.

use std::io::{Read as _, Write as _};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("usage: pw-ksm MIB");
            std::process::exit(2)
        });
    let len = mib << 20;
    // SAFETY: anonymous private mapping, checked; madvise on it.
    let p = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        assert_eq!(libc::madvise(p, len, libc::MADV_NOHUGEPAGE), 0);
        p.cast::<u8>()
    };
    for (i, off) in (0..len).step_by(4096).enumerate() {
        // SAFETY: each page lies inside the mapping.
        unsafe { std::ptr::write_bytes(p.add(off), (i % 251 + 1) as u8, 4096) };
    }
    // SAFETY: our own mapping.
    assert_eq!(
        unsafe { libc::madvise(p.cast(), len, libc::MADV_MERGEABLE) },
        0,
        "MADV_MERGEABLE (CONFIG_KSM)"
    );
    println!("pid {}", std::process::id());
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}
