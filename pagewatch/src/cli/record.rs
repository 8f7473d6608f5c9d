//! `pagewatch record -o FILE`: like perf record. Traces the chosen
//! processes (or a command it starts, with its whole process tree) and
//! writes every event, interval, attributed transition, per-process page
//! counters and notes to a recording that `pagewatch report` reads. Ends on
//! Ctrl-C, SIGTERM, `--duration` or when the command exits, always with a
//! valid recording.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::{fs::MetadataExt as _, process::CommandExt as _},
    },
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use pagewatch::{
    correlate::balloon::BalloonInterval,
    event::Event,
    proc::{ProcRoot, ProcessKey},
    record::{
        End, Interval, IntervalSnapshot, Metadata, Note, Process, Record, RecordError,
        RecordWriter, Sample,
    },
    session::{IntervalReport, SessionView, Sink, Summary},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
};

use super::session::{TraceArgs, config, print_note, say_tracing, start};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording to write: created exclusively before anything starts,
    /// never over an existing file, never through a symbolic link.
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace an existing regular file at FILE.
    #[arg(long)]
    force: bool,
    /// Trace and snapshot every process (snapshots cost grows with memory).
    #[arg(long, conflicts_with_all = ["pids", "comm"])]
    all: bool,
    #[command(flatten)]
    trace: TraceArgs,
    /// A command to start and record with its whole process tree; recording
    /// stops when it exits, and pagewatch exits with its status.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// How long the command has to exit on its own after a signal stopped the
/// recording, and then after SIGTERM.
const GRACE: Duration = Duration::from_secs(2);

/// Records; with `-- CMD`, returns the command's exit status (128 + the
/// signal's number when a signal killed it).
pub fn run(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let targeted = args.all || !args.trace.pids.is_empty() || args.trace.comm.is_some();
    if args.command.is_empty() && !targeted {
        bail!("say what to record: --pid PID, --comm NAME, --all, or -- CMD ARGS...");
    }
    if !args.command.is_empty() && targeted {
        bail!("give either a command after -- or --pid/--comm/--all, not both");
    }
    // Like a shell: 127 for a command not found, 126 for one that cannot
    // be executed, before anything is created or loaded.
    if let Some(program) = args.command.first()
        && let Err((status, why)) = runnable(program)
    {
        eprintln!("pagewatch: error: cannot run {program:?}: {why}; nothing recorded");
        return Ok(ExitCode::from(status));
    }
    super::block_on(record(args))
}

async fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    // From here on Ctrl-C and SIGTERM are noticed, not fatal: nothing is
    // left half started.
    let mut signals = Signals::install()?;
    // The output first (it fails in milliseconds), then the command
    // (stopped, so the hooks are in place before it runs), then the hooks
    // (seconds). Each undoes itself on an error after it: the empty file is
    // removed, the command killed and reaped.
    let output = NewOutput::open(&args.output, args.force)?;
    let proc = ProcRoot::default();
    let command_line: Vec<String> = std::env::args().collect();
    let target = if args.command.is_empty() {
        command_line[1..].join(" ")
    } else {
        format!("-- {}", args.command.join(" "))
    };
    let workload = if args.command.is_empty() {
        None
    } else {
        Some(Workload::spawn(&args.command)?)
    };
    let extra: Vec<u32> = workload.iter().map(|w| w.pid as u32).collect();
    let mut config = config(args.trace, &proc, &extra)?;
    config.snapshots = true;
    let mut session = start(config)?;
    if let Some(signo) = signals.received().await {
        eprintln!(
            "pagewatch: {} while loading the hooks: stopped{}; nothing recorded",
            signal_name(signo),
            if workload.is_some() {
                " before the command ran"
            } else {
                ""
            }
        );
        return Ok(ExitCode::from(128 + signo as u8));
    }
    let probe = session.probe();
    let metadata = Metadata::capture(command_line, target, &probe.attached, &probe.skipped);
    let writer = output.start(&metadata)?;
    // The hooks are attached and the recording is open: what is left needs
    // only the capabilities for reading pages. The command, started
    // before, keeps its own.
    session.drop_privileges();
    let mut sink = RecordSink {
        path: writer.path().to_owned(),
        writer: Some(writer),
        size: None,
        seen: BTreeMap::new(),
        proc,
        events: 0,
        transitions: 0,
    };
    let (result, status) = match workload {
        Some(mut workload) => {
            let result = match workload.resume() {
                Ok(()) => {
                    session
                        .run(&mut sink, async {
                            tokio::select! {
                                _ = workload.wait() => {}
                                _ = signals.next() => {}
                            }
                        })
                        .await
                }
                Err(e) => Err(e),
            };
            // The recording has ended; the command must end too.
            let signalled = signals.received().await.is_some();
            (result, Some(workload.end(signalled).await?))
        }
        None => {
            let result = session
                .run(&mut sink, async {
                    signals.next().await;
                })
                .await;
            (result, None)
        }
    };
    match sink.size {
        Some(bytes) => eprintln!(
            "pagewatch: recorded {} events and {} transition groups to {} ({:.1} MiB)",
            sink.events,
            sink.transitions,
            sink.path.display(),
            bytes as f64 / (1 << 20) as f64
        ),
        None => eprintln!(
            "pagewatch: {} holds what was recorded before the error",
            sink.path.display()
        ),
    }
    let code = status.map(|s| {
        let code = exit_code(s);
        if libc::WIFSIGNALED(s) {
            eprintln!(
                "pagewatch: the command was killed by signal {} (exit status {code})",
                libc::WTERMSIG(s)
            );
        } else {
            eprintln!("pagewatch: the command exited with status {code}");
        }
        code
    });
    result.map(|()| code.map_or(ExitCode::SUCCESS, ExitCode::from))
}

