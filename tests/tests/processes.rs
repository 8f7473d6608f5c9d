//! Processes, not pids, against the running kernel: a pid handed to a new
//! process (forced through /proc/sys/kernel/ns_last_pid) is reported as a
//! process of its own, and exec keeps the process but renames it; a
//! process is its thread group (threads are not processes, and it lives
//! until its last thread exits, not its leader); a process shorter than an
//! interval is counted from its events; one read while it exits or execs
//! loses its pages to the exit or exec.

use std::{
    io::{BufRead as _, BufReader, Lines},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use pagewatch_tests::{
    Cause, Knobs, ProcessSummary, TopLine, Tracer, TransitionKind, pagewatch_bin, report_json,
    report_processes, skip, skip_unless_root,
};

const PW_HOLD: &str = env!("CARGO_BIN_EXE_pw-hold");
const PW_THREADS: &str = env!("CARGO_BIN_EXE_pw-threads");
const PW_SHORT: &str = env!("CARGO_BIN_EXE_pw-short");

/// Start time (clock ticks after boot) of `pid`, from /proc/PID/stat field
/// 22: the kernel's own identity of the process.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_comm = &stat[stat.rfind(')').expect("comm end") + 2..];
    after_comm
        .split(' ')
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("start time")
}

/// Waits for pw-hold's `ready`, notes its start time, then lets it exit.
fn run_to_exit(mut child: Child) -> u64 {
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "ready");
    assert!(ready, "pw-hold exited before it was ready");
    let start = start_ticks(child.id());
    drop(child.stdin.take());
    assert!(child.wait().expect("wait").success());
    start
}

fn pw_hold(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped());
    cmd
}

