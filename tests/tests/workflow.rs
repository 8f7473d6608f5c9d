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

/// A scratch directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pw-wf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Records `pw-thp MIB ARGS` (fed a line after 0.8 s, ended 0.8 s later)
/// into `out`; returns the kB of AnonHugePages smaps showed in its region
/// after the collapse (its `collapse RC ERRNO before KB after KB` line).
fn record_thp(out: &str, mib: u32, args: &str) -> u64 {
    let script = format!(
        "(sleep 0.8; echo go; sleep 0.8) | {} {mib} {args}; true",
        env!("CARGO_BIN_EXE_pw-thp")
    );
    let (status, stdout, err) = run_pagewatch(&[
        "record",
        "-o",
        out,
        "--interval",
        "300ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(status.success(), "record failed: {err}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("collapse "))
        .unwrap_or_else(|| panic!("pw-thp printed no collapse line: {stdout}"));
    line.rsplit(' ')
        .next()
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("bad collapse line {line:?}"))
}

/// `report --expect` on a real recording of an 8 MiB MADV_COLLAPSE: the
/// collapsed pages it counts are smaps' AnonHugePages after the collapse,
/// the unexplained share is the JSON report's, each failed expectation is
/// one line on stderr and exit status 1, a bad one a clear usage error.
#[test]
fn expect_checks_a_real_recording() {
    if skip_unless_root("expect_checks_a_real_recording") {
        return;
    }
    let dir = Scratch::new("expect");
    let file = dir.file("thp.pwrec");
    let after_kb = record_thp(&file, 8, "");
    let pages = after_kb / 4;
    assert_eq!(
        pages, 2048,
        "pw-thp's region is all THP after MADV_COLLAPSE"
    );

    let expect = |exprs: &[String]| {
        let mut args = vec!["report".to_owned(), file.clone()];
        for e in exprs {
            args.extend(["--expect".to_owned(), e.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_pagewatch(&args)
    };
    let collapsed = format!("collapsed_to_thp{{comm=pw-thp}} == {pages}");
    let (status, out, err) = expect(&[collapsed.clone(), "dropped == 0".into()]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("ok: {collapsed}: got {pages} pages")),
        "{out}"
    );
    assert!(
        out.contains("ok: dropped == 0: got 0 events dropped"),
        "{out}"
    );

    // The unexplained share, from the JSON report.
    let (status, json, err) = run_pagewatch(&["report", "--format", "json", &file]);
    assert!(status.success(), "{err}");
    let (mut part, mut whole) = (0u64, 0u64);
    for t in json_lines(&json).iter().filter(|l| l["kind"].is_string()) {
        let n = t["pages"].as_u64().expect("pages");
        whole += n;
        if t["cause"] == "unexplained" {
            part += n;
        }
    }
    let pct = part as f64 * 100.0 / whole as f64;
    println!("unexplained: {part} of {whole} pages ({pct}%)");
    let (status, out, err) = expect(&[format!("unexplained <= {pct}%")]);
    assert!(status.success(), "{out}{err}");

    // One of three fails: exit 1, one line for it, the others still ok.
    let too_many = format!("collapsed_to_thp{{comm=pw-thp,cause=madv_collapse}} > {pages}");
    let (status, out, err) = expect(&[
        collapsed.clone(),
        too_many.clone(),
        format!("unexplained < {pct}%"),
    ]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    let failed: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("expectation failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{err}");
    assert!(
        failed[0].starts_with(&format!("pagewatch: expectation failed: {too_many}: got ")),
        "{err}"
    );
    assert!(
        failed[1].contains(&format!("({part} of {whole} pages)")),
        "{err}"
    );
    assert_eq!(out.lines().count(), 1, "the passing one: {out}");

    // A bad expression is a usage error naming it, before any reading.
    for (bad, says) in [
        ("collapsed_to_thp >= 12x", "\"12x\" is not a number"),
        ("colapsed_to_thp >= 1", "unknown metric"),
        ("collapsed_to_thp{cmd=x} > 0", "unknown label \"cmd\""),
        ("collapsed_to_thp => 1", "\"=>\" is not one"),
    ] {
        let (status, _, err) = expect(&[bad.to_owned()]);
        assert_eq!(status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