/// Whether `program` is something `execvp` would run: Err with a shell's
/// exit status (127 not found, 126 not executable) and why.
fn runnable(program: &str) -> Result<(), (u8, &'static str)> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .collect()
    };
    let mut refused = None;
    for candidate in &candidates {
        let Ok(meta) = std::fs::metadata(candidate) else {
            continue;
        };
        if meta.is_dir() {
            refused.get_or_insert("it is a directory");
        } else if !executable(candidate) {
            refused.get_or_insert("permission denied (not executable)");
        } else {
            return Ok(());
        }
    }
    match refused {
        Some(why) => Err((126, why)),
        None if program.contains('/') => Err((127, "no such file")),
        None => Err((127, "command not found in PATH")),
    }
}

fn executable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        // SAFETY: a valid NUL-terminated path.
        .is_ok_and(|p| unsafe { libc::access(p.as_ptr(), libc::X_OK) } == 0)
}

/// A shell's exit status for a wait status: the exit code, or 128 + the
/// number of the signal that killed the process.
fn exit_code(status: i32) -> u8 {
    if libc::WIFSIGNALED(status) {
        128u8.saturating_add(libc::WTERMSIG(status) as u8)
    } else {
        libc::WEXITSTATUS(status) as u8
    }
}

fn signal_name(signo: i32) -> String {
    match signo {
        libc::SIGINT => "SIGINT".to_owned(),
        libc::SIGTERM => "SIGTERM".to_owned(),
        n => format!("signal {n}"),
    }
}

/// SIGINT and SIGTERM, listened to from the start of `record`.
struct Signals {
    int: Signal,
    term: Signal,
    /// The first one received.
    got: Option<i32>,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            got: None,
        })
    }

    /// Waits for the next signal.
    async fn next(&mut self) {
        let signo = tokio::select! {
            _ = self.int.recv() => libc::SIGINT,
            _ = self.term.recv() => libc::SIGTERM,
        };
        self.got.get_or_insert(signo);
    }

    /// The first signal received so far, without waiting for one.
    async fn received(&mut self) -> Option<i32> {
        if self.got.is_none() {
            // The runtime reads delivered signals when it polls its
            // driver, which it does before resuming a yielded task.
            tokio::task::yield_now().await;
            tokio::select! {
                biased;
                () = self.next() => {}
                () = std::future::ready(()) => {}
            }
        }
        self.got
    }
}

/// The recording's file, created before anything else starts and removed
/// again (still empty) if the recording never starts.
struct NewOutput {
    file: Option<File>,
    path: PathBuf,
}

impl NewOutput {
    fn open(path: &Path, force: bool) -> Result<Self, RecordError> {
        let file = if force {
            RecordWriter::replace_file(path)
        } else {
            RecordWriter::create_file(path)
        }?;
        Ok(Self {
            file: Some(file),
            path: path.to_owned(),
        })
    }

