//! Privileges against the running kernel: once its hooks are attached and
//! its recording is open, pagewatch holds only CAP_SYS_ADMIN,
//! CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (the kernel's own
//! /proc/PID/status says so, for every thread) with no_new_privs set, and
//! still traces and snapshots; the command it starts keeps the caller's
//! privileges; and root without CAP_BPF / CAP_PERFMON / CAP_SYS_ADMIN (cut
//! with setpriv) is told which one is missing.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

use pagewatch_tests::{
    ReportLine, TransitionKind, json_lines, pagewatch_bin, run_pagewatch, skip, skip_unless_root,
};

/// CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
const KEPT: u64 = 1 << 2 | 1 << 19 | 1 << 21;

/// The capability and no_new_privs lines of a /proc/.../status file.
fn cap_lines(status_path: &str) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(status_path).expect("read status");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let v = v.trim();
            let n = if k.starts_with("Cap") {
                u64::from_str_radix(v, 16).ok()?
            } else if k == "NoNewPrivs" {
                v.parse().ok()?
            } else {
                return None;
            };
            Some((k.to_owned(), n))
        })
        .collect()
}

fn cap(lines: &[(String, u64)], name: &str) -> u64 {
    lines
        .iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in {lines:?}"))
        .1
}

/// `record -- pw-thp 8`: while the command runs, every pagewatch thread
/// holds only the kept capabilities (bounding set too) and no_new_privs;
/// the command holds what the test holds. The recording still has the
/// command's faults and, from the snapshots (PFNs and kpageflags), its
/// MADV_COLLAPSE of 2048 pages.
#[test]
fn record_keeps_only_the_capabilities_it_needs_and_still_works() {
    let name = "record_keeps_only_the_capabilities_it_needs_and_still_works";
    if skip_unless_root(name) {
        return;
    }
    let own = cap_lines("/proc/self/status");
    if cap(&own, "CapEff") & KEPT != KEPT {
        skip(
            name,
            "the test itself lacks CAP_SYS_ADMIN, CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH",
        );
        return;
    }
    let dir = std::env::temp_dir().join(format!("pw-priv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let out = dir.join("priv.pwrec");
    let mut pw = Command::new(pagewatch_bin())
        .args([
            "record",
            "-o",
            out.to_str().unwrap(),
            "--interval",
            "300ms",
            "--",
        ])
        .args(["sh", "-c", "exec \"$0\" 8", env!("CARGO_BIN_EXE_pw-thp")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pagewatch record");
    // The command shares pagewatch's stdin and stdout; pagewatch resumes
    // it only after dropping its capabilities.
    let mut stdin = pw.stdin.take().expect("stdin");
    let mut lines = BufReader::new(pw.stdout.take().expect("stdout")).lines();
    let mut child = None;
    for line in lines.by_ref() {
        let line = line.expect("read");
        if let Some(pid) = line.strip_prefix("pid ") {
            child = pid.parse::<u32>().ok();
        }
        if line == "ready" {
            break;
        }
    }
    let child = child.expect("pw-thp printed its pid");

    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{}/task", pw.id()))
        .expect("pagewatch's threads")
        .map(|e| e.expect("task").path().join("status"))
        .collect();
    for status in &tasks {
        let lines = cap_lines(status.to_str().unwrap());
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(
                cap(&lines, set),
                KEPT,
                "{set} of {} is {:#x}",
                status.display(),
                cap(&lines, set)
            );
        }
        assert_eq!(cap(&lines, "CapInh"), 0);
        assert_eq!(cap(&lines, "CapAmb"), 0);
        assert_eq!(cap(&lines, "NoNewPrivs"), 1);
    }
    let theirs = cap_lines(&format!("/proc/{child}/status"));
    for set in ["CapEff", "CapBnd", "NoNewPrivs"] {
        assert_eq!(
            cap(&theirs, set),
            cap(&own, set),
            "the command's {set} is the caller's"
        );
    }

    // A snapshot or two, the collapse, a snapshot or two more, then exit.
    std::thread::sleep(Duration::from_millis(700));
    writeln!(stdin, "go").expect("send go");
    let collapse = lines.next().expect("collapse line").expect("read");
    assert!(collapse.starts_with("collapse 0 "), "{collapse}");
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    let done = pw.wait_with_output().expect("wait for pagewatch");
    let err = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "record failed: {err}");
    assert!(err.contains("dropped every capability but"), "{err}");

    let (status, report, err) =
        run_pagewatch(&["report", "--format", "json", out.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(status.success(), "report failed: {err}");
    let lines: Vec<ReportLine> = json_lines(&report);
    let pages = |kind: TransitionKind| -> u64 {
        lines
            .iter()
            .filter_map(ReportLine::transition)
            .map(|g| &g.transition)
            .filter(|g| g.kind == kind && g.pid == child)
            .map(|g| g.pages)
            .sum()
    };
    assert!(
        pages(TransitionKind::FaultedIn) >= 2048,
        "8 MiB faulted in after the drop"
    );
    assert_eq!(pages(TransitionKind::CollapsedToThp), 2048, "{report}");
}

/// Root with some capabilities cut (setpriv --bounding-set): a missing
/// CAP_BPF or CAP_PERFMON is named before anything is loaded; without
/// CAP_SYS_ADMIN tracing works and snapshots say what they leave out.
#[test]
fn a_missing_capability_is_named() {
    let name = "a_missing_capability_is_named";
    if skip_unless_root(name) {
        return;
    }
    if pagewatch_tests::skip_without_setpriv(name) {
        return;
    }
    let pagewatch = pagewatch_bin();
    let run = |cut: &str, args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--bounding-set", cut, "--"])
            .arg(&pagewatch)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (cut, missing) in [
        ("-sys_admin,-bpf", "lacks CAP_BPF ("),
        ("-sys_admin,-perfmon", "lacks CAP_PERFMON ("),
        (
            "-sys_admin,-bpf,-perfmon",
            "lacks CAP_BPF and CAP_PERFMON (",
        ),
    ] {
        let (status, err) = run(cut, &["top", "--duration", "1s"]);
        assert!(!status.success(), "{cut}: {err}");
        assert!(err.contains(missing), "{cut}: {err}");
        assert!(!err.contains("panicked"), "{cut}: {err}");
    }
    let own = std::process::id().to_string();
    let (status, err) = run(
        "-sys_admin",
        &[
            "top",
            "--pid",
            &own,
            "--duration",
            "1s",
            "--events",
            "faults",
        ],
    );
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .unwrap_or_default()
        .trim()
        .to_owned();
    if !status.success() && paranoid.parse::<i32>().is_ok_and(|p| p >= 3) {
        // Kernels with Debian's restriction (the 6.1, 6.12 and 7.x test
        // kernels) refuse tracepoint perf events to anyone without
        // CAP_SYS_ADMIN at perf_event_paranoid 3, whatever CAP_PERFMON
        // says: pagewatch must name that, in one sentence.
        assert!(
            err.contains(&format!(
                "this kernel lets only CAP_SYS_ADMIN attach tracepoints (perf_event_paranoid is {paranoid}"
            )),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        eprintln!("{name}: perf_event_paranoid {paranoid}: the missing CAP_SYS_ADMIN is named");
        return;
    }
    assert!(status.success(), "tracing needs no CAP_SYS_ADMIN: {err}");
    assert!(
        err.contains("no CAP_SYS_ADMIN: pagemap hides PFNs"),
        "{err}"
    );
    assert!(
        err.contains("dropped every capability but CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH"),
        "{err}"
    );
}
