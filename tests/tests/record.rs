//! Integration tests of `pagewatch record` and `pagewatch report` against
//! the running kernel: following a command's process tree, round trips
//! through every report format, clean ends on SIGINT/SIGTERM, a recording
//! cut by SIGKILL read back to its last complete record, and clear errors
//! for bad output paths and bad files.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use pagewatch_tests::{pagewatch_bin, run_pagewatch, skip_unless_root};
use serde_json::Value;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pw-rec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn report_json(file: &Path) -> (Vec<Value>, String) {
    let (status, out, err) = run_pagewatch(&["report", "--format", "json", file.to_str().unwrap()]);
    assert!(status.success(), "report failed: {err}");
    let lines = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect();
    (lines, err)
}

fn summary(lines: &[Value]) -> &Value {
    lines
        .iter()
        .find_map(|l| l.get("summary"))
        .expect("summary line")
}

/// Records `sh -c "... | pw-thp 8"`: the shell forks pw-thp, which builds
/// 8 MiB of 4 KiB pages, collapses them with MADV_COLLAPSE when the pipe
/// says go (after a snapshot or two), and exits a little later (after a
/// snapshot or two more). Returns the recording.
fn record_forked_collapse(dir: &Scratch) -> PathBuf {
    let out = dir.file("thp.pwrec");
    let script = format!(
        "(sleep 0.8; echo go; sleep 0.8) | {} 8; true",
        env!("CARGO_BIN_EXE_pw-thp")
    );
    let (status, _, err) = run_pagewatch(&[
        "record",
        "-o",
        out.to_str().unwrap(),
        "--interval",
        "300ms",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(status.success(), "record failed: {err}");
    assert!(err.contains("recorded"), "{err}");
    out
}

/// `record -- CMD` follows the command's forked child: the child's
/// MADV_COLLAPSE shows in the report as its own transition (not the
/// shell's), with smaps-sized page counts, in every output format.
#[test]
fn record_follows_a_forked_child_and_reports_in_every_format() {
    if skip_unless_root("record_follows_a_forked_child_and_reports_in_every_format") {
        return;
    }
    let dir = Scratch::new("fork");
    let file = record_forked_collapse(&dir);
    let (lines, err) = report_json(&file);
    assert!(
        !err.contains("note:"),
        "a complete recording has no cut note: {err}"
    );
    let s = summary(&lines);
    assert_eq!(s["complete"], true);
    assert!(s["events"].as_u64().unwrap() > 0);
    let collapsed: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "collapsed_to_thp")
        .collect();
    // MADV_COLLAPSE collapses the region, unless khugepaged (woken when
    // the mm joins its empty list) takes a 2 MiB range of it first.
    let pages: u64 = collapsed.iter().map(|t| t["pages"].as_u64().unwrap()).sum();
    assert_eq!(pages, 2048, "8 MiB region = 2048 pages: {collapsed:?}");
    let t = collapsed
        .iter()
        .find(|t| t["cause"] == "madv_collapse")
        .unwrap_or_else(|| panic!("no MADV_COLLAPSE range: {collapsed:?}"));
    assert!(
        collapsed.iter().all(|c| c["pid"] == t["pid"]
            && (c["cause"] == "madv_collapse" || c["cause"] == "khugepaged")),
        "{collapsed:?}"
    );
    assert_eq!(
        t["comm"], "pw-thp",
        "attributed to the child, named after its exec"
    );

    let (status, table, _) = run_pagewatch(&["report", file.to_str().unwrap(), "--by", "cause"]);
    assert!(status.success());
    assert!(
        table.contains(&format!(
            "{} pages collapsed_to_thp by madv_collapse",
            t["pages"]
        )),
        "{table}"
    );
    assert!(table.contains("summary by cause:"), "{table}");

    let (status, trace, _) =
        run_pagewatch(&["report", file.to_str().unwrap(), "--format", "perfetto"]);
    assert!(status.success());
    let trace: Value = serde_json::from_str(&trace).expect("Perfetto trace is JSON");
    let events = trace["traceEvents"].as_array().expect("traceEvents");
    let pid = &t["pid"];
    let has = |ph: &str, name: &str| {
        events.iter().any(|e| {
            e["ph"] == ph && e["pid"] == *pid && e["name"].as_str().unwrap_or("").contains(name)
        })
    };
    assert!(has("M", "process_name"), "process track");
    assert!(has("C", "memory (kB)"), "RSS/THP/swap counter track");
    assert!(
        has("i", "collapsed_to_thp by madv_collapse"),
        "transition instant"
    );
    let thp_peak = events
        .iter()
        .filter(|e| e["ph"] == "C" && e["pid"] == *pid && e["name"] == "memory (kB)")
        .filter_map(|e| e["args"]["thp"].as_u64())
        .max()
        .unwrap_or(0);
    assert_eq!(thp_peak, 8192, "the THP counter track reaches 8 MiB");
}

/// A recording cut short (here: truncated to a prefix) reads back up to
/// its last complete record, and the report says where it was cut.
#[test]
fn truncated_recording_reports_up_to_the_cut() {
    if skip_unless_root("truncated_recording_reports_up_to_the_cut") {
        return;
    }
    let dir = Scratch::new("cut");
    let file = record_forked_collapse(&dir);
    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.file("cut.pwrec");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let (lines, err) = report_json(&cut);
    assert!(
        err.contains("truncated at byte") || err.contains("without an End"),
        "{err}"
    );
    let s = summary(&lines);
    assert_eq!(s["complete"], false);
    assert!(s["cut"].as_str().unwrap().contains("byte"), "{s}");
    let (full, _) = report_json(&file);
    assert!(summary(&full)["events"].as_u64() > s["events"].as_u64());
}

/// SIGTERM (like Ctrl-C) ends a recording cleanly; SIGKILL leaves one
/// that reads back to the last flushed interval, saying it has no End.
#[test]
fn signals_end_recordings_cleanly_or_readably() {
    if skip_unless_root("signals_end_recordings_cleanly_or_readably") {
        return;
    }
    let dir = Scratch::new("sig");
    for (signal, complete) in [
        (libc::SIGTERM, true),
        (libc::SIGINT, true),
        (libc::SIGKILL, false),
    ] {
        let file = dir.file(&format!("sig{signal}.pwrec"));
        let mut child = Command::new(pagewatch_bin())
            .args([
                "record",
                "-o",
                file.to_str().unwrap(),
                "--interval",
                "200ms",
                "--pid",
                "1",
                // The signals are what is tested: one family attaches in a
                // fraction of the time all of them take in a TCG guest.
                "--events",
                "faults",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn record");
        // Wait until it traces (loading the hooks takes seconds in a TCG
        // guest), then for a few 200 ms intervals to be written.
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains("tracing;"))),
            "record never started tracing"
        );
        std::thread::spawn(move || lines.for_each(drop));
        std::thread::sleep(Duration::from_millis(1000));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let (lines, err) = report_json(&file);
        let s = summary(&lines);
        assert_eq!(s["complete"], complete, "signal {signal}: {s} {err}");
        if complete {
            assert!(status.success(), "signal {signal}: exit {status}");
        } else {
            assert!(err.contains("without an End record"), "{err}");
            assert!(
                s["intervals"].as_u64().unwrap() >= 1,
                "flushed intervals survive: {s}"
            );
        }
    }
}