    fn start(mut self, metadata: &Metadata) -> anyhow::Result<RecordWriter> {
        let file = self
            .file
            .take()
            .context("internal: the recording was already started")?;
        Ok(RecordWriter::start(file, self.path.clone(), metadata)?)
    }
}

impl Drop for NewOutput {
    fn drop(&mut self) {
        // Only the file created here: not one put in its place since.
        if let Some(file) = &self.file
            && let (Ok(ours), Ok(there)) = (file.metadata(), self.path.symlink_metadata())
            && (ours.dev(), ours.ino()) == (there.dev(), there.ino())
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The command `record` runs. Started stopped, before it runs any code of
/// its own; killed with pagewatch (PR_SET_PDEATHSIG), and killed and
/// reaped on drop unless it was waited for, so no error path leaves it
/// stopped or orphaned.
struct Workload {
    pid: i32,
    /// Readable once the command exits.
    pidfd: AsyncFd<OwnedFd>,
    /// The wait status, once reaped.
    status: Option<i32>,
}

impl Workload {
    fn spawn(argv: &[String]) -> anyhow::Result<Self> {
        // std's spawn waits for the exec, so the child cannot stop itself
        // before it: a shell stops itself, then execs the command in place
        // (same pid) once resumed.
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", "kill -STOP $$ && exec \"$@\"", "pagewatch-record"])
            .args(argv);
        // SAFETY: only prctl and getpid/getppid, async-signal-safe, run
        // between fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("pagewatch exited"));
                }
                Ok(())
            })
        };
        // A SIGCHLD ignored by whoever started pagewatch would have the
        // kernel reap the command, its exit status lost.
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {:?} through /bin/sh", argv[0]))?;
        // The Child handle is not needed: the pid is waited for directly.
        let pid = child.id() as i32;
        match reap(pid, libc::WUNTRACED) {
            Ok(Some(status)) if libc::WIFSTOPPED(status) => {}
            Ok(Some(status)) => bail!("{:?} did not start (wait status {status:#x})", argv[0]),
            Ok(None) => bail!("{:?} did not start", argv[0]),
            Err(e) => {
                kill_and_reap(pid);
                return Err(e).context("cannot wait for the command to start");
            }
        }
        // SAFETY: pidfd_open takes a pid and flags; our unreaped child's pid
        // cannot be reused.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = (|| {
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            // SAFETY: the AsyncFd owns the descriptor, which stays open
            // and unchanged for as long as it is registered.
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
        })();
        let pidfd = match pidfd {
            Ok(pidfd) => pidfd,
            Err(e) => {
                kill_and_reap(pid);
                return Err(e).context("cannot watch the command (pidfd_open)");
            }
        };
        Ok(Self {
            pid,
            pidfd,
            status: None,
        })
    }

    /// Lets the command run.
    fn resume(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
            .with_context(|| format!("cannot resume the command (pid {})", self.pid))
    }

    fn signal(&self, signo: i32) -> std::io::Result<()> {
        // SAFETY: signalling our own child, not yet reaped (its pid is
        // still its own).
        if self.status.is_none() && unsafe { libc::kill(self.pid, signo) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the command to exit and reaps it; returns its wait status.
    async fn wait(&mut self) -> anyhow::Result<i32> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            let mut guard = self
                .pidfd
                .readable()
                .await
                .context("cannot wait for the command")?;
            self.status = reap(self.pid, libc::WNOHANG)?;
            guard.clear_ready();
        }
    }

    /// Ends the command after the recording ended: when a signal ended the
    /// recording it has `GRACE` to exit on its own (Ctrl-C reaches the
    /// whole foreground process group), then SIGTERM and `GRACE` more, then
    /// SIGKILL. Returns its wait status.
    async fn end(&mut self, signalled: bool) -> anyhow::Result<i32> {
        if signalled && let Ok(status) = tokio::time::timeout(GRACE, self.wait()).await {
            return status;
        }
        if self.status.is_none() {
            self.status = reap(self.pid, libc::WNOHANG)?;
        }
        if let Some(status) = self.status {
            return Ok(status);
        }
        eprintln!(
            "pagewatch: the recording ended before the command (pid {}): sending it SIGTERM",
            self.pid
        );
        let _ = self.signal(libc::SIGTERM);
        if let Ok(status) = tokio::time::timeout(GRACE, self.wait()).await {
            return status;
        }
        eprintln!(
            "pagewatch: the command (pid {}) outlived SIGTERM by {GRACE:?}: sending it SIGKILL",
            self.pid
        );
        let _ = self.signal(libc::SIGKILL);
        self.wait().await
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.status.is_none() {
            kill_and_reap(self.pid);
        }
    }
}

