//! Fault workload with a known count: maps an anonymous region with
//! MADV_NOHUGEPAGE and touches each 4 KiB page once, measuring its own
//! minflt+majflt from /proc/self/stat around the touching.
//!
//! `pw-faults window MIB`: prints `pid N` and `ready` after a warm-up that
//! faults in everything the measured window uses, waits for a line on
//! stdin, runs the window, prints `delta D pages P`, then waits for stdin
//! to close before exiting (so a tracer sees no other faults from it);
//! each `touch` line meanwhile touches the region again and prints
//! `touched`, and each `pageout` line calls madvise(MADV_PAGEOUT) on the
//! first half of the region and prints `paged out RC`.
//!
//! `pw-faults rate MIB ROUNDS`: maps, touches and unmaps the region ROUNDS
//! times as fast as it can and prints `faults F seconds S` (benchmark).
//!
//! `pw-faults heap MIB`: raises the program break by MIB MiB with sbrk(2),
//! touches the new heap pages, prints `pid N` and `ready`; on a line from
//! stdin lowers the break back with sbrk and prints `shrunk`; exits when
//! stdin closes.

use std::{
    fs::File,
    io::{BufRead as _, Read as _, Seek as _, Write as _},
    time::Instant,
};

const PAGE: usize = 4096;

/// Sum of minflt and majflt from a /proc/self/stat read into `buf`.
fn faults(stat: &mut File, buf: &mut [u8]) -> u64 {
    stat.rewind().expect("rewind stat");
    let n = stat.read(buf).expect("read stat");
    let text = std::str::from_utf8(&buf[..n]).expect("utf8 stat");
    // Fields after the parenthesised comm: state is field 3; minflt 10, majflt 12.
    // No allocation here: the window must not fault on fresh heap pages.
    let mut f = text[text.rfind(')').expect("comm end") + 2..].split(' ');
    let minflt: u64 = f.nth(7).expect("minflt").parse().expect("minflt");
    let majflt: u64 = f.nth(1).expect("majflt").parse().expect("majflt");
    minflt + majflt
}

fn touch(p: *mut u8, len: usize) {
    for off in (0..len).step_by(PAGE) {
        // SAFETY: off < len, inside the mapping.
        unsafe { p.add(off).write_volatile(1) };
    }
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: p/len come from map().
    unsafe { libc::munmap(p.cast(), len) };
}

fn window(mib: usize) {
    use std::fmt::Write as _;
    let len = mib << 20;
    let mut stat = File::open("/proc/self/stat").expect("open /proc/self/stat");
    let mut buf = vec![0u8; 4096];
    let mut line = String::with_capacity(256);
    let mut out = String::with_capacity(256);
    let stdin = std::io::stdin();
    let mut stdin = stdin.lock();
    // Warm-up: run the whole window once on a small region so every code
    // and data page the real window touches is already present.
    let warm = pagewatch_tests::map_anon_4k(16 * PAGE);
    let a = faults(&mut stat, &mut buf);
    touch(warm, 16 * PAGE);
    let b = faults(&mut stat, &mut buf);
    unmap(warm, 16 * PAGE);
    // Write every byte of the line buffers the window uses.
    line.extend(std::iter::repeat_n(' ', line.capacity()));
    line.clear();
    write!(out, "warmup {} {}", b - a, " ".repeat(200)).expect("format");
    out.clear();
    // Read, here, the constant data the code after the window reads (its
    // format strings and the "touched" reply): a read-only page of this
    // binary first touched after the window's second /proc/self/stat read
    // would be a fault a tracer sees and the window's delta does not
    // (whether fault-around had mapped it varied with the binary's layout).
    writeln!(out, "delta {} pages {}", b - a, 16).expect("format");
    out.push_str("touched\n");
    out.clear();
    let region = pagewatch_tests::map_anon_4k(len);
    println!("pid {}", std::process::id());
    println!("ready");
    std::io::stdout().flush().expect("flush");
    line.clear();
    stdin.read_line(&mut line).expect("read go");
    let before = faults(&mut stat, &mut buf);
    touch(region, len);
    let after = faults(&mut stat, &mut buf);
    writeln!(out, "delta {} pages {}", after - before, len / PAGE).expect("format");
    std::io::stdout()
        .write_all(out.as_bytes())
        .expect("write result");
    std::io::stdout().flush().expect("flush");
    // Stay alive and quiet until told to go, touching again when asked.
    line.clear();
    while stdin.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if line.trim() == "touch" {
            touch(region, len);
            let mut stdout = std::io::stdout();
            stdout.write_all(b"touched\n").expect("write touched");
            stdout.flush().expect("flush");
        } else if line.trim() == "pageout" {
            // SAFETY: the first half of the mapping made above.
            let rc = unsafe { libc::madvise(region.cast(), len / 2, libc::MADV_PAGEOUT) };
            println!("paged out {rc}");
            std::io::stdout().flush().expect("flush");
        }
        line.clear();
    }
}

fn rate(mib: usize, rounds: usize) {
    let len = mib << 20;
    let start = Instant::now();
    for _ in 0..rounds {
        let p = pagewatch_tests::map_anon_4k(len);
        touch(p, len);
        unmap(p, len);
    }
    let secs = start.elapsed().as_secs_f64();
    println!("faults {} seconds {secs:.6}", rounds * len / PAGE);
}

fn heap(mib: usize) {
    let len = mib << 20;
    // SAFETY: sbrk grows the heap by `len` bytes, all ours; malloc
    // notices a foreign break and leaves that range alone.
    let p = unsafe { libc::sbrk(len as libc::intptr_t) };
    assert_ne!(p as isize, -1, "sbrk");
    touch(p.cast(), len);
    println!("pid {}", std::process::id());
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read line");
    // SAFETY: gives back exactly the range taken above.
    assert_ne!(unsafe { libc::sbrk(-(len as libc::intptr_t)) } as isize, -1);
    println!("shrunk");
    std::io::stdout().flush().expect("flush");
    while std::io::stdin()
        .read_line(&mut line)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> usize {
        args.get(i).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            eprintln!(
                "usage: pw-faults window MIB | pw-faults rate MIB ROUNDS | pw-faults heap MIB"
            );
            std::process::exit(2)
        })
    };
    match args.get(1).map(String::as_str) {
        Some("window") => window(num(2)),
        Some("rate") => rate(num(2), num(3)),
        Some("heap") => heap(num(2)),
        _ => {
            eprintln!(
                "usage: pw-faults window MIB | pw-faults rate MIB ROUNDS | pw-faults heap MIB"
            );
            std::process::exit(2)
        }
    }
}
