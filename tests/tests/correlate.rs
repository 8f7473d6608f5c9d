//! Integration tests of the correlator against the running kernel: page
//! state transitions seen in snapshots, attributed through the events of
//! the interval, checked against the kernel's own smaps accounting. These
//! tests change global state (swap devices, memory cgroups, KSM knobs) and
//! restore it on drop; they run one at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    time::Duration,
};

use pagewatch::output::SnapshotWork;
use pagewatch_tests::{
    Cause, Item, Knobs, MemCgroup, ReportLine, TopLine, Tracer, TransitionGroup, TransitionKind,
    json_lines, skip, skip_unless_root, summary, top_transitions,
};
use serde_json::Value;

fn transitions(lines: &[TopLine], pid: u32, kind: TransitionKind) -> Vec<&TransitionGroup> {
    top_transitions(lines)
        .filter(|t| t.pid == pid && t.kind == kind)
        .collect()
}

fn pages(ts: &[&TransitionGroup]) -> u64 {
    ts.iter().map(|t| t.pages).sum()
}

/// A workload's stdout, line by line.
type Lines = std::io::Lines<BufReader<ChildStdout>>;
/// A started workload: (child, its stdin, its stdout's lines, its pid).
type Piped = (std::process::Child, ChildStdin, Lines, u32);

/// Starts `program ARGS` with stdin and stdout piped and reads its first
/// line, `pid N`: (child, its stdin, its stdout's lines, N).
fn start_piped(program: &str, args: &[&str]) -> Piped {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid = out.next().unwrap().unwrap()[4..].parse().unwrap();
    (child, stdin, out, pid)
}

/// `pw-thp ARGS` started as [`start_piped`] does, past its `region START
/// LEN` and `ready` lines: (child, stdin, stdout's lines, pid, START).
fn start_pw_thp(args: &[&str]) -> (std::process::Child, ChildStdin, Lines, u32, u64) {
    let (child, stdin, mut out, pid) = start_piped(env!("CARGO_BIN_EXE_pw-thp"), args);
    let line = out.next().unwrap().unwrap();
    let region = line.split(' ').nth(1).and_then(|r| r.parse().ok());
    let region = region.unwrap_or_else(|| panic!("not `region START LEN`: {line}"));
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    (child, stdin, out, pid, region)
}

/// Skip (returning true) unless running as root on a kernel with the
/// tracepoint `category/name` the test is about.
fn skip_unless_root_and_tracepoint(test: &str, tracepoint: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    let present = Path::new("/sys/kernel/tracing/events")
        .join(tracepoint)
        .exists();
    if !present {
        skip(test, &format!("no {tracepoint} tracepoint"));
    }
    !present
}

/// zram0 as a swap device for the test; swapped off and reset on drop.
struct ZramSwap;

impl ZramSwap {
    fn setup(size: &str) -> Result<Self, String> {
        let dev = Path::new("/sys/block/zram0");
        if !dev.exists() {
            let _ = Command::new("modprobe").arg("zram").status();
        }
        let disksize = std::fs::read_to_string(dev.join("disksize"))
            .map_err(|e| format!("no zram device: {e}"))?;
        if disksize.trim() != "0" {
            return Err("zram0 is already in use; not touching it".into());
        }
        std::fs::write(dev.join("disksize"), size).map_err(|e| format!("zram disksize: {e}"))?;
        let guard = ZramSwap;
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkswap")
            .arg("/dev/zram0")
            .stdout(Stdio::null()))
        {
            return Err("mkswap /dev/zram0 failed".into());
        }
        if !ok(Command::new("swapon").arg("/dev/zram0")) {
            return Err("swapon /dev/zram0 failed".into());
        }
        Ok(guard)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg("/dev/zram0").status();
        let _ = std::fs::write("/sys/block/zram0/reset", "1");
    }
}

/// A workload pushing anonymous memory through a 64 MiB memory cgroup
/// limit into a zram swap device, traced; the workload, the cgroup and the
/// swap device go away on drop, in that order.
struct Swapping {
    tracer: Option<Tracer>,
    stdin: Option<std::process::ChildStdin>,
    out: std::io::Lines<BufReader<std::process::ChildStdout>>,
    child: std::process::Child,
    pid: u32,
    started: std::time::Instant,
    cg: MemCgroup,
    _swap: ZramSwap,
}

impl Swapping {
    /// Starts `pw-faults window MIB` in the cgroup under a tracer, lets it
    /// touch its region once and two more snapshots see the result; None
    /// (after saying why) where swap or memory cgroups are missing.
    fn start(name: &str, mib: &str) -> Option<Self> {
        let swap = match ZramSwap::setup("1G") {
            Ok(s) => s,
            Err(why) => {
                skip(name, &why);
                return None;
            }
        };
        let Some(cg) = MemCgroup::create(64 << 20) else {
            skip(name, "no cgroup v1 memory controller");
            return None;
        };
        let (child, mut stdin, mut out, pid) =
            start_piped(env!("CARGO_BIN_EXE_pw-faults"), &["window", mib]);
        assert_eq!(out.next().unwrap().unwrap(), "ready");
        cg.add(pid);
        let started = std::time::Instant::now();
        let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
        writeln!(stdin, "go").unwrap();
        let result = out.next().unwrap().unwrap();
        assert!(result.starts_with("delta "), "{result}");
        // Let two more snapshots see the final state.
        std::thread::sleep(Duration::from_millis(900));
        Some(Self {
            tracer: Some(tracer),
            stdin: Some(stdin),
            out,
            child,
            pid,
            started,
            cg,
            _swap: swap,
        })
    }

    /// Stops the tracer, returning its lines.
    fn stop_tracer(&mut self) -> Vec<TopLine> {
        self.tracer.take().expect("tracing").stop()
    }
}