/// Reaps our child `pid` if it has exited (`flags` WNOHANG: else None) or
/// once it exits (0); its wait status.
fn reap(pid: i32, flags: i32) -> std::io::Result<Option<i32>> {
    let mut status = 0;
    loop {
        // SAFETY: reaping our own child.
        match unsafe { libc::waitpid(pid, &mut status, flags) } {
            0 => return Ok(None),
            -1 => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => return Ok(Some(status)),
        }
    }
}

/// Kills our child `pid` (stopped or not) and reaps it.
fn kill_and_reap(pid: i32) {
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = reap(pid, 0);
}

/// Writes the session into a recording.
struct RecordSink {
    /// Taken by `finish`, which closes the recording.
    writer: Option<RecordWriter>,
    path: PathBuf,
    /// Bytes written, once finished.
    size: Option<u64>,
    /// Processes (pid and start time: a reused pid is another process)
    /// already described by a Process record, with the name written (a new
    /// record follows an exec).
    seen: BTreeMap<ProcessKey, String>,
    proc: ProcRoot,
    events: u64,
    transitions: u64,
}

impl RecordSink {
    fn writer(&mut self) -> anyhow::Result<&mut RecordWriter> {
        self.writer
            .as_mut()
            .context("internal: the recording is already closed")
    }

    /// A Process record the first time a process appears, and again when
    /// an exec renamed it.
    fn describe(&mut self, key: ProcessKey, ts_ns: u64, comm: &str) -> anyhow::Result<()> {
        if self.seen.get(&key).is_some_and(|c| c == comm) {
            return Ok(());
        }
        self.seen.insert(key, comm.to_owned());
        let pid = key.pid;
        // ppid and command line only while the pid is still this process.
        let stat = self
            .proc
            .stat_fields(pid)
            .filter(|s| key.start_ticks == 0 || s.1 == key.start_ticks);
        let cmdline = if stat.is_some() {
            self.proc.cmdline(pid)
        } else {
            Vec::new()
        };
        self.writer()?.write(&Record::Process(Process {
            ts_ns,
            pid,
            start_ticks: stat.map_or(key.start_ticks, |s| s.1),
            ppid: stat.map_or(0, |s| s.0),
            comm: comm.to_owned(),
            cmdline,
        }))?;
        Ok(())
    }
}

impl Sink for RecordSink {
    fn tracing(&mut self) -> anyhow::Result<()> {
        say_tracing()
    }

    fn note(&mut self, note: &Note) -> anyhow::Result<()> {
        print_note(note);
        self.writer()?.write(&Record::Note(note.clone()))?;
        Ok(())
    }

    fn event(&mut self, raw: &[u8], _event: &Event) -> anyhow::Result<()> {
        self.events += 1;
        self.writer()?.write_event(raw)?;
        Ok(())
    }

