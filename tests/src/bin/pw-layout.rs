//! Workload for the snapshot tests: builds a known memory layout, prints
//! one `region NAME START LEN` line per region, then `ready`, and holds it
//! until stdin closes.
//!
//! Regions: `anon` (private anonymous, written, no THP), `zero` (anonymous,
//! only read: maps the zero page), `thp` (2 MiB-aligned MADV_HUGEPAGE,
//! written), `file` (a file mapped MAP_SHARED by this process and by a
//! forked child: first page written, the rest read), `hugetlb` (with
//! `--hugetlb`: MAP_HUGETLB 2 MiB, written) and `ksm` (with `--ksm`:
//! identical pages marked MADV_MERGEABLE).
//!
//! `pw-layout --vmas N` instead maps N small separate VMAs, prints `ready`
//! and holds them until stdin closes (the mid-scan exit test kills it while
//! pagewatch scans it).

use std::{
    io::{Read, Write},
    ptr,
};

const MIB: usize = 1 << 20;

/// Map `len` bytes followed by a PROT_NONE guard page, so that regions
/// mapped next to each other stay separate VMAs (hugetlb mappings never
/// merge with others and get none: the pool may hold just `len`).
fn map(len: usize, flags: i32) -> *mut u8 {
    let guard = if flags & libc::MAP_HUGETLB != 0 {
        0
    } else {
        4096
    };
    // SAFETY: anonymous mapping request with no address hint.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len + guard,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    assert!(
        p != libc::MAP_FAILED,
        "mmap {len}: {}",
        std::io::Error::last_os_error()
    );
    if guard > 0 {
        // SAFETY: the guard lies inside the mapping just made.
        let r = unsafe { libc::mprotect(p.cast::<u8>().add(len).cast(), guard, libc::PROT_NONE) };
        assert_eq!(r, 0, "mprotect guard: {}", std::io::Error::last_os_error());
    }
    p.cast()
}

fn madvise(p: *mut u8, len: usize, advice: i32) {
    // SAFETY: p..p+len is a mapping we own.
    let r = unsafe { libc::madvise(p.cast(), len, advice) };
    assert_eq!(
        r,
        0,
        "madvise {advice}: {}",
        std::io::Error::last_os_error()
    );
}

fn region(name: &str, p: *const u8, len: usize) {
    println!("region {name} {:x} {len}", p as usize);
}

fn write_pages(p: *mut u8, len: usize, value: u8) {
    for off in (0..len).step_by(4096) {
        // SAFETY: off < len inside our mapping.
        unsafe { p.add(off).write_volatile(value) };
    }
}

fn read_pages(p: *const u8, len: usize) -> u64 {
    (0..len)
        .step_by(4096)
        // SAFETY: off < len inside our mapping.
        .map(|off| u64::from(unsafe { p.add(off).read_volatile() }))
        .sum()
}

fn map_file(path: &str, len: usize) -> *mut u8 {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open shared file");
    use std::os::fd::AsRawFd;
    // SAFETY: shared mapping of an open file of at least len bytes.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert!(
        p != libc::MAP_FAILED,
        "mmap file: {}",
        std::io::Error::last_os_error()
    );
    p.cast()
}

fn wait_stdin() {
    let mut buf = [0u8; 64];
    while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
}

fn many_vmas(n: usize) {
    for i in 0..n {
        let p = map(4096, 0);
        // Alternate protections so neighbouring mappings never merge.
        let prot = if i % 2 == 0 {
            libc::PROT_READ
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: p is our 4 KiB mapping.
        unsafe { libc::mprotect(p.cast(), 4096, prot) };
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    wait_stdin();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    if let Some(n) = opt("--vmas") {
        many_vmas(n.parse().unwrap());
        return;
    }
    let anon = map(4 * MIB, 0);
    madvise(anon, 4 * MIB, libc::MADV_NOHUGEPAGE);
    write_pages(anon, 4 * MIB, 1);
    region("anon", anon, 4 * MIB);

    let zero = map(MIB, 0);
    madvise(zero, MIB, libc::MADV_NOHUGEPAGE);
    read_pages(zero, MIB);
    region("zero", zero, MIB);

    let raw = map(6 * MIB, libc::MAP_NORESERVE);
    let aligned = ((raw as usize + 2 * MIB - 1) & !(2 * MIB - 1)) as *mut u8;
    madvise(aligned, 2 * MIB, libc::MADV_HUGEPAGE);
    write_pages(aligned, 2 * MIB, 2);
    region("thp", aligned, 2 * MIB);

    let mut child = None;
    if let Some(path) = opt("--file") {
        let len = MIB;
        let p = map_file(&path, len);
        // SAFETY: fork in a single-threaded program; the child only touches
        // its own copy of the mapping and sleeps.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: prctl with PR_SET_PDEATHSIG has no memory arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            read_pages(p, len);
            loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            }
        }
        read_pages(p, len);
        write_pages(p, 4096, 3);
        child = Some(pid);
        region("file", p, len);
        println!("child {pid}");
    }
    if args.iter().any(|a| a == "--hugetlb") {
        let p = map(2 * MIB, libc::MAP_HUGETLB);
        write_pages(p, 2 * MIB, 4);
        region("hugetlb", p, 2 * MIB);
    }
    if args.iter().any(|a| a == "--ksm") {
        let len = 2 * MIB;
        let p = map(len, 0);
        madvise(p, len, libc::MADV_NOHUGEPAGE);
        for off in (0..len).step_by(4096) {
            // SAFETY: inside our mapping.
            unsafe { ptr::write_bytes(p.add(off), 0x5a, 4096) };
        }
        madvise(p, len, libc::MADV_MERGEABLE);
        region("ksm", p, len);
    }
    println!("pid {}", std::process::id());
    println!("ready");
    std::io::stdout().flush().unwrap();
    wait_stdin();
    if let Some(pid) = child {
        // SAFETY: pid is our child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, ptr::null_mut(), 0);
        }
    }
}
