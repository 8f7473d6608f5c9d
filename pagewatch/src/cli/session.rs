//! Arguments every tracing subcommand takes, checked and turned into a
//! [`SessionConfig`] for the library's session; starting and running it,
//! printing what it says.

use std::time::Duration;

use anyhow::bail;
use clap::Args;
use pagewatch::{
    hooks::Family,
    kernel::page_size,
    note::{Note, Severity},
    probe::ProbeOptions,
    proc::ProcRoot,
    session::{Session, SessionConfig, Target},
};

use super::{parse_duration, parse_size};

/// Options every tracing subcommand takes.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Time between reports and snapshots, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after this long (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Only these processes and their descendants (repeatable); filtered in
    /// the kernel, children joining at fork.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only processes with this command name (/proc/PID/comm), rescanned every interval.
    #[arg(long, conflicts_with = "pids")]
    pub comm: Option<String>,
    /// Event families to attach (default: all but page-alloc).
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<Family>,
    /// Ring buffer size: a power of two of at least one page, e.g. 4M.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub ring_buffer_size: u64,
}

/// Checks `args` against the system; `extra_pids` (a command started by
/// `record`) join the target.
pub fn config(
    args: TraceArgs,
    proc: &ProcRoot,
    extra_pids: &[u32],
) -> anyhow::Result<SessionConfig> {
    let page = page_size();
    let rb = args.ring_buffer_size;
    if !rb.is_power_of_two() || rb < page || rb > 1 << 30 {
        bail!(
            "--ring-buffer-size {rb} must be a power of two between the page size ({page}) and 1G"
        );
    }
    let target = if let Some(name) = args.comm {
        if proc.pids_named(&name).is_empty() {
            bail!(
                "no running process is named {name:?} (names are matched against /proc/PID/comm)"
            );
        }
        Target::Comm(name)
    } else if args.pids.is_empty() && extra_pids.is_empty() {
        Target::All
    } else {
        if let Some(&pid) = args.pids.iter().find(|&&p| !proc.pid_exists(p)) {
            bail!("no process with pid {pid}");
        }
        Target::Pids(args.pids.iter().chain(extra_pids).copied().collect())
    };
    let families = if args.events.is_empty() {
        Family::DEFAULT.to_vec()
    } else {
        args.events.clone()
    };
    Ok(SessionConfig {
        interval: args.interval,
        duration: args.duration,
        probe: ProbeOptions {
            ring_buffer_bytes: u32::try_from(rb).expect("bounded above"),
            filter_tgids: !matches!(target, Target::All),
            families,
        },
        snapshots: !matches!(target, Target::All),
        target,
        proc: proc.clone(),
    })
}

/// Starts a session, saying on stderr which hooks it attached and which
/// it skipped, and why.
pub fn start(config: SessionConfig) -> anyhow::Result<Session> {
    let session = Session::start(config)?;
    let probe = session.probe();
    if probe.mounted_tracefs {
        eprintln!("pagewatch: mounted tracefs on /sys/kernel/tracing");
    }
    for s in &probe.skipped {
        eprintln!("pagewatch: skipping hook {}: {}", s.program, s.reason);
    }
    let names: Vec<&str> = probe
        .attached
        .iter()
        .map(|a| a.tracepoint.as_str())
        .collect();
    eprintln!(
        "pagewatch: attached {} hooks: {}",
        names.len(),
        names.join(", ")
    );
    Ok(session)
}

/// Says that the session traces (from [`Sink::tracing`], once Ctrl-C
/// stops it cleanly).
pub fn say_tracing() -> anyhow::Result<()> {
    eprintln!("pagewatch: tracing; Ctrl-C to stop");
    Ok(())
}

/// Prints a session's note on stderr.
pub fn print_note(note: &Note) {
    match note.severity {
        Severity::Info => eprintln!("pagewatch: {}", note.text),
        Severity::Warning => eprintln!("pagewatch: note: {}", note.text),
        Severity::Error => eprintln!("pagewatch: error: {}", note.text),
    }
}