    fn interval(&mut self, view: &mut SessionView<'_>, r: &IntervalReport) -> anyhow::Result<()> {
        let snapshotted: BTreeSet<u32> = r
            .transitions
            .iter()
            .map(|t| t.pid)
            .chain(r.counters.iter().map(|c| c.pid))
            .chain(r.swap_returns.iter().map(|s| s.pid))
            .chain(r.thp_coverage.iter().map(|c| c.pid))
            .collect();
        let mut processes: BTreeSet<ProcessKey> = snapshotted
            .into_iter()
            .map(|pid| view.comms.key(pid))
            .collect();
        processes.extend(
            r.tally
                .processes
                .keys()
                .filter(|k| view.shown(k.pid))
                .copied(),
        );
        for key in processes {
            let comm = view.comms.name(key).to_owned();
            self.describe(key, r.ts_ns, &comm)?;
        }
        for t in &r.transitions {
            self.transitions += 1;
            self.writer()?.write(&Record::Transition(t.clone()))?;
        }
        for c in &r.counters {
            self.writer()?.write(&Record::Sample(Sample {
                ts_ns: r.ts_ns,
                pid: c.pid,
                rss_pages: c.rss,
                anon_pages: c.anon,
                file_pages: c.file,
                swap_pages: c.swap,
                thp_pages: c.thp,
                hugetlb_pages_per_node: c.hugetlb_per_node.clone(),
            }))?;
        }
        for s in &r.swap_returns {
            self.writer()?.write(&Record::SwapReturns(s.clone()))?;
        }
        for p in &r.hugetlb_pools {
            self.writer()?.write(&Record::HugetlbPool(p.clone()))?;
        }
        for c in &r.thp_coverage {
            self.writer()?.write(&Record::VmaThp(c.clone()))?;
        }
        let b = &r.tally.system.page_events;
        let balloon = BalloonInterval {
            ts_ns: r.ts_ns,
            vmstat_inflated: b.balloon_vmstat_inflated,
            vmstat_deflated: b.balloon_vmstat_deflated,
            hook_inflated: b.balloon_inflated,
            hook_deflated: b.balloon_deflated,
        };
        if balloon
            != (BalloonInterval {
                ts_ns: r.ts_ns,
                ..BalloonInterval::default()
            })
        {
            self.writer()?.write(&Record::Balloon(balloon))?;
        }
        let events = self.events;
        self.writer()?.write(&Record::Interval(Interval {
            index: r.index,
            ts_ns: r.ts_ns,
            events,
            dropped: r.dropped_total,
            dropped_per_cpu: r.dropped_per_cpu.clone(),
            snapshot: r.snapshot_work.as_ref().zip(r.snapshot_time).map(|(w, t)| {
                IntervalSnapshot {
                    ns: t.as_nanos() as u64,
                    rescanned: w.rescanned,
                    rescanned_pages: w.rescanned_pages,
                    carried: w.carried,
                    carried_pages: w.carried_pages,
                }
            }),
        }))?;
        // Each interval reaches the disk: a SIGKILL loses at most one.
        self.writer()?.flush()?;
        Ok(())
    }

    fn finish(&mut self, _view: &mut SessionView<'_>, s: &Summary) -> anyhow::Result<()> {
        let end = End {
            ts_ns: s.end_ns,
            events: self.events,
            dropped: s.dropped_per_cpu.iter().sum(),
            duration_ns: (s.duration_s * 1e9) as u64,
        };
        let writer = self
            .writer
            .take()
            .context("internal: recording closed twice")?;
        self.size = Some(writer.finish(end)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use pagewatch::note::Severity;

    use super::*;
    use crate::cli::{Cli, Command, report};

    /// A note handed to the recording's sink is written as a Record::Note,
    /// and `report` shows it.
    #[test]
    fn notes_reach_the_recording_and_the_report() {
        let dir = std::env::temp_dir().join(format!("pw-note-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notes.pwrec");
        let _ = std::fs::remove_file(&path);
        let metadata = Metadata::capture(Vec::new(), "test".into(), &[], &[]);
        let output = NewOutput::open(&path, false).unwrap();
        let mut sink = RecordSink {
            path: path.clone(),
            writer: Some(output.start(&metadata).unwrap()),
            size: None,
            seen: BTreeMap::new(),
            proc: ProcRoot::default(),
            events: 0,
            transitions: 0,
        };
        let text = "this kernel's per-process RSS counters are approximate";
        sink.note(&Note::now(Severity::Warning, text)).unwrap();
        let end = End {
            ts_ns: 0,
            events: 0,
            dropped: 0,
            duration_ns: 0,
        };
        sink.writer.take().unwrap().finish(end).unwrap();

        let cli = Cli::try_parse_from(["pagewatch", "report", path.to_str().unwrap()]).unwrap();
        let Some(Command::Report(args)) = cli.command else {
            panic!("not a report command");
        };
        let loaded = report::load(&args).unwrap();
        let mut shown = Vec::new();
        report::table(&mut shown, &loaded, report::By::Process, |_| true).unwrap();
        let shown = String::from_utf8(shown).unwrap();
        assert_eq!(
            shown.matches(&format!("note: {text}")).count(),
            1,
            "{shown}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