impl Drop for Swapping {
    fn drop(&mut self) {
        drop(self.tracer.take());
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Anonymous memory pushed to swap by a memory cgroup limit: the swapped-out
/// transitions name the process and memcg reclaim, and their net total
/// equals the Swap the kernel reports for the process in smaps_rollup.
#[test]
fn swap_out_under_a_memcg_limit_is_attributed_and_matches_smaps() {
    let name = "swap_out_under_a_memcg_limit_is_attributed_and_matches_smaps";
    if skip_unless_root(name) {
        return;
    }
    let Some(mut w) = Swapping::start(name, "192") else {
        return;
    };
    let pid = w.pid;
    let swap_kb = pagewatch_tests::rollup(pid)["Swap"];
    let lines = w.stop_tracer();
    drop(w);
    assert!(
        swap_kb > 100 << 10,
        "192 MiB through a 64 MiB limit swaps >100 MiB, smaps says {swap_kb} kB"
    );
    let out_t = transitions(&lines, pid, TransitionKind::SwappedOut);
    let in_t = transitions(&lines, pid, TransitionKind::SwappedIn);
    let net = pages(&out_t) as i64 - pages(&in_t) as i64;
    assert_eq!(
        net,
        (swap_kb / 4) as i64,
        "net swapped-out pages vs smaps Swap"
    );
    let other: Vec<_> = out_t
        .iter()
        .filter(|t| t.cause != Cause::MemcgReclaim)
        .collect();
    // Each interval's reclaim lines, to tell what the odd group lacked.
    let reclaim: Vec<String> = lines
        .iter()
        .filter_map(|l| l.system())
        .map(|s| format!("t={} dropped={} {:?}", s.t, s.dropped, s.system))
        .collect();
    assert!(
        other.is_empty(),
        "swap-outs under the cgroup limit are memcg reclaim; {} of {} groups are not: {other:#?}; \
         every swap-out: {out_t:?}; each interval's system counts: {reclaim:#?}",
        other.len(),
        out_t.len()
    );
}

/// Pages swapped out under a memory cgroup limit and touched again once
/// the limit is raised come back from the swap slots pagemap named: every
/// page back in the region is a round trip, as many as smaps Swap of the
/// region lost (and no more than vmstat pswpin counted), each with a time
/// in swap above zero and within the run.
#[test]
fn swap_round_trips_are_matched_by_swap_slot_with_their_time_in_swap() {
    let name = "swap_round_trips_are_matched_by_swap_slot_with_their_time_in_swap";
    if skip_unless_root(name) {
        return;
    }
    let Some(mut w) = Swapping::start(name, "128") else {
        return;
    };
    let pid = w.pid;
    let region_swap_kb = |pid: u32| -> (u64, u64) {
        let v = pagewatch_tests::smaps(pid)
            .into_iter()
            .filter(|v| v.name.is_empty())
            .max_by_key(|v| v.kb["Size"])
            .expect("the 128 MiB region");
        (v.start, v.kb["Swap"])
    };
    let (region, swap_before) = region_swap_kb(pid);
    let pswpin = pagewatch_tests::vmstat("pswpin");
    w.cg.set_limit(1 << 30);
    writeln!(w.stdin.as_mut().unwrap(), "touch").unwrap();
    assert_eq!(w.out.next().unwrap().unwrap(), "touched");
    std::thread::sleep(Duration::from_millis(900));
    let (_, swap_after) = region_swap_kb(pid);
    let pswpin = pagewatch_tests::vmstat("pswpin") - pswpin;
    let lines = w.stop_tracer();
    let elapsed_ns = w.started.elapsed().as_nanos() as u64;
    drop(w);
    assert!(
        swap_before > 32 << 10,
        "128 MiB through a 64 MiB limit swaps >32 MiB of the region, smaps says {swap_before} kB"
    );
    assert_eq!(swap_after, 0, "touching the region brought it all back");
    let returns: Vec<_> = lines
        .iter()
        .filter_map(|l| match l.item() {
            Some(Item::SwapReturns(r)) if r.pid == pid => Some(r),
            _ => None,
        })
        .collect();
    let in_region: Vec<_> = returns.iter().filter(|r| r.vma_start == region).collect();
    let trips: u64 = in_region.iter().map(|r| r.pages).sum();
    // On a miss: what the region's pages went through instead, the drops,
    // and the longest interval (a stalled collector sees a swap-out and
    // the swap-in after it as one refault).
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for t in top_transitions(&lines).filter(|t| t.pid == pid && t.vma_start == region) {
        *kinds.entry(format!("{}/{}", t.kind, t.cause)).or_default() += t.pages;
    }
    let times: Vec<f64> = lines
        .iter()
        .filter_map(|l| match l {
            TopLine::System(s) => Some(s.t),
            _ => None,
        })
        .collect();
    let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert_eq!(
        trips,
        (swap_before - swap_after) / 4,
        "round trips vs smaps Swap of the region; the region's transitions {kinds:?}, \
         {} events dropped, longest interval {longest:.1} s",
        summary(&lines).dropped
    );
    // Not pswpin >= trips: a page faulted back from the swap cache comes
    // back without a read (7.3 guests: 18,884 round trips, pswpin +16,471);
    // smaps Swap above is the exact oracle.
    assert!(pswpin > 0, "the touch read pages back from swap");
    let all_trips: u64 = returns.iter().map(|r| r.pages).sum();
    assert_eq!(
        all_trips,
        pages(&transitions(&lines, pid, TransitionKind::SwappedIn)),
        "every page swapped in was seen going out"
    );
    let total_ns: u64 = in_region.iter().map(|r| r.time_in_swap_ns).sum();
    eprintln!(
        "{name}: region Swap {swap_before} -> {swap_after} kB, pswpin +{pswpin}, \
         {trips} round trips, {:.2} s in swap on average, run {:.2} s",
        total_ns as f64 / trips.max(1) as f64 / 1e9,
        elapsed_ns as f64 / 1e9
    );
    for r in &in_region {
        let (total, max, n) = (r.time_in_swap_ns, r.max_ns, r.pages);
        assert!(total > 0 && max > 0 && max <= elapsed_ns, "{r:?}");
        assert!(total / n <= max, "{r:?}");
    }
}

/// process_madvise(2) of `len` bytes at `start` in `pid` through a pidfd:
/// the bytes advised, or -1.
fn process_madvise(pid: u32, start: u64, len: u64, advice: libc::c_int) -> i64 {
    // SAFETY: pidfd_open, then process_madvise with one valid iovec (the
    // range is in the other process, which the kernel checks); the pidfd
    // is closed after.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(pidfd >= 0, "pidfd_open({pid})");
        let iov = libc::iovec {
            iov_base: start as *mut _,
            iov_len: len as usize,
        };
        let n = libc::syscall(libc::SYS_process_madvise, pidfd, &iov, 1, advice, 0);
        libc::close(pidfd);
        n
    }
}

/// Pages of `pid` in swap among the `pages` pages from `addr`, by its
/// pagemap (bit 62).
fn swapped_pages(pid: u32, addr: u64, pages: u64) -> u64 {
    use std::os::unix::fs::FileExt as _;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("open pagemap");
    let mut buf = vec![0u8; pages as usize * 8];
    f.read_exact_at(&mut buf, addr / 4096 * 8)
        .expect("read pagemap");
    buf.chunks(8)
        .filter(|c| u64::from_ne_bytes((*c).try_into().unwrap()) >> 62 & 1 == 1)
        .count() as u64
}

/// Reclaim asked for, with no memory pressure: the process pages out the
/// first half of a region with madvise(MADV_PAGEOUT), and this test the
/// second half with process_madvise(MADV_PAGEOUT) through a pidfd. Every
/// page the kernel put in swap (the process's pagemap says which) is
/// `swapped_out` by `madv_pageout`, those of the second half too, whose
/// call came from a process pagewatch does not follow.
#[test]
fn pageout_by_madvise_and_process_madvise_is_attributed() {
    let name = "pageout_by_madvise_and_process_madvise_is_attributed";
    if skip_unless_root_and_tracepoint(name, "syscalls/sys_enter_process_madvise") {
        return;
    }
    let _swap = match ZramSwap::setup("512M") {
        Ok(s) => s,
        Err(why) => return skip(name, &why),
    };
    const MIB: u64 = 64;
    let (mut child, mut stdin, mut out, pid) = start_piped(
        env!("CARGO_BIN_EXE_pw-faults"),
        &["window", &MIB.to_string()],
    );
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
    writeln!(stdin, "go").unwrap();
    assert!(out.next().unwrap().unwrap().starts_with("delta "));
    std::thread::sleep(Duration::from_millis(700));
    writeln!(stdin, "pageout").unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "paged out 0");
    let region = pagewatch_tests::smaps(pid)
        .into_iter()
        .find(|v| v.name.is_empty() && v.kb["Size"] == MIB << 10)
        .expect("the region in smaps")
        .start;
    let half = MIB << 19;
    assert_eq!(
        process_madvise(pid, region + half, half, libc::MADV_PAGEOUT),
        half as i64,
        "process_madvise advised the second half"
    );
    std::thread::sleep(Duration::from_millis(900));
    let first = swapped_pages(pid, region, half / 4096);
    let second = swapped_pages(pid, region + half, half / 4096);
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    for t in transitions(&lines, pid, TransitionKind::SwappedOut) {
        *seen.entry(t.cause.to_string()).or_default() += t.pages;
    }
    eprintln!("{name}: in swap {first} + {second} pages; swapped_out by cause {seen:?}");
    // zram takes them all where memory is plenty; not every page is
    // asserted, what the kernel put in swap is the oracle.
    assert!(
        first > 0 && second > 0,
        "MADV_PAGEOUT swapped nothing: {first} + {second}"
    );
    assert_eq!(
        seen,
        std::collections::BTreeMap::from([("madv_pageout".to_string(), first + second)]),
        "every page in swap went out by madv_pageout"
    );
}

