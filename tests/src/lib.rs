//! Shared helpers for pagewatch's integration tests: where the pagewatch
//! binary is (workloads come from `env!("CARGO_BIN_EXE_<name>")`), how a test skips loudly, and small /proc readers used as oracles.
//!
//! Tests run against the real kernel as root. A test that cannot run here
//! calls [`skip`], which prints the reason and appends it to the file named
//! by `PAGEWATCH_SKIP_LOG` (set by `cargo xtask test`), so the run reports
//! it as skipped rather than passed.

pub use pagewatch::{
    output::{Item, ProcessSummary, ReportLine, ReportSummary, TopLine, TopSummary},
    transition::{Cause, TransitionGroup, TransitionKind},
};
use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

/// The pagewatch binary under test: `$PAGEWATCH_BIN`, else the release build.
pub fn pagewatch_bin() -> PathBuf {
    std::env::var_os("PAGEWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/pagewatch"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Whether we run as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Report a test as skipped: printed loudly and logged for the run summary.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("PAGEWATCH_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{test}\t{reason}");
    }
}

/// Skips `test` (saying so) unless setpriv, which the capability tests cut
/// capabilities with, is installed; true when skipped.
pub fn skip_without_setpriv(test: &str) -> bool {
    let present = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        skip(test, "setpriv (util-linux) is not installed");
    }
    !present
}

/// Skip (returning true) unless running as root.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        false
    } else {
        skip(test, "needs root (BPF, /proc/kpageflags)");
        true
    }
}

/// Read one `/proc/vmstat` counter.
pub fn vmstat(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").expect("read /proc/vmstat");
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// `pagewatch record -o OUT --interval 300ms -- sh -c "FEED | PROGRAM ARGS
/// | tee OUT.stdout"`, where PROGRAM prints `ready` as its third line and
/// one line per `go` it reads. FEED waits for the events, not for time:
/// after `ready`, and after each `go` is answered, two intervals pass (the
/// recording grows twice: each interval's records are flushed after its
/// snapshot, so the second snapshot began after the answer) before the
/// next `go` is sent, `gos` times, and stdin is closed. Each wait gives up
/// after 60 s (a stalled recorder fails the test rather than hanging it).
/// Asserts the recording succeeded and returns pagewatch's stdout (the
/// command's) and stderr.
pub fn record_fed(out: &str, program: &str, args: &str, gos: usize) -> (String, String) {
    let answers = format!("{out}.stdout");
    let wait = format!(
        "lines() {{ n=0; while [ \"$(cat '{answers}' 2>/dev/null | wc -l)\" -lt $1 ] \
         && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; }}; \
         grown() {{ s=$(stat -c %s '{out}'); n=0; while [ \"$(stat -c %s '{out}')\" = \"$s\" ] \
         && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done; }}; "
    );
    let mut feed = String::new();
    for answered in 3..3 + gos {
        feed += &format!("lines {answered}; grown; grown; echo go; ");
    }
    feed += &format!("lines {}; grown; grown", 3 + gos);
    let script = format!("{wait}({feed}) | {program} {args} | tee '{answers}'; true");
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
    assert!(err.contains("recorded"), "{err}");
    (stdout, err)
}

/// The number in field `field` (0-based, space-separated) of the line of
/// `stdout` starting with `verb`: pw-thp's answers `collapse RC ERRNO
/// before KB after KB` and `split ...` (field 4 is before, 6 after, smaps'
/// AnonHugePages in kB).
pub fn answer_field(stdout: &str, verb: &str, field: usize) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{verb} ")))
        .unwrap_or_else(|| panic!("no {verb} line in: {stdout}"));
    line.split(' ')
        .nth(field)
        .and_then(|kb| kb.parse().ok())
        .unwrap_or_else(|| panic!("bad {verb} line {line:?}"))
}

