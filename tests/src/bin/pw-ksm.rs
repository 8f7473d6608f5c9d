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
    let p = pagewatch_tests::map_anon_4k(len);
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