/// A collapse asked for by another process: this test collapses a
/// region of 4 KiB pages with process_madvise(MADV_COLLAPSE). Its
/// collapse events fire in this (unfollowed) process's context: every
/// page the region gained as THP (smaps AnonHugePages) is
/// `collapsed_to_thp` by `madv_collapse`, but those khugepaged collapsed
/// first (its pages_collapsed counter says how many).
#[test]
fn collapse_by_process_madvise_is_madv_collapse() {
    let name = "collapse_by_process_madvise_is_madv_collapse";
    if skip_unless_root_and_tracepoint(name, "syscalls/sys_enter_process_madvise") {
        return;
    }
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        return skip(name, "THP disabled (transparent_hugepage/enabled is never)");
    }
    const MIB: u64 = 8;
    // MADV_HUGEPAGE only, no wait for khugepaged.
    let (mut child, mut stdin, mut out, pid, region) =
        start_pw_thp(&[&MIB.to_string(), "khugepaged", "100", "0"]);
    let collapsed = "/sys/kernel/mm/transparent_hugepage/khugepaged/pages_collapsed";
    let by_khugepaged = pagewatch_tests::read_u64(collapsed).unwrap_or(0);
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
    writeln!(stdin, "go").unwrap();
    assert!(out.next().unwrap().unwrap().starts_with("collapse "));
    let rc = process_madvise(pid, region, MIB << 20, 25);
    std::thread::sleep(Duration::from_millis(900));
    let huge_kb = pagewatch_tests::smaps(pid)
        .into_iter()
        .find(|v| v.start == region)
        .expect("the region in smaps")
        .kb["AnonHugePages"];
    let by_khugepaged = pagewatch_tests::read_u64(collapsed).unwrap_or(0) - by_khugepaged;
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    for t in transitions(&lines, pid, TransitionKind::CollapsedToThp) {
        *seen.entry(t.cause.to_string()).or_default() += t.pages;
    }
    eprintln!(
        "{name}: process_madvise {rc}, AnonHugePages {huge_kb} kB, \
         khugepaged collapsed {by_khugepaged} meanwhile; collapsed_to_thp by cause {seen:?}"
    );
    if rc < 0 {
        return skip(
            name,
            "process_madvise(MADV_COLLAPSE) failed (before 6.1, or no THP to be had)",
        );
    }
    assert_eq!(huge_kb, MIB << 10, "the whole region is THP");
    // khugepaged's counter counts other processes' collapses too: its
    // share here is at most what it counted.
    let get = |c: &str| seen.get(c).copied().unwrap_or(0);
    let (madv, khugepaged) = (get("madv_collapse"), get("khugepaged"));
    assert_eq!(madv + khugepaged, huge_kb / 4, "collapsed pages: {seen:?}");
    assert!(khugepaged <= by_khugepaged * 512, "khugepaged: {seen:?}");
    assert!(madv > 0 || by_khugepaged >= 4, "madv_collapse: {seen:?}");
}

/// A heap given back by lowering the program break (what malloc does
/// when the top of its heap is free): the `[heap]` pages gone are
/// `unmapped` by `brk`, as many as smaps says the heap's Rss lost.
#[test]
fn heap_given_back_with_brk_is_unmapped_by_brk() {
    let name = "heap_given_back_with_brk_is_unmapped_by_brk";
    if skip_unless_root_and_tracepoint(name, "syscalls/sys_enter_brk") {
        return;
    }
    const MIB: u64 = 32;
    let (mut child, mut stdin, mut out, pid) =
        start_piped(env!("CARGO_BIN_EXE_pw-faults"), &["heap", &MIB.to_string()]);
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    let heap_rss = || {
        pagewatch_tests::smaps(pid)
            .into_iter()
            .find(|v| v.name == "[heap]")
            .map_or(0, |v| v.kb["Rss"])
    };
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
    std::thread::sleep(Duration::from_millis(700));
    let before = heap_rss();
    writeln!(stdin, "shrink").unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "shrunk");
    let after = heap_rss();
    std::thread::sleep(Duration::from_millis(900));
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    for t in transitions(&lines, pid, TransitionKind::Unmapped) {
        *seen
            .entry(format!("{} by {}", t.vma_label(), t.cause))
            .or_default() += t.pages;
    }
    eprintln!("{name}: heap Rss {before} -> {after} kB; unmapped {seen:?}");
    assert!(before - after >= MIB << 10, "the heap shrank by {MIB} MiB");
    assert_eq!(
        seen,
        std::collections::BTreeMap::from([("[heap] by brk".to_string(), (before - after) / 4)]),
        "unmapped pages"
    );
}