/// Two processes with the same pid, one after the other in one interval:
/// two rows, each with its own start time, name and faults. The second
/// starts as `sh` and execs pw-hold: one process, named after the exec.
#[test]
fn a_reused_pid_is_a_new_process_and_exec_keeps_the_process() {
    let name = "a_reused_pid_is_a_new_process_and_exec_keeps_the_process";
    if skip_unless_root(name) {
        return;
    }
    // One interval for the whole test, so both processes fall in it.
    let tracer = Tracer::start(&["--events", "faults,process", "--interval", "120s"]);
    // 4 MiB written: 1024 faults plus the program's own start-up.
    let first = pw_hold(PW_HOLD, &["4", "nothp"])
        .spawn()
        .expect("spawn pw-hold");
    let pid = first.id();
    let first_start = run_to_exit(first);
    // Start times count clock ticks (10 ms): let a few pass.
    std::thread::sleep(Duration::from_millis(100));
    let last_pid = (pid - 1).to_string();
    let mut second = None;
    for _ in 0..100 {
        let Some(knobs) = Knobs::set(&[("/proc/sys/kernel/ns_last_pid", &last_pid)]) else {
            skip(name, "cannot write /proc/sys/kernel/ns_last_pid");
            return;
        };
        // 8 MiB written after an exec: 2048 faults plus start-up.
        let child = pw_hold("/bin/sh", &["-c", "exec \"$0\" 8 nothp", PW_HOLD])
            .spawn()
            .expect("spawn sh");
        drop(knobs);
        if child.id() == pid {
            second = Some(child);
            break;
        }
        // Another process on the machine took the pid first.
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    let Some(second) = second else {
        skip(
            name,
            "other processes took the forced pid 100 times in a row",
        );
        return;
    };
    let second_start = run_to_exit(second);
    assert_ne!(first_start, second_start, "the kernel's start times differ");
    let lines = tracer.stop();
    let rows: Vec<_> = lines
        .iter()
        .filter_map(TopLine::process)
        .filter(|p| p.pid == pid)
        .collect();
    let row = |start: u64| {
        let found: Vec<_> = rows.iter().filter(|p| p.start_ticks == start).collect();
        assert_eq!(found.len(), 1, "one row for start time {start}: {rows:?}");
        (found[0].comm.clone(), found[0].stats.faults.faults)
    };
    assert_eq!(rows.len(), 2, "pid {pid} was two processes: {rows:?}");
    let (comm, faults) = row(first_start);
    assert_eq!(comm, "pw-hold");
    assert!(
        (1024..2048).contains(&faults),
        "first process: {faults} faults"
    );
    let (comm, faults) = row(second_start);
    assert_eq!(comm, "pw-hold", "named after its exec, not sh");
    assert!(
        faults >= 2048,
        "second process (sh, then pw-hold): {faults} faults"
    );
}

/// `pagewatch record -o FILE ARGS -- CMD`, with the command's stdin and
/// stdout (it inherits pagewatch's) piped to the test.
struct Recording {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    file: PathBuf,
}

impl Recording {
    fn start(name: &str, args: &[&str], cmd: &[&str]) -> Self {
        let file = std::env::temp_dir().join(format!("pw-{name}-{}.rec", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let mut child = Command::new(pagewatch_bin())
            .arg("record")
            .arg("-o")
            .arg(&file)
            .args(args)
            .arg("--")
            .args(cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pagewatch record");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdout,
            file,
        }
    }

    /// The command's next line of output starting with `prefix`, without it.
    fn line(&mut self, prefix: &str) -> String {
        self.stdout
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("the command exited before printing {prefix:?}"))
    }

    /// Closes the command's stdin (it exits), reads its `faults MIN MAJ`
    /// and waits for pagewatch to end with it; returns min + maj.
    fn finish(mut self) -> (u64, PathBuf) {
        drop(self.child.stdin.take());
        let faults: u64 = self
            .line("faults ")
            .split(' ')
            .map(|n| n.parse::<u64>().expect("fault count"))
            .sum();
        let status = self.child.wait().expect("wait for pagewatch");
        assert!(status.success(), "pagewatch record: {status}");
        (faults, self.file.clone())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `process` items of `pagewatch report --format json FILE`.
fn process_lines(file: &Path) -> Vec<ProcessSummary> {
    report_processes(&report_json(file).0).cloned().collect()
}

/// The one `process` item of `pid`.
fn process_line(lines: &[ProcessSummary], pid: u32) -> ProcessSummary {
    let found: Vec<&ProcessSummary> = lines.iter().filter(|p| p.pid == pid).collect();
    assert_eq!(found.len(), 1, "pid {pid} is one process: {lines:?}");
    found[0].clone()
}

/// Four threads each write 16 MiB after their leader thread has exited:
/// one process (not five), alive until its last thread exits, its faults
/// counted once and its memory read through a live thread, matching the
/// kernel's smaps_rollup.
#[test]
fn a_process_whose_leader_exits_first_is_one_process_counted_once() {
    let name = "a_process_whose_leader_exits_first_is_one_process_counted_once";
    if skip_unless_root(name) {
        return;
    }
    let (threads, mib) = (4u64, 16u64);
    let mut rec = Recording::start(
        "threads",
        &["--interval", "200ms", "--events", "faults,process"],
        &[PW_THREADS, &threads.to_string(), &mib.to_string()],
    );
    let pid: u32 = rec.line("pid ").parse().expect("pid");
    rec.line("ready");
    // The kernel's view while it runs: the leader is a zombie, the memory
    // is read through a live thread's /proc directory.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    assert_eq!(
        &stat[stat.rfind(')').unwrap() + 2..][..1],
        "Z",
        "leader exited"
    );
    let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&t| t != pid)
        .collect();
    assert_eq!(tids.len() as u64, threads, "live threads: {tids:?}");
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/task/{}/smaps_rollup", tids[0]))
        .expect("smaps_rollup");
    let rss_kb: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Rss in smaps_rollup");
    // Wait for a snapshot taken after the leader exited and the memory was
    // written (recordings are readable while written).
    let seen = |rec: &Recording| {
        process_lines(&rec.file)
            .iter()
            .find(|p| p.pid == pid)
            .map_or(0, |p| p.snapshots)
    };
    let before = seen(&rec);
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen(&rec) <= before {
        assert!(Instant::now() < deadline, "no snapshot within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (kernel_faults, file) = rec.finish();
    let lines = process_lines(&file);
    let p = process_line(&lines, pid);
    for tid in &tids {
        assert!(
            !lines.iter().any(|l| l.pid == *tid),
            "thread {tid} reported as a process: {lines:?}"
        );
    }
    assert_eq!(p.threads_started, threads, "{p:?}");
    assert!(p.threads_seen > threads, "leader and threads: {p:?}");
    let written = threads * (mib << 20) / 4096;
    let faults = p.faults;
    assert!(
        (written..=kernel_faults).contains(&faults),
        "{faults} faults counted once: at least the {written} pages written, at most the \
         kernel's {kernel_faults} (minflt + majflt)"
    );
    let rss = p.max_rss_pages;
    let oracle = rss_kb / 4;
    assert!(
        rss.abs_diff(oracle) <= oracle / 50,
        "resident pages {rss} vs smaps_rollup {oracle} (read through a live thread)"
    );
    let _ = std::fs::remove_file(file);
}

/// A process that lives for less than one interval: its faults are
/// counted from its events, and the table says whether a snapshot saw it.
#[test]
fn a_process_shorter_than_an_interval_is_counted_from_its_events() {
    let name = "a_process_shorter_than_an_interval_is_counted_from_its_events";
    if skip_unless_root(name) {
        return;
    }
    let mib = 8u64;
    let mut rec = Recording::start(
        "short",
        &["--interval", "60s", "--events", "faults,process"],
        &[PW_SHORT, &mib.to_string()],
    );
    rec.line("ready");
    let pid = rec.child.id();
    let (kernel_faults, file) = rec.finish();
    let lines = process_lines(&file);
    // The command is the child of pagewatch's shell, which execs it in place.
    let p = lines
        .iter()
        .find(|p| p.comm == "pw-short")
        .unwrap_or_else(|| panic!("pw-short not reported: {lines:?}"));
    let cmd_pid = p.pid;
    assert_ne!(cmd_pid, pid, "the command, not pagewatch");
    process_line(&lines, cmd_pid);
    let written = (mib << 20) / 4096;
    let faults = p.faults;
    assert!(
        (written..=kernel_faults).contains(&faults),
        "{faults} faults: at least the {written} pages written, at most the kernel's \
         {kernel_faults} (minflt + majflt)"
    );
    let table = Command::new(pagewatch_bin())
        .arg("report")
        .arg(&file)
        .output()
        .expect("run pagewatch report");
    let table = String::from_utf8_lossy(&table.stdout);
    let row = table
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("pid {cmd_pid} (pw-short)"))
        })
        .unwrap_or_else(|| panic!("no row for pid {cmd_pid}:\n{table}"));
    let snapshots = p.snapshots;
    assert_eq!(
        row.ends_with("no snapshot"),
        snapshots == 0,
        "{row} vs {snapshots} snapshots"
    );
    let _ = std::fs::remove_file(file);
}

/// Processes that exec and exit while the snapshots read them: 40 times,
/// a shell execs pw-short, which writes 32 MiB and exits 0.1 s later,
/// recorded at 50 ms intervals, so snapshots often read a process midway
/// through its exit or just before its exec. Every page they lose is
/// explained by the exit or the exec (sched_process_exit fires after the
/// memory is gone, sched_process_exec after the new image is in), none is
/// left `unexplained` for the interval after.
#[test]
fn processes_read_while_they_exit_or_exec_lose_their_pages_to_the_exit_or_exec() {
    let name = "processes_read_while_they_exit_or_exec_lose_their_pages_to_the_exit_or_exec";
    if skip_unless_root(name) {
        return;
    }
    let file = std::env::temp_dir().join(format!("pw-exits-{}.rec", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let status = Command::new(pagewatch_bin())
        .args(["record", "-o"])
        .arg(&file)
        .args(["--interval", "50ms", "--", "sh", "-c"])
        .arg(
            r#"for i in $(seq 40); do sleep 0.1 | sh -c 'exec "$0" 32' "$0" > /dev/null || exit 1; done"#,
        )
        .arg(PW_SHORT)
        .status()
        .expect("run pagewatch record");
    assert!(status.success(), "pagewatch record: {status}");
    let (lines, _) = report_json(&file);
    let lost = |cause: Option<Cause>| -> u64 {
        lines
            .iter()
            .filter_map(|l| l.transition())
            .filter(|t| t.comm == "pw-short" && t.transition.kind == TransitionKind::Unmapped)
            .filter(|t| cause.is_none_or(|c| t.transition.cause == c))
            .map(|t| t.transition.pages)
            .sum()
    };
    let (all, exit, unexplained) = (
        lost(None),
        lost(Some(Cause::Exit)),
        lost(Some(Cause::Unexplained)),
    );
    let written = 40 * (32 << 20) / 4096;
    assert!(
        exit >= written / 2,
        "{exit} pages unmapped by exit of the {written} pw-short wrote (all unmapped: {all})"
    );
    assert_eq!(
        unexplained, 0,
        "pages unmapped by unexplained, of {all} unmapped (exit {exit})"
    );
    let _ = std::fs::remove_file(file);
}