/// Run pagewatch with `args` to completion, returning (status, stdout, stderr).
pub fn run_pagewatch(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(pagewatch_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn pagewatch");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// pagewatch's note when this kernel's /proc/kpageflags sets KSM on every
/// anonymous page (a kernel bug pagewatch probes for): no per-page KSM
/// state can be known there, so KSM checks are skipped with this reason.
pub fn kpageflags_ksm_bug() -> Option<String> {
    let pid = std::process::id().to_string();
    let (status, out, err) = run_pagewatch(&["snapshot", "--pid", &pid, "--format", "json"]);
    assert!(
        status.success(),
        "pagewatch snapshot of the test failed: {err}"
    );
    let j: serde_json::Value = serde_json::from_str(&out).expect("snapshot JSON");
    j["notes"]
        .as_array()?
        .iter()
        .filter_map(|n| n.as_str())
        .find(|n| n.contains("sets KSM on every anonymous page"))
        .map(str::to_owned)
}

/// `pagewatch top --json ARGS` in the background, stopped with SIGINT.
pub struct Tracer {
    /// `None` once stopped.
    child: Option<std::process::Child>,
}

impl Tracer {
    /// Starts pagewatch and waits until it says it is tracing.
    pub fn start(args: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(pagewatch_bin())
            .args(["top", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pagewatch");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[pagewatch] {line}");
                if line.contains("tracing;") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("pagewatch did not start tracing within 60 s");
        Self { child: Some(child) }
    }

    /// pagewatch's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGINT (as Ctrl-C does) and returns the JSON lines it printed.
    pub fn stop(mut self) -> Vec<TopLine> {
        let child = self.child.take().expect("running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().expect("wait for pagewatch");
        assert!(out.status.success(), "pagewatch exited with {}", out.status);
        json_lines(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// pagewatch's JSON lines (`top --json`: [`TopLine`], `report --format
/// json`: [`ReportLine`]), each parsed through its type; a line that does
/// not parse fails the test, naming it.
pub fn json_lines<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a pagewatch JSON line {l:?}: {e}"))
        })
        .collect()
}

/// The summary of `top --json`'s lines.
pub fn summary(lines: &[TopLine]) -> &TopSummary {
    lines
        .iter()
        .find_map(TopLine::summary)
        .expect("a summary line")
}

/// `pagewatch report --format json FILE`: its lines and its stderr (the
/// test fails if the report does).
pub fn report_json(file: &std::path::Path) -> (Vec<ReportLine>, String) {
    let (status, out, err) =
        run_pagewatch(&["report", "--format", "json", &file.to_string_lossy()]);
    assert!(status.success(), "report failed: {err}");
    (json_lines(&out), err)
}

/// The summary of `report --format json`'s lines.
pub fn report_summary(lines: &[ReportLine]) -> &ReportSummary {
    lines
        .iter()
        .find_map(ReportLine::summary)
        .expect("a summary line")
}

/// The `process` items of `report --format json`'s lines.
pub fn report_processes(lines: &[ReportLine]) -> impl Iterator<Item = &ProcessSummary> {
    lines.iter().filter_map(|l| match l.item() {
        Some(Item::Process(p)) => Some(p),
        _ => None,
    })
}

/// The transition groups of `top --json`'s lines.
pub fn top_transitions(lines: &[TopLine]) -> impl Iterator<Item = &TransitionGroup> {
    lines.iter().filter_map(|l| match l.item() {
        Some(Item::Transition(t)) => Some(t),
        _ => None,
    })
}

/// The fault workload (`pw-faults window MIB`, at `program`), started
/// and waiting for "go".
pub struct FaultWorkload {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    pub pid: u32,
}

impl FaultWorkload {
    pub fn start(program: &str, mib: usize) -> Self {
        use std::io::BufRead as _;
        let mut child = Command::new(program)
            .args(["window", &mib.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pw-faults");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let pid_line = lines.next().expect("pid line").expect("read");
        let pid = pid_line
            .strip_prefix("pid ")
            .and_then(|p| p.parse().ok())
            .expect("pid N");
        assert_eq!(lines.next().expect("ready").expect("read"), "ready");
        Self {
            child,
            stdin,
            lines,
            pid,
        }
    }

    /// Runs the window; returns (kernel fault delta, pages touched).
    pub fn run_window(&mut self) -> (u64, u64) {
        writeln!(self.stdin, "go").expect("send go");
        let line = self.lines.next().expect("result").expect("read");
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!((f[0], f[2]), ("delta", "pages"), "unexpected {line:?}");
        (f[1].parse().unwrap(), f[3].parse().unwrap())
    }

    pub fn finish(mut self) {
        drop(self.stdin);
        assert!(self.child.wait().expect("wait").success());
    }
}

/// NUMA balancing off until the guard drops (restored even on failure),
/// where the kernel has it: on a NUMA machine (the test VM has two nodes)
/// its hinting faults, some retried and some from kernel mode, add faults a
/// window did not ask for (seen as 5-6 extra faults on 6.12 and 7.3
/// guests), and its migrations compete with the ones a test makes.
pub fn no_numa_balancing() -> Option<Knobs> {
    const NUMA_BALANCING: &str = "/proc/sys/kernel/numa_balancing";
    std::path::Path::new(NUMA_BALANCING)
        .exists()
        .then(|| Knobs::set(&[(NUMA_BALANCING, "0")]).expect("cannot switch NUMA balancing off"))
}

/// sysfs/procfs knobs set for a test and restored (in reverse) on drop,
/// even when the test fails.
pub struct Knobs(Vec<(PathBuf, String)>);

impl Knobs {
    /// Sets each `(file, value)`; None (and nothing left changed) if any
    /// file cannot be read or written.
    pub fn set(settings: &[(&str, &str)]) -> Option<Self> {
        let mut knobs = Self(Vec::new());
        for (file, value) in settings {
            let path = PathBuf::from(file);
            let old = std::fs::read_to_string(&path).ok()?.trim().to_owned();
            std::fs::write(&path, value).ok()?;
            knobs.0.push((path, old));
        }
        Some(knobs)
    }
}

impl Drop for Knobs {
    fn drop(&mut self) {
        for (path, value) in self.0.iter().rev() {
            let _ = std::fs::write(path, value);
        }
    }
}

/// A scratch directory (`$TMPDIR/pw-rec-NAME-PID`) removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pw-rec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Chooses `value` in a sysfs choice file such as THP's `enabled`
/// (`always [madvise] never`), restored to the bracketed choice on drop;
/// None if it cannot be read or written.
pub fn set_choice(file: &str, value: &str) -> Option<Knobs> {
    let text = std::fs::read_to_string(file).ok()?;
    let old = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?
        .to_owned();
    std::fs::write(file, value).ok()?;
    Some(Knobs(vec![(PathBuf::from(file), old)]))
}

/// Grows the hugetlb pool whose `nr_hugepages` file is `nr_file` (global
/// or one node's) by `n` pages, restored when the guard drops; None if the
/// pool would not grow.
pub fn grow_hugetlb_pool(nr_file: &str, n: u64) -> Option<Knobs> {
    let old = read_u64(nr_file)?;
    let knobs = Knobs::set(&[(nr_file, &(old + n).to_string())])?;
    (read_u64(nr_file)? >= old + n).then_some(knobs)
}

/// A file holding one number (sysfs), None if unreadable.
pub fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A memory cgroup with a byte limit, removed on drop: v1 where the memory
/// controller is mounted there (as on hosts whose v2 hierarchy has no
/// controllers enabled), else v2 (enabling the memory
/// controller in the root's subtree_control for the test, and restoring it).
pub struct MemCgroup {
    dir: PathBuf,
    /// The v2 parent whose subtree_control was changed.
    enabled_in: Option<PathBuf>,
}

impl MemCgroup {
    /// None when this kernel has no memory cgroup controller.
    pub fn create(limit: u64) -> Option<Self> {
        let name = format!("pagewatch-test-{}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let cg = Self {
                dir: v1.join(name),
                enabled_in: None,
            };
            std::fs::create_dir_all(&cg.dir).expect("create memory cgroup");
            std::fs::write(cg.dir.join("memory.limit_in_bytes"), limit.to_string())
                .expect("set memory.limit_in_bytes");
            return Some(cg);
        }
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        let root = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })?;
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return None;
        }
        let subtree = std::fs::read_to_string(root.join("cgroup.subtree_control")).ok()?;
        let mut cg = Self {
            dir: root.join(name),
            enabled_in: None,
        };
        if !subtree.split_whitespace().any(|c| c == "memory") {
            std::fs::write(root.join("cgroup.subtree_control"), "+memory")
                .expect("enable the memory controller");
            cg.enabled_in = Some(root.clone());
        }
        std::fs::create_dir_all(&cg.dir).expect("create memory cgroup");
        std::fs::write(cg.dir.join("memory.max"), limit.to_string()).expect("set memory.max");
        Some(cg)
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Sets the cgroup's byte limit.
    pub fn set_limit(&self, limit: u64) {
        let file = if self.dir.join("memory.limit_in_bytes").exists() {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        std::fs::write(self.dir.join(file), limit.to_string()).expect("set the memory limit");
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(parent) = &self.enabled_in {
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "-memory");
        }
    }
}

/// An anonymous private read-write mapping of `len` bytes with THP off
/// (MADV_NOHUGEPAGE), for the workloads; panics on failure.
pub fn map_anon_4k(len: usize) -> *mut u8 {
    // SAFETY: anonymous private mapping, checked for MAP_FAILED.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "mmap {len} bytes");
        assert_eq!(libc::madvise(p, len, libc::MADV_NOHUGEPAGE), 0);
        p.cast()
    }
}

/// A private anonymous read-write mapping of `len` bytes starting on a
/// 2 MiB boundary, exactly one VMA: the alignment
/// slack is unmapped. Returns its start address.
pub fn map_anon_pmd_aligned(len: usize) -> usize {
    const PMD: usize = 2 << 20;
    // SAFETY: anonymous private mapping with room to align, checked for
    // MAP_FAILED; both trimmed ranges lie inside it.
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            len + PMD,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(raw, libc::MAP_FAILED, "mmap {len} bytes");
        let start = (raw as usize).next_multiple_of(PMD);
        if start > raw as usize {
            libc::munmap(raw, start - raw as usize);
        }
        let (end, raw_end) = (start + len, raw as usize + len + PMD);
        if raw_end > end {
            libc::munmap(end as *mut libc::c_void, raw_end - end);
        }
        start
    }
}

/// One VMA of /proc/PID/smaps: start, name, inode and its kB fields.
#[derive(Debug)]
pub struct SmapsVma {
    pub start: u64,
    pub name: String,
    pub inode: u64,
    pub kb: std::collections::HashMap<String, u64>,
}

/// Every VMA of /proc/PID/smaps with its kB fields (the tests' oracle).
pub fn smaps(pid: u32) -> Vec<SmapsVma> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out: Vec<SmapsVma> = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let Some((a, _)) = w[0].split_once('-')
            && let Ok(start) = u64::from_str_radix(a, 16)
            && w.len() >= 5
        {
            out.push(SmapsVma {
                start,
                name: w.get(5..).map(|n| n.join(" ")).unwrap_or_default(),
                inode: w[4].parse().unwrap_or(0),
                kb: std::collections::HashMap::new(),
            });
        } else if w.len() == 3 && w[2] == "kB" {
            let v = out.last_mut().unwrap();
            v.kb.insert(
                w[0].trim_end_matches(':').to_string(),
                w[1].parse().unwrap(),
            );
        }
    }
    out
}

/// The kB fields of /proc/PID/smaps_rollup.
pub fn rollup(pid: u32) -> std::collections::HashMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 3 && w[2] == "kB").then(|| {
                (
                    w[0].trim_end_matches(':').to_string(),
                    w[1].parse().unwrap(),
                )
            })
        })
        .collect()
}

/// This process's page faults so far (minflt, majflt: /proc/self/stat
/// fields 10 and 12, summed by the kernel over all its threads, those
/// that exited included), for workloads to report as the oracle.
pub fn own_faults() -> (u64, u64) {
    faults_of("self")
}

/// The page faults (minflt, majflt) of process `pid` (a number or `self`)
/// so far, as [`own_faults`] reads them.
pub fn faults_of(pid: &str) -> (u64, u64) {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let f: Vec<&str> = stat[stat.rfind(')').expect("comm end") + 2..]
        .split(' ')
        .collect();
    (f[7].parse().expect("minflt"), f[9].parse().expect("majflt"))
}