/// Pages of `pid` currently merged by KSM (/proc/PID/ksm_merging_pages).
fn ksm_merging(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/ksm_merging_pages"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Two processes with identical MADV_MERGEABLE pages: both get ksm_merged
/// transitions caused by KSM, as many as the kernel says each has merged.
#[test]
fn ksm_merge_between_two_processes_is_reported_for_both() {
    let name = "ksm_merge_between_two_processes_is_reported_for_both";
    if skip_unless_root(name) {
        return;
    }
    if !Path::new("/proc/self/ksm_merging_pages").exists() {
        return skip(
            name,
            "no CONFIG_KSM (or a kernel before 5.19 without ksm_merging_pages)",
        );
    }
    if let Some(bug) = pagewatch_tests::kpageflags_ksm_bug() {
        return skip(name, &bug);
    }
    let start = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pw-ksm"))
            .arg("4")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pw-ksm");
        let mut out = BufReader::new(c.stdout.take().unwrap()).lines();
        let pid: u32 = out.next().unwrap().unwrap()[4..].parse().unwrap();
        assert_eq!(out.next().unwrap().unwrap(), "ready");
        (c, pid)
    };
    let (mut a, pa) = start();
    let (mut b, pb) = start();
    let tracer = Tracer::start(&[
        "--pid",
        &pa.to_string(),
        "--pid",
        &pb.to_string(),
        "--events",
        "ksm,faults",
        "--interval",
        "300ms",
    ]);
    let Some(knobs) = Knobs::set(&[
        ("/sys/kernel/mm/ksm/pages_to_scan", "5000"),
        ("/sys/kernel/mm/ksm/sleep_millisecs", "10"),
        ("/sys/kernel/mm/ksm/run", "1"),
    ]) else {
        return skip(name, "cannot set /sys/kernel/mm/ksm knobs");
    };
    let want = 1024; // 4 MiB of pages, each identical to the other process's
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while (ksm_merging(pa) < want || ksm_merging(pb) < want) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ma, mb) = (ksm_merging(pa), ksm_merging(pb));
    // Freeze the state: stop ksmd (merged pages stay merged), let two
    // snapshots see it.
    drop(knobs);
    std::thread::sleep(Duration::from_millis(900));
    let lines = tracer.stop();
    let ksm_hooks = !summary(&lines)
        .skipped_hooks
        .iter()
        .any(|h| h.hook == "ksm_merge_one");
    for c in [&mut a, &mut b] {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    assert!(
        ma >= want && mb >= want,
        "KSM merged {ma} and {mb} pages, wanted {want} each"
    );
    for (pid, merged) in [(pa, ma), (pb, mb)] {
        let t = transitions(&lines, pid, TransitionKind::KsmMerged);
        let all: Vec<_> = top_transitions(&lines).filter(|t| t.pid == pid).collect();
        assert_eq!(
            pages(&t),
            merged,
            "pid {pid}: ksm_merged pages vs ksm_merging_pages; its transitions: {all:?}"
        );
        let causes: Vec<Cause> = t.iter().map(|t| t.cause).collect();
        // Without the ksm tracepoints (before 6.4) no event explains the
        // merge, and pagewatch must not guess.
        let expected = if ksm_hooks {
            Cause::Ksm
        } else {
            Cause::Unexplained
        };
        assert!(
            causes.iter().all(|c| *c == expected),
            "pid {pid}: {causes:?}, expected {expected}"
        );
    }
    if !ksm_hooks {
        skip(
            &format!("{name} (cause part)"),
            "this kernel has no ksm tracepoints (6.4+): merges are seen, their cause is unexplained",
        );
    }
}

/// khugepaged's knobs set for a fast scan, restored on drop.
fn fast_khugepaged(max_ptes_none: &str) -> Option<Knobs> {
    const DIR: &str = "/sys/kernel/mm/transparent_hugepage/khugepaged";
    let files: Vec<String> = [
        "scan_sleep_millisecs",
        "alloc_sleep_millisecs",
        "pages_to_scan",
        "max_ptes_none",
    ]
    .iter()
    .map(|k| format!("{DIR}/{k}"))
    .collect();
    // Other processes' memory (a VM, a benchmark's GiBs) may be queued for
    // khugepaged before ours: scan 4 GiB of address space per wake-up so a
    // full pass, which reaches our region, takes well under a second.
    let values = ["50", "50", "1048576", max_ptes_none];
    let settings: Vec<(&str, &str)> = files.iter().map(String::as_str).zip(values).collect();
    Knobs::set(&settings)
}

/// What a pw-thp run under a tracer saw.
struct ThpRun {
    pid: u32,
    region: u64,
    /// smaps AnonHugePages (kB) before and after the workload's action.
    before: u64,
    after: u64,
    /// /proc/vmstat thp_split_pmd across the action (system-wide).
    split_pmd: u64,
    /// The `cold` line of split mode's second step.
    cold: Option<String>,
    lines: Vec<TopLine>,
}

/// Runs `pw-thp ARGS` under a tracer (following `--events thp,faults`),
/// lets it act, and lets two more snapshots see the result.
fn pw_thp_run(args: &[&str]) -> ThpRun {
    let (mut child, mut stdin, mut out, pid, region) = start_pw_thp(args);
    let tracer = Tracer::start(&[
        "--pid",
        &pid.to_string(),
        "--events",
        "thp,faults",
        "--interval",
        "300ms",
    ]);
    let split_before = pagewatch_tests::vmstat("thp_split_pmd");
    writeln!(stdin, "go").unwrap();
    let result = out.next().unwrap().unwrap();
    let split_pmd = pagewatch_tests::vmstat("thp_split_pmd") - split_before;
    // Two more snapshots see the final state.
    std::thread::sleep(Duration::from_millis(700));
    // Split mode's second step, in later intervals: a folio split.
    let cold = (args.get(1) == Some(&"split")).then(|| {
        writeln!(stdin, "cold").unwrap();
        let line = out.next().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(700));
        line
    });
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    let f: Vec<&str> = result.split(' ').collect();
    assert_eq!((f[1], f[2]), ("0", "0"), "{result}");
    ThpRun {
        pid,
        region,
        before: f[4].parse().unwrap(),
        after: f[6].parse().unwrap(),
        split_pmd,
        cold,
        lines,
    }
}

