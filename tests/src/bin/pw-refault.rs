//! Free-and-refault workload: the same addresses get new pages after the
//! process itself dropped the old ones, which is neither a migration nor a
//! collapse nor a split.
//!
//! `pw-refault MIB POPULATE_MIB`: maps a 2 MiB-aligned anonymous region of
//! MIB MiB, faults it in as 4 KiB pages (MADV_NOHUGEPAGE), prints `pid N`,
//! `region START LEN` and `ready`. Each line on stdin runs the next step
//! and prints `done STEP`:
//! 1. `thp`: MADV_DONTNEED, MADV_HUGEPAGE, touch again (THP faults);
//! 2. `small`: MADV_DONTNEED, MADV_NOHUGEPAGE, touch again (4 KiB pages);
//! 3. `populate`: mmap(MAP_POPULATE) of POPULATE_MIB MiB, never touched
//!    (prints `done populate START LEN`);
//! 4. `drop`: munmap the populated mapping and MADV_DONTNEED the region.
//!
//! Exits when stdin closes.

use std::io::{BufRead as _, Write as _};

fn touch(start: usize, len: usize) {
    for off in (0..len).step_by(4096) {
        // SAFETY: inside our own region.
        unsafe { ((start + off) as *mut u8).write_volatile(1) };
    }
}

fn advise(start: usize, len: usize, advice: libc::c_int) {
    // SAFETY: madvise on our own region.
    assert_eq!(unsafe { libc::madvise(start as *mut _, len, advice) }, 0);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .expect("usage: pw-refault MIB POPULATE_MIB")
    };
    let (len, populate_len) = (mib(1) << 20, mib(2) << 20);
    let start = pagewatch_tests::map_anon_pmd_aligned(len);
    advise(start, len, libc::MADV_NOHUGEPAGE);
    touch(start, len);
    println!("pid {}", std::process::id());
    println!("region {start} {len}");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    advise(start, len, libc::MADV_DONTNEED);
    advise(start, len, libc::MADV_HUGEPAGE);
    touch(start, len);
    println!("done thp");
    std::io::stdout().flush().expect("flush");
    let _ = lines.next();
    advise(start, len, libc::MADV_DONTNEED);
    advise(start, len, libc::MADV_NOHUGEPAGE);
    touch(start, len);
    println!("done small");
    std::io::stdout().flush().expect("flush");
    let _ = lines.next();
    // SAFETY: a new anonymous mapping; checked for failure.
    let populated = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            populate_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(populated, libc::MAP_FAILED);
    println!("done populate {} {populate_len}", populated as usize);
    std::io::stdout().flush().expect("flush");
    let _ = lines.next();
    // SAFETY: the mapping made above.
    assert_eq!(unsafe { libc::munmap(populated, populate_len) }, 0);
    advise(start, len, libc::MADV_DONTNEED);
    println!("done drop");
    std::io::stdout().flush().expect("flush");
    for _ in lines {}
}
