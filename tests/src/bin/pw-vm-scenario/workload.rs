//! The workloads the scenarios start (this binary re-run with a workload
//! subcommand) and [`Child`], the handle a scenario holds on one: it
//! reads the workload's lines up to `ready`, can send it commands on stdin,
//! and kills it on drop.

use std::{
    io::{BufRead as _, BufReader, Lines, Read as _, Write as _},
    process::{ChildStdin, ChildStdout, Command, Stdio},
    ptr,
};

use crate::host::Result;

const MIB: usize = 1 << 20;
const HUGE: usize = 2 * MIB;
/// MADV_COLLAPSE (Linux 6.1), not in every libc crate version.
const MADV_COLLAPSE: i32 = 25;

/// A running workload.
pub struct Child {
    child: std::process::Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pub pid: u32,
}

impl Child {
    /// Starts `pw-vm-scenario ARGS` and waits for its `ready` line.
    pub fn start(args: &[&str]) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn workload {args:?}: {e}"))?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let pid = child.id();
        let mut c = Child {
            child,
            stdin,
            lines,
            pid,
        };
        c.expect("ready")?;
        Ok(c)
    }

    /// Reads lines until one equals `want`; a line starting with `error`
    /// or the end of output fails.
    pub fn expect(&mut self, want: &str) -> Result {
        for line in self.lines.by_ref() {
            let line = line.map_err(|e| format!("reading workload {}: {e}", self.pid))?;
            if line == want {
                return Ok(());
            }
            if line.starts_with("error") {
                return Err(format!("workload {}: {line}", self.pid));
            }
            println!("  [workload {}] {line}", self.pid);
        }
        Err(format!("workload {} exited before {want:?}", self.pid))
    }

    /// Sends one command line.
    pub fn send(&mut self, line: &str) -> Result {
        let stdin = self.stdin.as_mut().ok_or("workload stdin closed")?;
        writeln!(stdin, "{line}").map_err(|e| format!("write to workload {}: {e}", self.pid))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn map(len: usize, flags: i32) -> Result<*mut u8> {
    // SAFETY: anonymous mapping request with no address hint.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap {len}: {}", std::io::Error::last_os_error()));
    }
    Ok(p.cast())
}

fn madvise(p: *mut u8, len: usize, advice: i32) -> Result {
    // SAFETY: p..p+len lies in a mapping we own.
    if unsafe { libc::madvise(p.cast(), len, advice) } != 0 {
        return Err(format!(
            "madvise({advice}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Writes the page index into the first word of every page: the pages
/// differ (no same-filled shortcut in zram) but compress well.
fn fill(p: *mut u8, len: usize) {
    for (i, off) in (0..len).step_by(4096).enumerate() {
        // SAFETY: off + 8 <= len inside our mapping; pages are 4 KiB aligned.
        unsafe { p.add(off).cast::<u64>().write_volatile(i as u64 + 1) };
    }
}

/// A 2 MiB aligned anonymous region of `len` bytes.
fn map_aligned(len: usize) -> Result<*mut u8> {
    let raw = map(len + HUGE, libc::MAP_NORESERVE)?;
    Ok(raw.wrapping_add(raw.align_offset(HUGE)))
}

fn ready_and_wait() -> Result {
    println!("ready");
    std::io::stdout().flush().ok();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// `hold MIB [NODE]`: MIB of written anonymous 4 KiB pages (allocated on
/// NUMA node NODE if given), held until stdin closes.
pub fn hold(args: &[String]) -> Result {
    let mib: usize = args
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or("usage: hold MIB [NODE]")?;
    if let Some(node) = args.get(1).and_then(|s| s.parse().ok()) {
        bind_to(node)?;
    }
    let p = map_aligned(mib * MIB)?;
    madvise(p, mib * MIB, libc::MADV_NOHUGEPAGE)?;
    fill(p, mib * MIB);
    ready_and_wait()
}

/// Binds this process's future allocations to NUMA node `node`.
fn bind_to(node: u32) -> Result {
    let mask: u64 = 1 << node;
    // SAFETY: set_mempolicy reads `mask` (64 bits) for the call only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_set_mempolicy,
            libc::MPOL_BIND,
            &mask as *const u64,
            64u64,
        )
    };
    if r != 0 {
        println!(
            "error set_mempolicy(MPOL_BIND, node {node}): {}",
            std::io::Error::last_os_error()
        );
        return Err("set_mempolicy failed".into());
    }
    Ok(())
}

/// `hugetlb-child N NODE`: binds its memory to NODE, maps N 2 MiB hugetlb
/// pages and writes them.
pub fn hugetlb_child(args: &[String]) -> Result {
    let n: usize = args
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or("usage: hugetlb-child N NODE")?;
    let node: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
    bind_to(node)?;
    let p = match map(n * HUGE, libc::MAP_HUGETLB) {
        Ok(p) => p,
        Err(e) => {
            println!("error {e}");
            return Err(e);
        }
    };
    fill(p, n * HUGE);
    println!("region {:x} {}", p as usize, n * HUGE);
    ready_and_wait()
}

/// `thp-child`: region A (4 MiB) faulted in under THP `always`; region B
/// (4 MiB) faulted in as 4 KiB pages (MADV_NOHUGEPAGE), then advised
/// MADV_HUGEPAGE. On the line `collapse` it runs MADV_COLLAPSE on B and
/// prints `collapsed` (or `error ...`).
pub fn thp_child() -> Result {
    let len = 4 * MIB;
    let a = map_aligned(2 * len)?;
    let b = a.wrapping_add(len);
    madvise(b, len, libc::MADV_NOHUGEPAGE)?;
    fill(a, len);
    fill(b, len);
    madvise(b, len, libc::MADV_HUGEPAGE)?;
    println!("region a {:x} {len}", a as usize);
    println!("region b {:x} {len}", b as usize);
    println!("ready");
    std::io::stdout().flush().ok();
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { break };
        if line.trim() == "collapse" {
            let mut last = String::new();
            let mut done = false;
            // EAGAIN is possible when a page is briefly pinned: retry a little.
            for _ in 0..5 {
                match madvise(b, len, MADV_COLLAPSE) {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(e) => last = e,
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if done {
                println!("collapsed");
            } else {
                println!("error MADV_COLLAPSE: {last}");
            }
            std::io::stdout().flush().ok();
        }
    }
    Ok(())
}