/// Runs pw-thp in khugepaged mode, waiting up to `wait_s` for the collapse.
fn khugepaged_run(touch_pct: &str, wait_s: &str) -> ThpRun {
    pw_thp_run(&["8", "khugepaged", touch_pct, wait_s])
}

/// khugepaged collapses a region built from 4 KiB pages: its events name
/// an mm and a PFN, not the process, yet the collapse is attributed to the
/// right pid and VMA, with smaps AnonHugePages as the oracle.
#[test]
fn khugepaged_collapse_is_attributed_to_the_right_process() {
    let name = "khugepaged_collapse_is_attributed_to_the_right_process";
    if skip_unless_root(name) {
        return;
    }
    let Some(_knobs) = fast_khugepaged("511") else {
        return skip(
            name,
            "no khugepaged knobs in /sys/kernel/mm/transparent_hugepage",
        );
    };
    let ThpRun {
        pid,
        region,
        before,
        after,
        lines,
        ..
    } = khugepaged_run("100", "20");
    assert_eq!(before, 0);
    assert_eq!(
        after, 8192,
        "khugepaged collapsed the 8 MiB region within 20 s"
    );
    let t = transitions(&lines, pid, TransitionKind::CollapsedToThp);
    assert_eq!(pages(&t), after / 4, "collapsed pages vs smaps: {t:?}");
    for x in &t {
        assert_eq!(x.cause, Cause::Khugepaged, "{x:?}");
        assert_eq!(x.vma_start, region, "{x:?}");
    }
}

/// A region too sparse for max_ptes_none=0 is scanned and refused: the
/// per-VMA scan results name the kernel's reason, exceed_none_pte.
#[test]
fn refused_collapse_shows_the_kernels_reason_per_vma() {
    let name = "refused_collapse_shows_the_kernels_reason_per_vma";
    if skip_unless_root(name) {
        return;
    }
    let Some(_knobs) = fast_khugepaged("0") else {
        return skip(
            name,
            "no khugepaged knobs in /sys/kernel/mm/transparent_hugepage",
        );
    };
    // Half of each 2 MiB range touched; the workload waits 3 s for a
    // collapse that never comes, while khugepaged scans (every 50 ms) and
    // refuses.
    let ThpRun {
        pid,
        region,
        after,
        lines,
        ..
    } = khugepaged_run("50", "3");
    assert_eq!(after, 0, "nothing collapses with max_ptes_none=0");
    let scans: Vec<_> = lines
        .iter()
        .filter_map(|l| match l.item() {
            Some(Item::ThpScans(s)) => Some(s),
            _ => None,
        })
        .collect();
    let refused: u64 = scans
        .iter()
        .filter(|s| s.pid == pid && s.vma_start == region && s.result == "exceed_none_pte")
        .map(|s| s.scans)
        .sum();
    let without_page = summary(&lines).system.page_events.thp_scans_without_page;
    if refused == 0 && without_page > 0 {
        return skip(
            name,
            &format!(
                "this kernel's scan events name no page ({without_page} scans with scan_pfn -1): \
                 refusals cannot be tied to a VMA"
            ),
        );
    }
    assert!(
        refused >= 4,
        "each of the 4 ranges refused at least once, saw {refused}; pid {pid}, VMA {region:x}; \
         khugepaged's scans of followed processes: {scans:?}"
    );
    assert!(transitions(&lines, pid, TransitionKind::CollapsedToThp).is_empty());
}

