//! Processes, not pids, against the running kernel: a pid handed to a new
//! process (forced through /proc/sys/kernel/ns_last_pid) is reported as a
//! process of its own, and exec keeps the process but renames it.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use pagewatch_tests::{Knobs, Tracer, skip, skip_unless_root};
use serde_json::Value;

const PW_HOLD: &str = env!("CARGO_BIN_EXE_pw-hold");

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
    let rows: Vec<&Value> = lines
        .iter()
        .filter(|l| l["pid"].as_u64() == Some(u64::from(pid)) && l.get("faults").is_some())
        .collect();
    let row = |start: u64| {
        let found: Vec<&&Value> = rows
            .iter()
            .filter(|l| l["start_ticks"].as_u64() == Some(start))
            .collect();
        assert_eq!(found.len(), 1, "one row for start time {start}: {rows:?}");
        (
            found[0]["comm"].as_str().expect("comm").to_owned(),
            found[0]["faults"].as_u64().expect("faults"),
        )
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
