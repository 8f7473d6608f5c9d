//! Integration tests of the correlator against the running kernel: page
//! state transitions seen in snapshots, attributed through the events of
//! the interval, checked against the kernel's own smaps accounting. These
//! tests change global state (swap devices, memory cgroups, KSM knobs) and
//! restore it on drop; they run one at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use pagewatch_tests::{Knobs, MemCgroup, Tracer, skip, skip_unless_root, summary};
use serde_json::Value;

fn transitions<'a>(lines: &'a [Value], pid: u32, kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter_map(|l| l.get("transition"))
        .filter(|t| t["pid"].as_u64() == Some(u64::from(pid)) && t["kind"] == kind)
        .collect()
}

fn pages(ts: &[&Value]) -> u64 {
    ts.iter().map(|t| t["pages"].as_u64().unwrap()).sum()
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

/// Anonymous memory pushed to swap by a memory cgroup limit: the swapped-out
/// transitions name the process and memcg reclaim, and their net total
/// equals the Swap the kernel reports for the process in smaps_rollup.
#[test]
fn swap_out_under_a_memcg_limit_is_attributed_and_matches_smaps() {
    let name = "swap_out_under_a_memcg_limit_is_attributed_and_matches_smaps";
    if skip_unless_root(name) {
        return;
    }
    let _swap = match ZramSwap::setup("1G") {
        Ok(s) => s,
        Err(why) => return skip(name, &why),
    };
    let Some(cg) = MemCgroup::create(64 << 20) else {
        return skip(name, "no cgroup v1 memory controller");
    };
    let mut wl = Command::new(env!("CARGO_BIN_EXE_pw-faults"))
        .args(["window", "192"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn pw-faults");
    let mut stdin = wl.stdin.take().unwrap();
    let mut out = BufReader::new(wl.stdout.take().unwrap()).lines();
    let pid: u32 = out.next().unwrap().unwrap()[4..].parse().unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    cg.add(pid);
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
    writeln!(stdin, "go").unwrap();
    let result = out.next().unwrap().unwrap();
    assert!(result.starts_with("delta "), "{result}");
    // Let two more snapshots see the final state.
    std::thread::sleep(Duration::from_millis(900));
    let swap_kb = pagewatch_tests::rollup(pid)["Swap"];
    let lines = tracer.stop();
    drop(stdin);
    let _ = wl.wait();
    assert!(
        swap_kb > 100 << 10,
        "192 MiB through a 64 MiB limit swaps >100 MiB, smaps says {swap_kb} kB"
    );
    let out_t = transitions(&lines, pid, "swapped_out");
    let in_t = transitions(&lines, pid, "swapped_in");
    let net = pages(&out_t) as i64 - pages(&in_t) as i64;
    assert_eq!(
        net,
        (swap_kb / 4) as i64,
        "net swapped-out pages vs smaps Swap"
    );
    let causes: Vec<&Value> = out_t.iter().map(|t| &t["cause"]).collect();
    assert!(
        causes.iter().all(|c| *c == "memcg_reclaim"),
        "swap-outs under the cgroup limit are memcg reclaim: {causes:?}"
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
    let ksm_hooks = !summary(&lines)["skipped_hooks"]
        .as_array()
        .is_some_and(|s| s.iter().any(|h| h["hook"] == "ksm_merge_one"));
    for c in [&mut a, &mut b] {
        drop(c.stdin.take());
        let _ = c.wait();
    }
    assert!(
        ma >= want && mb >= want,
        "KSM merged {ma} and {mb} pages, wanted {want} each"
    );
    for (pid, merged) in [(pa, ma), (pb, mb)] {
        let t = transitions(&lines, pid, "ksm_merged");
        let all: Vec<&Value> = lines
            .iter()
            .filter_map(|l| l.get("transition"))
            .filter(|t| t["pid"].as_u64() == Some(u64::from(pid)))
            .collect();
        assert_eq!(
            pages(&t),
            merged,
            "pid {pid}: ksm_merged pages vs ksm_merging_pages; its transitions: {all:?}"
        );
        let causes: Vec<&Value> = t.iter().map(|t| &t["cause"]).collect();
        // Without the ksm tracepoints (before 6.4) no event explains the
        // merge, and pagewatch must not guess.
        let expected = if ksm_hooks { "ksm" } else { "unexplained" };
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
    let values = ["50", "50", "8192", max_ptes_none];
    let settings: Vec<(&str, &str)> = files.iter().map(String::as_str).zip(values).collect();
    Knobs::set(&settings)
}

/// Runs pw-thp in khugepaged mode under a tracer, waiting up to `wait_s`
/// for the collapse; returns (pid, region start, smaps AnonHugePages
/// before and after in kB, the tracer's lines).
fn khugepaged_run(touch_pct: &str, wait_s: &str) -> (u32, u64, u64, u64, Vec<Value>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pw-thp"))
        .args(["8", "khugepaged", touch_pct, wait_s])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn pw-thp");
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let pid: u32 = out.next().unwrap().unwrap()[4..].parse().unwrap();
    let region: u64 = out
        .next()
        .unwrap()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    let tracer = Tracer::start(&[
        "--pid",
        &pid.to_string(),
        "--events",
        "thp,faults",
        "--interval",
        "300ms",
    ]);
    writeln!(stdin, "go").unwrap();
    let result = out.next().unwrap().unwrap();
    // Two more snapshots see the final state.
    std::thread::sleep(Duration::from_millis(700));
    let lines = tracer.stop();
    drop(stdin);
    let _ = child.wait();
    let f: Vec<&str> = result.split(' ').collect();
    (
        pid,
        region,
        f[4].parse().unwrap(),
        f[6].parse().unwrap(),
        lines,
    )
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
    let (pid, region, before, after, lines) = khugepaged_run("100", "20");
    assert_eq!(before, 0);
    assert_eq!(
        after, 8192,
        "khugepaged collapsed the 8 MiB region within 20 s"
    );
    let t = transitions(&lines, pid, "collapsed_to_thp");
    assert_eq!(pages(&t), after / 4, "collapsed pages vs smaps: {t:?}");
    for x in &t {
        assert_eq!(x["cause"], "khugepaged", "{x}");
        assert_eq!(x["vma_start"].as_u64(), Some(region), "{x}");
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
    let (pid, region, _, after, lines) = khugepaged_run("50", "3");
    assert_eq!(after, 0, "nothing collapses with max_ptes_none=0");
    let refused: u64 = lines
        .iter()
        .filter_map(|l| l.get("thp_scans"))
        .filter(|s| {
            s["pid"].as_u64() == Some(u64::from(pid)) && s["vma_start"].as_u64() == Some(region)
        })
        .filter(|s| s["result"] == "exceed_none_pte")
        .map(|s| s["scans"].as_u64().unwrap())
        .sum();
    assert!(
        refused >= 4,
        "each of the 4 ranges refused at least once, saw {refused}"
    );
    assert!(transitions(&lines, pid, "collapsed_to_thp").is_empty());
}
