//! Integration tests of the kernel-developer workflow features against the
//! running kernel: bare numbers of seconds for `--duration`/`--interval`,
//! `top` leaving out pagewatch's own faults, `report --expect` on real
//! recordings, and `report --compare` of two real recordings.

use std::time::Duration;

use pagewatch_tests::{Tracer, run_pagewatch, skip_unless_root, summary};
use serde_json::Value;

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// `--duration 2 --interval 0.5` is 2 s in 0.5 s intervals, as `timeout 2`
/// and `top -d 0.5` would read them.
#[test]
fn bare_numbers_are_seconds() {
    if skip_unless_root("bare_numbers_are_seconds") {
        return;
    }
    let (status, out, err) =
        run_pagewatch(&["top", "--json", "--duration", "2", "--interval", "0.5"]);
    assert!(status.success(), "top failed: {err}");
    let lines = json_lines(&out);
    let s = summary(&lines);
    let secs = s["duration_s"].as_f64().expect("duration_s");
    assert!((2.0..2.5).contains(&secs), "ran {secs} s, not 2 s");
    assert_eq!(s["intervals"], 4, "2 s in 0.5 s intervals: {s}");
}

/// minflt of `pid` (/proc/PID/stat field 10).
fn minflt(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    stat[stat.rfind(')').expect("comm end") + 2..]
        .split(' ')
        .nth(7)
        .expect("minflt")
        .parse()
        .expect("minflt number")
}

/// The rows of `pid` in `top --json` output, and their faults.
fn faults_of(lines: &[Value], pid: u32) -> Option<u64> {
    let rows: Vec<&Value> = lines.iter().filter(|l| l["pid"] == pid).collect();
    (!rows.is_empty()).then(|| rows.iter().filter_map(|r| r["faults"].as_u64()).sum())
}

/// pagewatch faults while it runs (the kernel's minflt of it grows), yet
/// `top` shows no row for it unless `--self` asks for one.
#[test]
fn top_leaves_out_its_own_faults_unless_asked() {
    if skip_unless_root("top_leaves_out_its_own_faults_unless_asked") {
        return;
    }
    for include_self in [false, true] {
        let args: &[&str] = if include_self {
            &["--interval", "0.2", "--self"]
        } else {
            &["--interval", "0.2"]
        };
        let tracer = Tracer::start(args);
        let pid = tracer.pid();
        let before = minflt(pid);
        // Wait for the faults themselves: its snapshots and output fault
        // pages in (the kernel counts them in minflt).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while minflt(pid) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "pagewatch made no page fault in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        let lines = tracer.stop();
        match (include_self, faults_of(&lines, pid)) {
            (false, None) => {}
            (false, Some(f)) => panic!("top shows its own {f} faults without --self"),
            (true, Some(f)) => assert!(f > 0, "its own row with --self has no faults"),
            (true, None) => panic!("--self: no row for pagewatch (pid {pid})"),
        }
    }
}