#[test]
fn bad_outputs_and_files_give_one_clear_error() {
    let dir = Scratch::new("bad");
    let existing = dir.file("exists.pwrec");
    std::fs::write(&existing, b"keep me").unwrap();
    let link = dir.file("link.pwrec");
    std::os::unix::fs::symlink(&existing, &link).unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["record".into(), "--pid".into(), "1".into()],
            "--output",
        ),
        (
            vec![
                "record".into(),
                "-o".into(),
                dir.file("x").display().to_string(),
            ],
            "say what to record",
        ),
        (
            vec![
                "report".into(),
                dir.file("missing.pwrec").display().to_string(),
            ],
            "missing.pwrec",
        ),
        (
            vec!["report".into(), "/etc/hostname".into()],
            "not a pagewatch recording",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, _, err) = run_pagewatch(&args);
        assert!(!status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Refused before the hooks load, so without root too, and quickly.
    for (path, needle) in [
        (existing.clone(), "exists"),
        (link.clone(), "symbolic link"),
        (dir.file("no/such/dir/x.pwrec"), "no/such/dir"),
    ] {
        let (status, _, err) = run_pagewatch(&[
            "record",
            "-o",
            path.to_str().unwrap(),
            "--pid",
            "1",
            "--duration",
            "1s",
        ]);
        assert!(!status.success(), "{path:?} should be refused");
        assert!(err.contains(needle), "{path:?}: {err}");
    }
    assert_eq!(
        std::fs::read(&existing).unwrap(),
        b"keep me",
        "never overwritten through a link"
    );
}

/// A tmpfs mount removed (lazily unmounted) on drop.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    fn mount(dir: &Scratch, size: &str) -> Option<Self> {
        let path = dir.file("small");
        std::fs::create_dir_all(&path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(path))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk stops the recording with one clear error naming the file,
/// and what was written reads back up to the last complete record.
#[test]
fn full_disk_ends_the_recording_readably() {
    let name = "full_disk_ends_the_recording_readably";
    if skip_unless_root(name) {
        return;
    }
    let dir = Scratch::new("full");
    let Some(fs) = SmallTmpfs::mount(&dir, "256k") else {
        return pagewatch_tests::skip(name, "cannot mount a tmpfs");
    };
    let file = fs.0.join("big.pwrec");
    // 16 rounds of 16 MiB: 65,536 fault events of 65 bytes, ~4 MiB > 256 KiB.
    let (status, _, err) = run_pagewatch(&[
        "record",
        "-o",
        file.to_str().unwrap(),
        "--events",
        "faults,process",
        "--interval",
        "200ms",
        "--",
        env!("CARGO_BIN_EXE_pw-faults"),
        "rate",
        "16",
        "16",
    ]);
    assert!(!status.success(), "a full disk is an error");
    assert!(err.contains("disk full"), "{err}");
    assert!(err.contains("big.pwrec"), "names the file: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let (lines, report_err) = report_json(&file);
    let s = summary(&lines);
    assert_eq!(s["complete"], false);
    assert!(
        s["events"].as_u64().unwrap() > 0,
        "the records before the cut read back"
    );
    assert!(
        report_err.contains("truncated at byte") || report_err.contains("without an End"),
        "{report_err}"
    );
}
