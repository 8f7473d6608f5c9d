//! THP workload: builds a 2 MiB-aligned anonymous region out of 4 KiB pages
//! (MADV_NOHUGEPAGE while touching), then on a line from stdin asks for it
//! to be collapsed with MADV_HUGEPAGE + MADV_COLLAPSE (6.1+), and reports
//! the region's smaps AnonHugePages before and after.
//!
//! `pw-thp MIB [madvise|khugepaged|split] [TOUCH_PCT] [WAIT_S]`: touches
//! TOUCH_PCT percent (default 100) of each 2 MiB range, prints `pid N`,
//! `region START LEN` and `ready`; after a line on stdin, with `madvise`
//! (the default) calls MADV_COLLAPSE, with `khugepaged` only MADV_HUGEPAGE
//! and then waits up to WAIT_S (default 20) seconds for khugepaged to
//! collapse the whole region; prints
//! `collapse RC ERRNO before KB after KB`; exits when stdin closes.
//!
//! `split` instead faults the region in as THPs (MADV_HUGEPAGE), and after
//! the line unmaps the first 1 MiB of the first 2 MiB range and makes the
//! first 1 MiB of the second read-only, splitting both PMD mappings;
//! prints `split RC ERRNO before KB after KB` with the process's
//! smaps_rollup AnonHugePages. After one more line it calls MADV_COLD on
//! 64 KiB of the second range's writable half, which makes the kernel
//! split that (now PTE-mapped) folio, and prints `cold RC ERRNO
//! thp_split_page DELTA` with /proc/vmstat's count of folio splits.

use std::io::{BufRead as _, Write as _};

const PMD: usize = 2 << 20;
const MADV_COLLAPSE: libc::c_int = 25;

/// AnonHugePages (kB) of the VMA starting at `start`, from /proc/self/smaps.
fn anon_huge_kb(start: usize) -> u64 {
    pagewatch_tests::smaps(std::process::id())
        .into_iter()
        .find(|v| v.start == start as u64)
        .and_then(|v| v.kb.get("AnonHugePages").copied())
        .unwrap_or_else(|| panic!("no VMA at {start:#x} in smaps"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: pw-thp MIB [madvise|khugepaged|split] [TOUCH_PCT] [WAIT_S]");
        std::process::exit(2)
    };
    let mib: usize = args
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| usage());
    let (khugepaged, split) = match args.get(2).map(String::as_str) {
        None | Some("madvise") => (false, false),
        Some("khugepaged") => (true, false),
        Some("split") => (false, true),
        Some(_) => usage(),
    };
    let touch_pct: usize = args
        .get(3)
        .map_or(100, |s| s.parse().unwrap_or_else(|_| usage()));
    let wait_s: u64 = args
        .get(4)
        .map_or(20, |s| s.parse().unwrap_or_else(|_| usage()));
    let len = mib << 20;
    let start = pagewatch_tests::map_anon_pmd_aligned(len);
    // SAFETY: the region mapped above.
    unsafe {
        let advice = if split {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        assert_eq!(libc::madvise(start as *mut _, len, advice), 0);
    }
    for off in (0..len).step_by(4096) {
        if off % PMD < PMD * touch_pct / 100 {
            // SAFETY: inside the region.
            unsafe { ((start + off) as *mut u8).write_volatile(1) };
        }
    }
    println!("pid {}", std::process::id());
    println!("region {start} {len}");
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let _ = lines.next();
    if split {
        let pid = std::process::id();
        let before = pagewatch_tests::rollup(pid)["AnonHugePages"];
        // SAFETY: both ranges lie inside our own region.
        let (rc, errno) = unsafe {
            let mut rc = libc::munmap(start as *mut _, PMD / 2);
            if rc == 0 {
                rc = libc::mprotect((start + PMD) as *mut _, PMD / 2, libc::PROT_READ);
            }
            (rc, *libc::__errno_location())
        };
        let after = pagewatch_tests::rollup(pid)["AnonHugePages"];
        println!("split {rc} {errno} before {before} after {after}");
        std::io::stdout().flush().expect("flush");
        let _ = lines.next();
        let splits = pagewatch_tests::vmstat("thp_split_page");
        // SAFETY: madvise on our own region.
        let (rc, errno) = unsafe {
            let rc = libc::madvise((start + PMD + PMD / 2) as *mut _, 64 << 10, libc::MADV_COLD);
            (rc, *libc::__errno_location())
        };
        let splits = pagewatch_tests::vmstat("thp_split_page") - splits;
        println!("cold {rc} {errno} thp_split_page {splits}");
        std::io::stdout().flush().expect("flush");
        for _ in lines {}
        return;
    }
    let before = anon_huge_kb(start);
    // SAFETY: madvise on our own region.
    let (rc, errno) = unsafe {
        libc::madvise(start as *mut _, len, libc::MADV_HUGEPAGE);
        if khugepaged {
            (0, 0)
        } else {
            let rc = libc::madvise(start as *mut _, len, MADV_COLLAPSE);
            (rc, *libc::__errno_location())
        }
    };
    if khugepaged {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_s);
        while anon_huge_kb(start) < (len as u64 >> 10) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let after = anon_huge_kb(start);
    println!("collapse {rc} {errno} before {before} after {after}");
    std::io::stdout().flush().expect("flush");
    for _ in lines {}
}