/// A partial munmap and a partial mprotect of THPs split their PMD
/// mappings: the pages still mapped are reported split_from_thp for the
/// right process and VMAs, as many as smaps AnonHugePages lost minus the
/// pages unmapped. No x86 tracepoint marks a split: where fentry loads
/// (the test VM's kernels), the split hook names the process itself as the
/// splitter (`thp_split_by_process`); where it is refused (this host), the
/// cause is the /proc/vmstat thp_split_pmd counter, labelled as such.
#[test]
fn thp_split_by_partial_munmap_and_mprotect_is_reported() {
    let name = "thp_split_by_partial_munmap_and_mprotect_is_reported";
    if skip_unless_root(name) {
        return;
    }
    // PMD-mapped pages are told from PTE-mapped ones by PAGEMAP_SCAN's
    // PAGE_IS_HUGE, which 6.7 added.
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 7) {
        return skip(
            name,
            &format!(
                "Linux {} has no PAGEMAP_SCAN (6.7+): PMD splits cannot be seen",
                release.trim()
            ),
        );
    }
    let enabled =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !enabled.contains("[madvise]") && !enabled.contains("[always]") {
        return skip(name, &format!("THP is not enabled for madvise: {enabled}"));
    }
    // Keep khugepaged from touching the region while the test runs.
    let Some(_knobs) = Knobs::set(&[(
        "/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs",
        "600000",
    )]) else {
        return skip(name, "no khugepaged knobs");
    };
    let run = pw_thp_run(&["8", "split"]);
    if run.before != 8192 {
        return skip(
            name,
            &format!(
                "the kernel gave {} kB of THPs for the 8 MiB region, not 8192",
                run.before
            ),
        );
    }
    let unmapped_pages = 256; // the first 1 MiB
    assert_eq!(
        run.before - run.after,
        4096,
        "two of the four THPs lost their PMD mapping"
    );
    assert!(
        run.split_pmd >= 2,
        "vmstat thp_split_pmd rose by {}",
        run.split_pmd
    );
    let t = transitions(&run.lines, run.pid, TransitionKind::SplitFromThp);
    assert_eq!(
        pages(&t),
        (run.before - run.after) / 4 - unmapped_pages,
        "split pages vs smaps AnonHugePages: {t:?}"
    );
    let summary = summary(&run.lines);
    let split_hook = summary.hooks.iter().any(|h| h == "fentry:__split_huge_pmd");
    // The hooks may be missing only because the kernel refuses fentry
    // (lockdown, as on the development host): in the test VM's guests they
    // must attach.
    for s in &summary.skipped_hooks {
        if s.hook == "thp_split_pmd" || s.hook == "thp_split_folio" {
            assert!(s.reason.contains("refused fentry"), "{s:?}");
        }
    }
    let cause = if split_hook {
        Cause::ThpSplitByProcess
    } else {
        Cause::VmstatThpSplitPmd
    };
    let end = run.region + (8 << 20);
    for x in &t {
        assert_eq!(x.cause, cause, "{x:?}");
        let start = x.vma_start;
        assert!(start >= run.region && start < end, "{x:?}");
    }
    // The second step split the second range's folio (MADV_COLD on part
    // of it): its 512 pages are folio_split, in the range's two VMAs.
    let cold = run.cold.as_deref().unwrap_or_default();
    let c: Vec<&str> = cold.split(' ').collect();
    assert_eq!((c[0], c[1]), ("cold", "0"), "{cold}");
    let folio_hook = summary.hooks.iter().any(|h| {
        [
            "fentry:__folio_split",
            "fentry:split_huge_page_to_list_to_order",
            "fentry:split_huge_page_to_list",
        ]
        .contains(&h.as_str())
    });
    let second = run.region + (2 << 20)..run.region + (4 << 20);
    let mut folio = transitions(&run.lines, run.pid, TransitionKind::FolioSplit);
    folio.retain(|x| second.contains(&x.vma_start));
    assert_ne!(c[4], "0", "the kernel split the folio: {cold}");
    assert_eq!(pages(&folio), 512, "{folio:?}");
    let want = if folio_hook {
        Cause::ThpSplitByProcess
    } else {
        Cause::VmstatThpSplitPage
    };
    for x in &folio {
        assert_eq!(x.cause, want, "{x:?}");
    }
    let mut gone = transitions(&run.lines, run.pid, TransitionKind::Unmapped);
    gone.retain(|x| x.vma_start == run.region);
    assert_eq!(pages(&gone), unmapped_pages, "{gone:?}");
    // THP coverage per VMA over time: the last value of each VMA of the
    // region adds up to smaps AnonHugePages after, the first to before.
    let mut coverage: Vec<_> = run
        .lines
        .iter()
        .filter_map(|l| match l.item() {
            Some(Item::ThpCoverage(c)) => Some(c),
            _ => None,
        })
        .filter(|c| c.pid == run.pid && (run.region..end).contains(&c.vma_start))
        .collect();
    assert_eq!(
        coverage.first().map(|c| c.thp_pages),
        Some(run.before / 4),
        "{coverage:?}"
    );
    coverage.reverse();
    let mut last: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    for c in coverage {
        last.entry(c.vma_start).or_insert(c.thp_pages);
    }
    assert_eq!(last.values().sum::<u64>(), run.after / 4, "{last:?}");
    eprintln!(
        "{name}: AnonHugePages {} -> {} kB, thp_split_pmd +{}, split_from_thp {} pages by {cause}; \
         MADV_COLD: thp_split_page +{}, folio_split {} pages by {want}",
        run.before,
        run.after,
        run.split_pmd,
        pages(&t),
        c[4],
        pages(&folio)
    );
}

/// A node's 2 MiB hugetlb pool file.
fn node_pool(node: u32, file: &str) -> String {
    format!("/sys/devices/system/node/node{node}/hugepages/hugepages-2048kB/{file}")
}

fn read_u64(path: &str) -> u64 {
    pagewatch_tests::read_u64(path).unwrap_or_else(|| panic!("cannot read {path}"))
}

