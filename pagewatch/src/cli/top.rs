//! `pagewatch top`: attach the fault and reclaim hooks, stream events from
//! the ring buffer, and print per-process and system figures every interval
//! (table or JSON lines) until Ctrl-C, SIGTERM or `--duration`, then a summary.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use clap::{Args, ValueEnum};
use pagewatch::{
    aggregate::{Aggregator, ProcessStats, SystemStats, Tally},
    error::Error,
    event::{Decoder, EventKind},
    hooks::{self, Family},
    probe::{Probe, ProbeOptions},
    proc::{CommCache, ProcRoot},
};
use pagewatch_common::hook::Hook;
use serde_json::json;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use super::{parse_duration, parse_size};

/// Event families selectable with `--events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FamilyArg {
    Faults,
    Reclaim,
    Thp,
    Compaction,
    Migration,
    Ksm,
    Oom,
    Process,
    /// kmem/mm_page_alloc and mm_page_free: every page, high volume.
    PageAlloc,
    /// Balloon inflate/deflate (fentry; refused on locked-down kernels).
    Balloon,
}

impl From<FamilyArg> for Family {
    fn from(f: FamilyArg) -> Self {
        match f {
            FamilyArg::Faults => Family::Fault,
            FamilyArg::Reclaim => Family::Reclaim,
            FamilyArg::Thp => Family::Thp,
            FamilyArg::Compaction => Family::Compaction,
            FamilyArg::Migration => Family::Migration,
            FamilyArg::Ksm => Family::Ksm,
            FamilyArg::Oom => Family::Oom,
            FamilyArg::Process => Family::Process,
            FamilyArg::PageAlloc => Family::PageAlloc,
            FamilyArg::Balloon => Family::Balloon,
        }
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Time between reports, e.g. 1s or 500ms.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Stop after this long (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Only these processes (repeatable); filtered in the kernel.
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// Only processes with this command name (/proc/PID/comm), rescanned every interval.
    #[arg(long, conflicts_with = "pids")]
    comm: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Ring buffer size: a power of two of at least one page, e.g. 4M.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    ring_buffer_size: u64,
    /// Event families to attach (default: all but page-alloc).
    #[arg(long, value_delimiter = ',')]
    events: Vec<FamilyArg>,
    /// Rows per interval in the table.
    #[arg(long, default_value_t = 10)]
    limit: usize,
}

/// Which processes to show and record.
#[derive(Debug, Clone)]
enum Target {
    All,
    Pids(BTreeSet<u32>),
    Comm(String),
}

/// Validated `top` options.
#[derive(Debug)]
struct TopConfig {
    interval: Duration,
    duration: Option<Duration>,
    target: Target,
    json: bool,
    probe: ProbeOptions,
    limit: usize,
}

impl TopConfig {
    fn validate(args: TopArgs, proc: &ProcRoot) -> anyhow::Result<Self> {
        let page = page_size();
        let rb = args.ring_buffer_size;
        if !rb.is_power_of_two() || rb < page || rb > 1 << 30 {
            bail!(
                "--ring-buffer-size {rb} must be a power of two between the page size ({page}) and 1G"
            );
        }
        let target = if let Some(name) = args.comm {
            if proc.pids_named(&name).is_empty() {
                return Err(Error::UnknownComm(name).into());
            }
            Target::Comm(name)
        } else if args.pids.is_empty() {
            Target::All
        } else {
            if let Some(&pid) = args.pids.iter().find(|&&p| !proc.pid_exists(p)) {
                return Err(Error::UnknownPid(pid).into());
            }
            Target::Pids(args.pids.into_iter().collect())
        };
        let families = if args.events.is_empty() {
            Family::DEFAULT.to_vec()
        } else {
            args.events.iter().map(|&f| f.into()).collect()
        };
        Ok(Self {
            interval: args.interval,
            duration: args.duration,
            json: args.json,
            limit: args.limit,
            probe: ProbeOptions {
                ring_buffer_bytes: u32::try_from(rb).expect("bounded above"),
                filter_tgids: !matches!(target, Target::All),
                families,
            },
            target,
        })
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let proc = ProcRoot::default();
    let config = TopConfig::validate(args, &proc)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(Session::start(config, proc)?.run())
}

/// A running `top`: the probe, the aggregation and what has been printed.
struct Session {
    config: TopConfig,
    probe: Probe,
    /// The event stream, until `run` starts polling it.
    ring: Option<RingBuf<MapData>>,
    decoder: Decoder,
    aggregator: Aggregator,
    comms: CommCache,
    proc: ProcRoot,
    /// Processes currently in the filter (for `--pid`/`--comm`).
    tracked: BTreeSet<u32>,
    started: Instant,
    intervals: u64,
    decode_errors: u64,
    dropped_reported: u64,
}

impl Session {
    fn start(config: TopConfig, proc: ProcRoot) -> anyhow::Result<Self> {
        let (probe, ring) = Probe::load(&config.probe)?;
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
        let mut session = Self {
            decoder: Decoder::new(&probe.attached),
            probe,
            ring: Some(ring),
            aggregator: Aggregator::default(),
            comms: CommCache::new(proc.clone()),
            proc,
            tracked: BTreeSet::new(),
            started: Instant::now(),
            intervals: 0,
            decode_errors: 0,
            dropped_reported: 0,
            config,
        };
        session.refresh_targets()?;
        Ok(session)
    }

    /// Adds newly matching processes to the in-kernel filter.
    fn refresh_targets(&mut self) -> anyhow::Result<()> {
        let wanted: Vec<u32> = match &self.config.target {
            Target::All => return Ok(()),
            Target::Pids(pids) => pids.iter().copied().collect(),
            Target::Comm(name) => self.proc.pids_named(name),
        };
        for pid in wanted {
            if self.tracked.insert(pid) {
                self.probe.track_tgid(pid)?;
                self.comms.get(pid);
            }
        }
        Ok(())
    }

    async fn run(mut self) -> anyhow::Result<()> {
        let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.interval,
            self.config.interval,
        );
        let stop_at = self
            .config
            .duration
            .map(|d| tokio::time::Instant::now() + d);
        let stop = async {
            match stop_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        let ring = self
            .ring
            .take()
            .context("internal: ring buffer already polled")?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged,
        // for as long as the AsyncFd owns the RingBuf.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| Error::Poll(e.into_parts().1))?;
        eprintln!("pagewatch: tracing; Ctrl-C to stop");
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.map_err(Error::Poll)?;
                    self.drain(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = ticker.tick() => {
                    self.drain(ring.get_mut());
                    self.report_interval()?;
                    self.refresh_targets()?;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                () = &mut stop => break,
            }
        }
        self.drain(ring.get_mut());
        // The last, partial interval, unless the stop fell on a tick.
        if self.aggregator.has_events()
            || self.dropped_reported != self.drops_per_cpu()?.iter().sum::<u64>()
        {
            self.report_interval()?;
        }
        self.report_summary()
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            match self.decoder.decode(&item) {
                Ok(event) => {
                    // Look the name up on first sight, while the process
                    // most likely still exists; an exit event names those
                    // that were gone already.
                    self.comms.get(event.tgid);
                    if let EventKind::ProcessExit { pid, comm, .. } = event.kind
                        && pid == i64::from(event.tgid)
                    {
                        self.comms.learn(event.tgid, &comm);
                    }
                    self.aggregator.add(&event);
                }
                Err(e) => {
                    self.decode_errors += 1;
                    log::debug!("undecodable record: {e}");
                }
            }
        }
    }

    /// Drops per CPU summed over every hook.
    fn drops_per_cpu(&self) -> anyhow::Result<Vec<u64>> {
        let mut per_cpu: Vec<u64> = Vec::new();
        for hook in Hook::ALL {
            for (cpu, n) in self.probe.drops(hook)?.into_iter().enumerate() {
                if per_cpu.len() <= cpu {
                    per_cpu.resize(cpu + 1, 0);
                }
                per_cpu[cpu] += n;
            }
        }
        Ok(per_cpu)
    }

    /// khugepaged scan results by the running kernel's names for them.
    fn scan_results(&self, tally: &Tally) -> BTreeMap<String, u64> {
        tally
            .scan_status
            .iter()
            .map(|(&status, &n)| {
                let name = self
                    .decoder
                    .symbol(Hook::ScanPmd, "status", status)
                    .map_or_else(|| format!("status_{status}"), str::to_owned);
                (name, n)
            })
            .collect()
    }

    fn shown(&self, pid: u32) -> bool {
        match self.config.target {
            Target::All => true,
            _ => self.tracked.contains(&pid),
        }
    }

    fn report_interval(&mut self) -> anyhow::Result<()> {
        let tally = self.aggregator.take_interval();
        self.intervals += 1;
        let dropped_total: u64 = self.drops_per_cpu()?.iter().sum();
        let dropped = dropped_total - self.dropped_reported;
        self.dropped_reported = dropped_total;
        let t = self.started.elapsed().as_secs_f64();
        let mut rows: Vec<(u32, ProcessStats)> = tally
            .processes
            .iter()
            .filter(|(pid, _)| self.shown(**pid))
            .map(|(pid, s)| (*pid, *s))
            .collect();
        rows.sort_by_key(|(pid, s)| (std::cmp::Reverse(s.faults.faults), *pid));
        let mut out = std::io::stdout().lock();
        if self.config.json {
            for (pid, stats) in &rows {
                let mut line = json!({"interval": self.intervals, "t": round3(t), "pid": pid,
                    "comm": self.comms.get(*pid)});
                merge(&mut line, serde_json::to_value(stats)?);
                writeln!(out, "{line}")?;
            }
            let mut system = json!({"interval": self.intervals, "t": round3(t),
                "events": tally.events, "dropped": dropped});
            merge(
                &mut system,
                json!({"system": tally.system,
                       "thp_scan_results": self.scan_results(&tally)}),
            );
            writeln!(out, "{system}")?;
        } else {
            writeln!(
                out,
                "{:>7.1}s  events {}  dropped {}  | {}",
                t,
                tally.events,
                dropped,
                reclaim_line(&tally.system)
            )?;
            if let Some(line) = page_events_line(&tally.system, &self.scan_results(&tally)) {
                writeln!(out, "{:>9} {line}", "")?;
            }
            write_table(&mut out, &rows, self.config.limit, &mut self.comms)?;
        }
        out.flush()?;
        Ok(())
    }

    fn report_summary(&mut self) -> anyhow::Result<()> {
        let per_cpu = self.drops_per_cpu()?;
        let mut per_hook = BTreeMap::new();
        for hook in Hook::ALL {
            let n: u64 = self.probe.drops(hook)?.iter().sum();
            if n > 0 {
                per_hook.insert(hooks::spec(hook).program, n);
            }
        }
        let total: Tally = self.aggregator.total().clone();
        let dropped: u64 = per_cpu.iter().sum();
        let processes: Vec<(u32, ProcessStats)> = total
            .processes
            .iter()
            .filter(|(pid, _)| self.shown(**pid))
            .map(|(pid, s)| (*pid, *s))
            .collect();
        let faults: u64 = processes.iter().map(|(_, s)| s.faults.faults).sum();
        let mut out = std::io::stdout().lock();
        if self.config.json {
            let skipped: Vec<_> = self
                .probe
                .skipped
                .iter()
                .map(|s| json!({"hook": s.program, "reason": s.reason}))
                .collect();
            let hooks: Vec<&str> = self
                .probe
                .attached
                .iter()
                .map(|a| a.tracepoint.as_str())
                .collect();
            let summary = json!({"summary": {
                "events": total.events,
                "dropped": dropped,
                "dropped_per_cpu": per_cpu,
                "dropped_per_hook": per_hook,
                "decode_errors": self.decode_errors,
                "intervals": self.intervals,
                "duration_s": round3(self.started.elapsed().as_secs_f64()),
                "faults": faults,
                "processes": processes.len(),
                "system": total.system,
                "thp_scan_results": self.scan_results(&total),
                "hooks": hooks,
                "skipped_hooks": skipped,
            }});
            writeln!(out, "{summary}")?;
        } else {
            writeln!(
                out,
                "\nsummary: {:.1}s, {} events, {} dropped (per CPU: {:?}), {} faults in {} processes",
                self.started.elapsed().as_secs_f64(),
                total.events,
                dropped,
                per_cpu,
                faults,
                processes.len()
            )?;
            writeln!(out, "{}", reclaim_line(&total.system))?;
            if let Some(line) = page_events_line(&total.system, &self.scan_results(&total)) {
                writeln!(out, "{line}")?;
            }
            let mut rows = processes;
            rows.sort_by_key(|(pid, s)| (std::cmp::Reverse(s.faults.faults), *pid));
            write_table(&mut out, &rows, self.config.limit, &mut self.comms)?;
        }
        if dropped > 0 {
            eprintln!(
                "pagewatch: {dropped} events were dropped because the ring buffer was full; \
                 raise --ring-buffer-size"
            );
        }
        Ok(())
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn reclaim_line(s: &SystemStats) -> String {
    format!(
        "reclaim: scanned {} reclaimed {} written {} | kswapd {} wakes {:.1}ms | direct {} {:.1}ms | memcg {} {:.1}ms",
        s.pages_scanned,
        s.pages_reclaimed,
        s.pages_written,
        s.kswapd_wakes,
        ms(s.kswapd_ns),
        s.reclaim.direct_reclaims,
        ms(s.reclaim.direct_reclaim_ns),
        s.reclaim.memcg_reclaims,
        ms(s.reclaim.memcg_reclaim_ns),
    )
}

/// THP, compaction, migration, KSM, OOM and process counts, when any.
fn page_events_line(s: &SystemStats, scans: &BTreeMap<String, u64>) -> Option<String> {
    let p = &s.page_events;
    let any = [
        p.thp_scans,
        p.compactions,
        p.pages_migrated + p.migrate_failed,
        p.ksm_merges,
        p.oom_kills,
        p.forks + p.execs + p.exits,
        p.pages_allocated + p.pages_freed,
        p.balloon_inflated + p.balloon_deflated,
    ]
    .iter()
    .any(|&n| n > 0);
    if !any {
        return None;
    }
    let mut reasons: Vec<(&String, &u64)> = scans.iter().collect();
    reasons.sort_by_key(|(name, n)| (std::cmp::Reverse(**n), *name));
    let reasons: Vec<String> = reasons
        .iter()
        .take(3)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    Some(format!(
        "thp: scans {} ({}) collapsed {} failed {} | compaction {} migrated {} failed {} | \
         migrate ok {} failed {} | ksm merges {} | oom kills {} | fork {} exec {} exit {}{}{}",
        p.thp_scans,
        reasons.join(", "),
        p.thp_collapses,
        p.thp_collapse_failed,
        p.compactions,
        p.compaction_migrated,
        p.compaction_failed,
        p.pages_migrated,
        p.migrate_failed,
        p.ksm_merges,
        p.oom_kills,
        p.forks,
        p.execs,
        p.exits,
        if p.pages_allocated + p.pages_freed > 0 {
            format!(
                " | pages alloc {} free {}",
                p.pages_allocated, p.pages_freed
            )
        } else {
            String::new()
        },
        if p.balloon_inflated + p.balloon_deflated > 0 {
            format!(
                " | balloon +{} -{} pages",
                p.balloon_inflated, p.balloon_deflated
            )
        } else {
            String::new()
        }
    ))
}

fn write_table(
    out: &mut impl std::io::Write,
    rows: &[(u32, ProcessStats)],
    limit: usize,
    comms: &mut CommCache,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "{:>8} {:<16} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>10} {:>10} {:>8}",
        "PID",
        "COMM",
        "FAULTS",
        "READ",
        "WRITE",
        "IFETCH",
        "PROT",
        "KADDR",
        "DIRECT_MS",
        "MEMCG_MS",
        "THP_COLL"
    )?;
    for (pid, s) in rows.iter().take(limit) {
        let f = &s.faults;
        writeln!(
            out,
            "{:>8} {:<16} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>10.1} {:>10.1} {:>8}",
            pid,
            comms.get(*pid),
            f.faults,
            f.read,
            f.write,
            f.ifetch,
            f.protection,
            f.kernel_addr,
            ms(s.reclaim.direct_reclaim_ns),
            ms(s.reclaim.memcg_reclaim_ns),
            s.thp_collapses
        )?;
    }
    if rows.len() > limit {
        writeln!(out, "{:>8} ({} more processes)", "...", rows.len() - limit)?;
    }
    Ok(())
}
