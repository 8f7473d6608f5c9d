//! Thread-group workload: `pw-threads THREADS MIB` prints `pid PID`,
//! starts THREADS threads and ends its leader thread (the exit system
//! call, as pthread_exit does) at once. Each thread waits until the leader has exited, then writes MIB of
//! its own anonymous memory (4 KiB pages); the last to finish prints
//! `ready` and waits for stdin to close. Then every thread exits, the last
//! one printing `faults MINFLT MAJFLT` (the whole process's, from
//! /proc/self/stat) just before: one process, its leader gone first.

use std::{
    io::{Read as _, Write as _},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

static FAULTED: AtomicUsize = AtomicUsize::new(0);
static LEFT: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// Whether the leader thread `tgid` has exited (a zombie, or gone).
fn leader_exited(tgid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/self/task/{tgid}/stat")) {
        Err(_) => true,
        Ok(s) => matches!(&s[s.rfind(')').expect("comm end") + 2..][..1], "Z" | "X"),
    }
}

fn worker(threads: usize, len: usize) {
    let tgid = std::process::id();
    while !leader_exited(tgid) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let p = pagewatch_tests::map_anon_4k(len);
    for off in (0..len).step_by(4096) {
        // SAFETY: off < len inside the mapping.
        unsafe { p.add(off).write_volatile(1) };
    }
    if FAULTED.fetch_add(1, Ordering::SeqCst) + 1 == threads {
        println!("ready");
        std::io::stdout().flush().expect("flush");
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
        STOP.store(true, Ordering::SeqCst);
    }
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    if LEFT.fetch_add(1, Ordering::SeqCst) + 1 == threads {
        let (min, maj) = pagewatch_tests::own_faults();
        println!("faults {min} {maj}");
        std::io::stdout().flush().expect("flush");
    }
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let (Some(Ok(threads)), Some(Ok(mib))) = (args.next(), args.next()) else {
        eprintln!("usage: pw-threads THREADS MIB");
        std::process::exit(2)
    };
    println!("pid {}", std::process::id());
    std::io::stdout().flush().expect("flush");
    for _ in 0..threads {
        std::thread::spawn(move || worker(threads, mib << 20));
    }
    // The exit system call (not exit_group) ends only this, the leader,
    // thread; the process lives on in the others and exits with status 0
    // when the last one returns. (pthread_exit would unwind through Rust's
    // main, which aborts.)
    // SAFETY: no Rust state of this thread is used after it ends.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("exit returned")
}