/// The per-node hugetlb pool grown during a recording, and a process
/// mapping one of its pages: `report` shows the pool's nr and free over
/// time (as sysfs had them), which process held how much hugetlb memory on
/// which node, and the matching Perfetto counter tracks. The pool is
/// restored afterwards, even on failure.
#[test]
fn hugetlb_pool_changes_and_holders_per_node_are_reported() {
    let name = "hugetlb_pool_changes_and_holders_per_node_are_reported";
    if skip_unless_root(name) {
        return;
    }
    if !Path::new(&node_pool(0, "nr_hugepages")).exists() {
        return skip(name, "no per-node 2 MiB hugetlb pool on node 0");
    }
    let (nr0, free0) = (
        read_u64(&node_pool(0, "nr_hugepages")),
        read_u64(&node_pool(0, "free_hugepages")),
    );
    if read_u64("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages") != free0 {
        return skip(name, "other nodes have free 2 MiB hugetlb pages");
    }
    let dir = std::env::temp_dir().join(format!("pw-hugetlb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("r.pwrec");
    // The workload starts once the pool has grown; it maps (and holds for
    // 1.5 s) one 2 MiB hugetlb page, pinned to node 0 by the grown pool
    // being the only one with free pages.
    let script = format!(
        "sleep 1.2; sleep 3 | {} --hugetlb >/dev/null",
        env!("CARGO_BIN_EXE_pw-layout")
    );
    let mut rec = Command::new(pagewatch_tests::pagewatch_bin())
        .args([
            "record",
            "-o",
            file.to_str().unwrap(),
            "--interval",
            "300ms",
        ])
        .args(["--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pagewatch record");
    let mut err = BufReader::new(rec.stderr.take().unwrap()).lines();
    for line in err.by_ref() {
        let line = line.unwrap();
        if line.contains("tracing;") {
            break;
        }
    }
    let Some(_pool) = pagewatch_tests::grow_hugetlb_pool(&node_pool(0, "nr_hugepages"), 2) else {
        let _ = rec.kill();
        let _ = rec.wait();
        let _ = std::fs::remove_dir_all(&dir);
        return skip(name, "cannot grow node 0's 2 MiB hugetlb pool by 2 pages");
    };
    let mut min_free = u64::MAX;
    while rec.try_wait().unwrap().is_none() {
        min_free = min_free.min(read_u64(&node_pool(0, "free_hugepages")));
        std::thread::sleep(Duration::from_millis(50));
    }
    let rest: Vec<String> = err.map_while(Result::ok).collect();
    assert!(rec.wait().unwrap().success(), "record failed: {rest:?}");
    let report = |format: &str| {
        let (status, out, err) =
            pagewatch_tests::run_pagewatch(&["report", "--format", format, file.to_str().unwrap()]);
        assert!(status.success(), "report failed: {err}");
        out
    };
    let lines: Vec<ReportLine> = json_lines(&report("json"));
    let items = || lines.iter().filter_map(ReportLine::item);
    let table = report("table");
    let perfetto: Value = serde_json::from_str(&report("perfetto")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let used = free0 + 2 - min_free;
    assert_eq!(used, 1, "the workload took one page of the grown pool");
    let pools: Vec<(u64, u64)> = items()
        .filter_map(|i| match i {
            Item::HugetlbPool(p) if p.pool.node == Some(0) && p.pool.size_kb == 2048 => {
                Some((p.pool.nr, p.pool.free))
            }
            _ => None,
        })
        .collect();
    assert_eq!(pools.first(), Some(&(nr0, free0)), "{pools:?}");
    assert!(pools.contains(&(nr0 + 2, free0 + 2)), "grown: {pools:?}");
    assert!(pools.contains(&(nr0 + 2, min_free)), "in use: {pools:?}");
    assert_eq!(
        pools.last(),
        Some(&(nr0 + 2, free0 + 2)),
        "freed: {pools:?}"
    );
    // By what it holds, not by name: a process whose exec event is read
    // after it exited is named `?` until its exit event names it.
    let held: Vec<_> = items()
        .filter_map(|i| match i {
            Item::HugetlbHeld(h) if h.max_kb >= 2048 => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].node, 0);
    let hugetlb_as_thp: Vec<_> = items()
        .filter(|i| matches!(i, Item::ThpCoverage(c) if c.vma.contains("anon_hugepage")))
        .collect();
    assert!(
        hugetlb_as_thp.is_empty(),
        "hugetlb is not THP: {hugetlb_as_thp:?}"
    );
    assert_eq!(held[0].max_kb, used * 2048);
    assert!(
        table.contains("(pw-layout) node 0: 2048 kB"),
        "table:\n{table}"
    );
    assert!(
        table.contains("hugetlb pool 2048 kB node 0:"),
        "table:\n{table}"
    );
    let tracks: Vec<&Value> = perfetto["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "C")
        .collect();
    assert!(
        tracks
            .iter()
            .any(|e| e["name"] == "hugetlb pool 2048 kB node 0"
                && e["args"]["nr"].as_u64() == Some(nr0 + 2)),
        "no pool counter track"
    );
    assert!(
        tracks
            .iter()
            .any(|e| e["name"] == "hugetlb (kB)" && e["args"]["node0"].as_u64() == Some(2048)),
        "no per-process hugetlb counter track"
    );
}

/// A workload child, killed on drop (before the cgroup it is in goes).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Per snapshot (after the first): why every process was read again, if
/// it was, and the processes read again for a reason of their own.
fn snapshot_work(lines: &[TopLine]) -> Vec<(Option<String>, Vec<u32>)> {
    lines
        .iter()
        .filter_map(|l| l.system()?.snapshot.as_ref())
        .map(|w: &SnapshotWork| (w.all_because.clone(), w.rescanned_pids.clone()))
        .collect()
}

/// The snapshots read only what may have changed: an idle followed process
/// is carried over from one snapshot to the next without being read,
/// while a process that faults its pages in, and the same process once its
/// pages are pushed to swap by another agent (this test lowering its memory
/// cgroup's limit: the reclaim runs in the test's context, not the
/// process's), are read again, and their transitions still equal what the
/// kernel reports in smaps.
#[test]
fn steady_processes_are_carried_and_changed_ones_read_again() {
    let name = "steady_processes_are_carried_and_changed_ones_read_again";
    if skip_unless_root(name) {
        return;
    }
    // NUMA balancing migrates the busy process's pages as it faults them
    // in (2-node guests), and migration makes every snapshot read all: a
    // 6.1 guest then had no quiet snapshot that read the busy process.
    let _numa = pagewatch_tests::no_numa_balancing();
    let _swap = match ZramSwap::setup("1G") {
        Ok(s) => s,
        Err(why) => return skip(name, &why),
    };
    let Some(cg) = MemCgroup::create(1 << 30) else {
        return skip(name, "no memory cgroup controller");
    };
    let spawn = |bin: &str, args: &[&str]| {
        let mut c = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn workload");
        let out = BufReader::new(c.stdout.take().unwrap()).lines();
        (Child(c), out)
    };
    let (mut idle, mut idle_out) = spawn(env!("CARGO_BIN_EXE_pw-hold"), &["8", "nothp"]);
    let idle_pid: u32 = idle_out.next().unwrap().unwrap()[4..].parse().unwrap();
    assert_eq!(idle_out.next().unwrap().unwrap(), "ready");
    let (mut busy, mut busy_out) = spawn(env!("CARGO_BIN_EXE_pw-faults"), &["window", "64"]);
    let busy_pid: u32 = busy_out.next().unwrap().unwrap()[4..].parse().unwrap();
    assert_eq!(busy_out.next().unwrap().unwrap(), "ready");
    cg.add(busy_pid);
    let tracer = Tracer::start(&[
        "--pid",
        &idle_pid.to_string(),
        "--pid",
        &busy_pid.to_string(),
        "--interval",
        "300ms",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    // Fault the 64 MiB window in, then stay idle.
    writeln!(busy.0.stdin.as_mut().unwrap(), "go").unwrap();
    let result = busy_out.next().unwrap().unwrap();
    assert!(result.starts_with("delta "), "{result}");
    std::thread::sleep(Duration::from_millis(1500));
    let region = pagewatch_tests::smaps(busy_pid)
        .into_iter()
        .filter(|v| v.name.is_empty())
        .max_by_key(|v| v.kb["Size"])
        .expect("the 64 MiB region");
    // Push it to swap from here: the limit write reclaims in this thread.
    cg.set_limit(16 << 20);
    std::thread::sleep(Duration::from_millis(1500));
    let swap_kb = pagewatch_tests::rollup(busy_pid)["Swap"];
    let lines = tracer.stop();
    drop(idle.0.stdin.take());
    drop((idle, busy));
    drop(cg);
    let work = snapshot_work(&lines);
    let quiet: Vec<&Vec<u32>> = work
        .iter()
        .filter(|(all, _)| all.is_none())
        .map(|(_, pids)| pids)
        .collect();
    for all in work.iter().filter_map(|w| w.0.as_deref()) {
        eprintln!("{name}: a snapshot read everything again: {all}");
    }
    if quiet.len() < 3 {
        return skip(
            name,
            &format!(
                "system-wide counters of foreign page changes moved in {} of {} snapshots \
                 (other activity on the machine): the rescan rule cannot be observed",
                work.len() - quiet.len(),
                work.len()
            ),
        );
    }
    // (a) The idle process was never read again for a reason of its own,
    // and has no transition.
    assert!(
        quiet.iter().all(|pids| !pids.contains(&idle_pid)),
        "idle pid {idle_pid} read again: {work:?}"
    );
    assert!(
        top_transitions(&lines).all(|t| t.pid != idle_pid),
        "transitions of the idle process"
    );
    // (b) The busy process was carried while idle and read again when it
    // changed.
    let busy_reads = quiet.iter().filter(|pids| pids.contains(&busy_pid)).count();
    assert!(
        busy_reads > 0 && busy_reads < quiet.len(),
        "busy pid {busy_pid} read again in {busy_reads} of {} quiet snapshots",
        quiet.len()
    );
    // Its transitions equal the kernel's figures: the whole window faulted
    // in, and as many pages net swapped out as smaps says are in swap.
    let faulted: u64 = transitions(&lines, busy_pid, TransitionKind::FaultedIn)
        .iter()
        .filter(|t| t.vma_start == region.start)
        .map(|t| t.pages)
        .sum();
    assert_eq!(
        faulted,
        region.kb["Size"] / 4,
        "faulted-in pages of the window"
    );
    assert!(
        swap_kb > 32 << 10,
        "64 MiB pushed under a 16 MiB limit swaps >32 MiB, smaps says {swap_kb} kB"
    );
    let net = pages(&transitions(&lines, busy_pid, TransitionKind::SwappedOut)) as i64
        - pages(&transitions(&lines, busy_pid, TransitionKind::SwappedIn)) as i64;
    assert_eq!(
        net,
        (swap_kb / 4) as i64,
        "net swapped-out pages vs smaps Swap"
    );
    eprintln!(
        "{name}: {} snapshots, {} quiet; busy pid read again in {busy_reads} of them; \
         {faulted} pages faulted in, {net} swapped out",
        work.len(),
        quiet.len()
    );
}

/// Pages of `pid`'s transitions of `kind` with `cause`.
fn pages_by(lines: &[TopLine], pid: u32, kind: TransitionKind, cause: Cause) -> u64 {
    pages(
        &transitions(lines, pid, kind)
            .into_iter()
            .filter(|t| t.cause == cause)
            .collect::<Vec<_>>(),
    )
}

/// A region freed with MADV_DONTNEED and faulted again at the same
/// addresses (4 KiB, then THP, then 4 KiB), a MAP_POPULATE mapping, then
/// munmap and MADV_DONTNEED: the new pages are `refaulted`, never migrated,
/// collapsed or split (the kernel's vmstat says none happened), the
/// populated pages have cause `populate` and the dropped ones their
/// syscall's cause.
#[test]
fn free_and_refault_populate_and_unmap_are_told_by_their_syscalls() {
    const NAME: &str = "free_and_refault_populate_and_unmap_are_told_by_their_syscalls";
    if skip_unless_root(NAME) {
        return;
    }
    if !Path::new("/sys/kernel/tracing/events/syscalls").exists() {
        skip(
            NAME,
            "kernel without CONFIG_FTRACE_SYSCALLS: no syscall tracepoints",
        );
        return;
    }
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        skip(NAME, "THP disabled (transparent_hugepage/enabled is never)");
        return;
    }
    const MIB: u64 = 16;
    const POPULATE_MIB: u64 = 64;
    let (mut child, mut stdin, mut out, pid) = start_piped(
        env!("CARGO_BIN_EXE_pw-refault"),
        &[&MIB.to_string(), &POPULATE_MIB.to_string()],
    );
    let _region = out.next().unwrap().unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
    let counters = ["thp_fault_alloc", "thp_collapse_alloc", "pgmigrate_success"];
    let before: Vec<u64> = counters
        .iter()
        .map(|c| pagewatch_tests::vmstat(c))
        .collect();
    for step in ["thp", "small", "populate", "drop"] {
        writeln!(stdin, "{step}").unwrap();
        let line = out.next().unwrap().unwrap();
        assert!(line.starts_with(&format!("done {step}")), "{line}");
        // Two snapshots see each step's result.
        std::thread::sleep(Duration::from_millis(700));
    }
    let delta: Vec<u64> = counters
        .iter()
        .zip(&before)
        .map(|(c, b)| pagewatch_tests::vmstat(c) - b)
        .collect();
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    for t in top_transitions(&lines).filter(|t| t.pid == pid) {
        eprintln!("{} {} {}", t.kind, t.cause, t.pages);
    }
    eprintln!("vmstat deltas {counters:?}: {delta:?}");
    let kind = |k: TransitionKind| pages(&transitions(&lines, pid, k));
    let region_pages = MIB * 256;
    // The oracle: no collapse and no migration happened system-wide.
    if delta[1] == 0 {
        assert_eq!(
            kind(TransitionKind::CollapsedToThp),
            0,
            "no collapse happened"
        );
    }
    if delta[2] == 0 {
        assert_eq!(
            kind(TransitionKind::Migrated) + kind(TransitionKind::NodeChanged),
            0,
            "nothing migrated"
        );
    }
    assert_eq!(
        kind(TransitionKind::SplitFromThp) + kind(TransitionKind::FolioSplit),
        0
    );
    assert_eq!(
        kind(TransitionKind::PfnChanged),
        0,
        "every new page has evidence"
    );
    // Both refaults, 4 KiB -> THP -> 4 KiB, of the whole region (a
    // snapshot between the discard and the touch sees them unmapped and
    // faulted in instead).
    let refaulted = kind(TransitionKind::Refaulted);
    let dropped_and_faulted = pages_by(&lines, pid, TransitionKind::Unmapped, Cause::MadvDontneed);
    assert!(
        refaulted + dropped_and_faulted >= 3 * region_pages,
        "refaulted {refaulted}, unmapped by madv_dontneed {dropped_and_faulted}"
    );
    if delta[0] == 0 {
        skip(
            NAME,
            "no THP could be allocated (thp_fault_alloc did not rise)",
        );
    } else {
        assert!(refaulted > 0, "no refaulted pages");
    }
    assert_eq!(
        pages_by(&lines, pid, TransitionKind::FaultedIn, Cause::Populate),
        POPULATE_MIB * 256,
        "MAP_POPULATE"
    );
    assert_eq!(
        pages_by(&lines, pid, TransitionKind::Unmapped, Cause::Munmap),
        POPULATE_MIB * 256,
        "munmap"
    );
    assert!(dropped_and_faulted >= region_pages, "MADV_DONTNEED");
    assert_eq!(
        pages_by(&lines, pid, TransitionKind::Unmapped, Cause::Unexplained),
        0
    );
}
