//! Short-lived workload: `pw-short MIB` writes MIB of anonymous memory
//! (4 KiB pages), prints `ready`, waits for stdin to close and exits,
//! printing `faults MINFLT MAJFLT` (its own, from /proc/self/stat) just
//! before.

use std::io::{Read as _, Write as _};

fn main() {
    let Some(Ok(mib)) = std::env::args().nth(1).map(|a| a.parse::<usize>()) else {
        eprintln!("usage: pw-short MIB");
        std::process::exit(2)
    };
    let len = mib << 20;
    let p = pagewatch_tests::map_anon_4k(len);
    for off in (0..len).step_by(4096) {
        // SAFETY: off < len inside the mapping.
        unsafe { p.add(off).write_volatile(1) };
    }
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut buf = [0u8; 64];
    while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
    let (min, maj) = pagewatch_tests::own_faults();
    println!("faults {min} {maj}");
    std::io::stdout().flush().expect("flush");
}
