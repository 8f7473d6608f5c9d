//! `pagewatch record -o FILE`: like perf record. Traces the chosen
//! processes (or a command it starts, with its whole process tree) and
//! writes every event, interval, attributed transition, per-process page
//! counters and notes to a recording that `pagewatch report` reads. Ends on
//! Ctrl-C, SIGTERM, `--duration` or when the command exits, always with a
//! valid recording.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;
use pagewatch::{
    correlate::balloon::BalloonInterval,
    event::Event,
    proc::{ProcRoot, ProcessKey},
    record::{End, Interval, IntervalSnapshot, Metadata, Process, Record, RecordWriter, Sample},
};

use super::session::{
    IntervalReport, Session, SessionConfig, SessionView, Sink, Summary, TraceArgs,
};

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The recording to write (refuses to overwrite, never follows a symlink).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Replace an existing recording at FILE.
    #[arg(long)]
    force: bool,
    /// Trace and snapshot every process (snapshots cost grows with memory).
    #[arg(long, conflicts_with_all = ["pids", "comm"])]
    all: bool,
    #[command(flatten)]
    trace: TraceArgs,
    /// A command to start and record with its whole process tree; recording
    /// stops when it exits.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

pub fn run(args: RecordArgs) -> anyhow::Result<()> {
    let proc = ProcRoot::default();
    let targeted = args.all || !args.trace.pids.is_empty() || args.trace.comm.is_some();
    if args.command.is_empty() && !targeted {
        bail!("say what to record: --pid PID, --comm NAME, --all, or -- CMD ARGS...");
    }
    if !args.command.is_empty() && targeted {
        bail!("give either a command after -- or --pid/--comm/--all, not both");
    }
    // Loading the hooks takes seconds: refuse a bad output path first.
    RecordWriter::check_path(&args.output, args.force)?;
    let command_line: Vec<String> = std::env::args().collect();
    let target = if args.command.is_empty() {
        command_line[1..].join(" ")
    } else {
        format!("-- {}", args.command.join(" "))
    };
    // A command starts stopped, so the hooks are in place before it runs.
    let child = if args.command.is_empty() {
        None
    } else {
        Some(StoppedChild::spawn(&args.command)?)
    };
    let extra: Vec<u32> = child.iter().map(|c| c.pid).collect();
    let mut config = SessionConfig::validate(args.trace, &proc, &extra)?;
    config.snapshots = true;
    let session = Session::start(config)?;
    let probe = session.probe();
    let metadata = Metadata::capture(command_line, target, &probe.attached, &probe.skipped);
    let writer = if args.force {
        RecordWriter::replace(&args.output, &metadata)
    } else {
        RecordWriter::create(&args.output, &metadata)
    }?;
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
    let result = super::block_on(async {
        match child {
            Some(child) => {
                let exited = child.resume()?;
                session
                    .run(&mut sink, async {
                        let _ = exited.await;
                    })
                    .await
            }
            None => session.run(&mut sink, std::future::pending()).await,
        }
    });
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
    result
}

/// A command started stopped, before it runs any of its own code.
struct StoppedChild {
    pid: u32,
}

impl StoppedChild {
    fn spawn(argv: &[String]) -> anyhow::Result<Self> {
        // std's spawn waits for the exec, so the child cannot stop itself
        // before it: a shell stops itself, then execs the command in place
        // (same pid) once resumed.
        let child = Command::new("/bin/sh")
            .args(["-c", "kill -STOP $$ && exec \"$@\"", "pagewatch-record"])
            .args(argv)
            .spawn()
            .with_context(|| format!("cannot start {:?} through /bin/sh", argv[0]))?;
        let pid = child.id();
        // The Child handle is not needed: the pid is waited for directly.
        std::mem::forget(child);
        let mut status = 0;
        // SAFETY: waiting for our own child, WUNTRACED to see it stop.
        let rc = unsafe { libc::waitpid(pid as i32, &mut status, libc::WUNTRACED) };
        if rc != pid as i32 || !libc::WIFSTOPPED(status) {
            bail!("{:?} did not start (wait status {status:#x})", argv[0]);
        }
        Ok(Self { pid })
    }

    /// Lets the command run; the returned future completes when it exits.
    fn resume(self) -> anyhow::Result<tokio::task::JoinHandle<i32>> {
        // SAFETY: signalling our own stopped child.
        if unsafe { libc::kill(self.pid as i32, libc::SIGCONT) } != 0 {
            bail!(
                "cannot resume pid {}: {}",
                self.pid,
                std::io::Error::last_os_error()
            );
        }
        let pid = self.pid as i32;
        Ok(tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            status
        }))
    }
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
