//! `pagewatch report FILE`: reads a recording back and shows it as a
//! readable timeline and summary (table), one JSON object per transition
//! group (json, for jq), or Chrome trace-event JSON that ui.perfetto.dev
//! opens (perfetto): counter tracks per process (RSS, anon, file, swap,
//! THP, hugetlb per node, pages back from swap and their time there, THP
//! coverage per VMA), system counter tracks for the per-node hugetlb pools,
//! instant events for transitions and slices for reclaim, compaction and
//! balloon episodes (with the pages each process lost during a balloon
//! episode in the table and JSON too). A recording cut short is read up to
//! its last complete record, and the report says where it was cut.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::PathBuf,
};

use clap::{Args, ValueEnum};
use pagewatch::{
    aggregate::Aggregator,
    correlate::{
        balloon::{self, BalloonEpisode, BalloonInterval},
        hugepages::{PoolSample, VmaThp},
        swap::SwapReturns,
    },
    event::{Event, EventKind},
    output::{
        HugetlbHeld, Item, ProcessSummary, ReportItem, ReportLine, ReportSummary, ReportTransition,
    },
    record::{IntervalSnapshot, Metadata, Note, Process, Record, RecordReader, Sample},
    transition::TransitionGroup,
};
use serde_json::{Value, json};

#[path = "compare.rs"]
pub mod compare;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
    Perfetto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum By {
    Process,
    Vma,
    Cause,
    Node,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A recording written by `pagewatch record`.
    file: PathBuf,
    /// How the summary groups transitions.
    #[arg(long, default_value = "process")]
    by: By,
    /// Only these processes (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    #[arg(long, default_value = "table")]
    format: Format,
    /// Check a condition instead of printing the report, e.g.
    /// `unexplained <= 1%` (repeatable; exit 1 if one fails; see docs/report.md).
    #[arg(long = "expect", value_name = "EXPR", value_parser = super::expect::Expectation::parse)]
    expect: Vec<super::expect::Expectation>,
}

impl ReportArgs {
    /// Whether `--pid` lets `pid`'s records through.
    fn wanted(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }
}

/// Everything read from a recording.
pub(super) struct Loaded {
    meta: Metadata,
    transitions: Vec<TransitionGroup>,
    processes: HashMap<u32, Process>,
    samples: Vec<Sample>,
    swap_returns: Vec<SwapReturns>,
    pools: Vec<PoolSample>,
    thp_coverage: Vec<VmaThp>,
    /// The end of every interval, and the intervals with balloon activity.
    interval_ends: Vec<u64>,
    balloon: Vec<BalloonInterval>,
    notes: Vec<Note>,
    events: Vec<Event>,
    aggregator: Aggregator,
    intervals: u64,
    /// What each interval's snapshot read and carried over.
    snapshots: Vec<IntervalSnapshot>,
    dropped: u64,
    undecodable: u64,
    end: bool,
    /// Where and why the recording stops early.
    cut: Option<String>,
    skipped_records: u64,
}

/// `snapshots: 60, median 1.2 ms; processes read again per snapshot:
/// median 0, max 200 (pages 0 / 2560000); carried: median 200`.
fn snapshot_line(s: &[IntervalSnapshot]) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    let median = |f: fn(&IntervalSnapshot) -> u64| {
        let mut v: Vec<u64> = s.iter().map(f).collect();
        v.sort_unstable();
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (ns, _) = median(|x| x.ns);
    let (r, rmax) = median(|x| x.rescanned);
    let (rp, rpmax) = median(|x| x.rescanned_pages);
    let (c, _) = median(|x| x.carried);
    Some(format!(
        "snapshots: {}, median {:.1} ms; processes read again per snapshot: median {r}, max {rmax} \
         (pages {rp} / {rpmax}); carried over unchanged: median {c}",
        s.len(),
        ns as f64 / 1e6
    ))
}

pub(super) fn load(args: &ReportArgs) -> anyhow::Result<Loaded> {
    let mut reader = RecordReader::open(&args.file)?;
    let meta = reader.metadata().clone();
    let decoder = meta.decoder();
    let wanted = |pid: u32| args.wanted(pid);
    let mut l = Loaded {
        meta,
        transitions: Vec::new(),
        processes: HashMap::new(),
        samples: Vec::new(),
        swap_returns: Vec::new(),
        pools: Vec::new(),
        thp_coverage: Vec::new(),
        interval_ends: Vec::new(),
        balloon: Vec::new(),
        notes: Vec::new(),
        events: Vec::new(),
        aggregator: Aggregator::default(),
        intervals: 0,
        snapshots: Vec::new(),
        dropped: 0,
        undecodable: 0,
        end: false,
        cut: None,
        skipped_records: 0,
    };
    for record in reader.by_ref() {
        match record {
            Ok(Record::Event(raw)) => match decoder.decode(&raw) {
                Ok(e) if wanted(e.tgid) || !is_per_process(&e) => {
                    l.aggregator.add(&e);
                    l.events.push(e);
                }
                Ok(_) => {}
                Err(_) => l.undecodable += 1,
            },
            Ok(Record::Interval(i)) => {
                l.aggregator.take_interval();
                l.intervals += 1;
                l.interval_ends.push(i.ts_ns);
                l.dropped = i.dropped;
                l.snapshots.extend(i.snapshot);
            }
            Ok(Record::Transition(t)) if wanted(t.pid) => l.transitions.push(t),
            Ok(Record::Process(p)) => {
                l.processes.insert(p.pid, p);
            }
            Ok(Record::Sample(s)) if wanted(s.pid) => l.samples.push(s),
            Ok(Record::SwapReturns(s)) if wanted(s.pid) => l.swap_returns.push(s),
            Ok(Record::HugetlbPool(p)) => l.pools.push(p),
            Ok(Record::VmaThp(t)) if wanted(t.pid) => l.thp_coverage.push(t),
            Ok(Record::Balloon(b)) => l.balloon.push(b),
            Ok(Record::Note(n)) => l.notes.push(n),
            Ok(Record::End(e)) => {
                l.end = true;
                l.dropped = e.dropped;
            }
            Ok(_) => {}
            Err(cut) => l.cut = Some(cut.to_string()),
        }
    }
    // Events after the last interval (a recording cut short).
    l.aggregator.take_interval();
    l.skipped_records = reader.skipped();
    Ok(l)
}

/// Events about one process (as opposed to system-wide reclaim etc.).
fn is_per_process(e: &Event) -> bool {
    matches!(e.kind, EventKind::PageFault { .. })
}

pub fn run(args: ReportArgs) -> anyhow::Result<std::process::ExitCode> {
    let l = load(&args)?;
    let wanted = |pid: u32| args.wanted(pid);
    if let Some(cut) = &l.cut {
        eprintln!("pagewatch: note: {cut}; the report covers what came before");
    }
    if !args.expect.is_empty() {
        return Ok(super::expect::report(&args.expect, &facts(&l)));
    }
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => table(&mut out, &l, args.by, wanted)?,
        Format::Json => json_lines(&mut out, &l, wanted)?,
        Format::Perfetto => {
            serde_json::to_writer(&mut out, &perfetto(&l))?;
            writeln!(out)?;
        }
    }
    out.flush()?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `--expect` reads of a recording.
fn facts(l: &Loaded) -> super::expect::Facts<'_> {
    super::expect::Facts {
        transitions: &l.transitions,
        comms: l
            .processes
            .iter()
            .map(|(&pid, p)| (pid, p.comm.as_str()))
            .collect(),
        faults: l
            .aggregator
            .total()
            .processes
            .iter()
            .map(|(&pid, s)| (pid, s.faults.faults))
            .collect(),
        events: l.events.len() as u64,
        dropped: l.dropped,
    }
}

fn comm(l: &Loaded, pid: u32) -> &str {
    l.processes.get(&pid).map_or("?", |p| p.comm.as_str())
}

fn secs(l: &Loaded, ts_ns: u64) -> f64 {
    ts_ns.saturating_sub(l.meta.start_monotonic_ns) as f64 / 1e9
}

pub(super) fn table(
    out: &mut impl std::io::Write,
    l: &Loaded,
    by: By,
    wanted: impl Fn(u32) -> bool,
) -> anyhow::Result<()> {
    let m = &l.meta;
    let started = m
        .start_time()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    writeln!(
        out,
        "recording of {} on Linux {} by pagewatch {} (started at unix time {}), {} intervals",
        m.target,
        m.kernel_release,
        m.pagewatch_version,
        started.as_secs(),
        l.intervals
    )?;
    if let Some(line) = snapshot_line(&l.snapshots) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "hooks: {} attached, {} skipped; events {} ({} dropped by the kernel, {} undecodable)",
        m.hooks.len(),
        m.hooks_skipped.len(),
        l.events.len(),
        l.dropped,
        l.undecodable
    )?;
    for s in &m.hooks_skipped {
        writeln!(out, "  skipped {}: {}", s.program, s.reason)?;
    }
    for n in &l.notes {
        writeln!(out, "  note: {}", n.text)?;
    }
    match (&l.cut, l.end) {
        (Some(cut), _) => writeln!(out, "  CUT: {cut}")?,
        (None, false) => writeln!(out, "  the recording has no End record")?,
        _ => {}
    }
    writeln!(out, "\ntimeline:")?;
    for t in &l.transitions {
        writeln!(
            out,
            "{:>8.2}s  {}",
            secs(l, t.ts_ns),
            t.describe(comm(l, t.pid))
        )?;
    }
    writeln!(out, "\nsummary by {}:", name_by(by))?;
    let mut groups: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for t in &l.transitions {
        let key = match by {
            By::Process => format!("pid {} ({})", t.pid, comm(l, t.pid)),
            By::Vma => format!("pid {} {} {:#x}", t.pid, t.vma_label(), t.vma_start),
            By::Cause => t.cause.to_string(),
            By::Node => format!("node {} -> {}", t.from_node, t.to_node),
        };
        *groups
            .entry((key, t.kind.to_string(), t.cause.to_string()))
            .or_default() += t.pages;
    }
    for ((key, kind, cause), pages) in &groups {
        writeln!(
            out,
            "  {key:<40} {kind:<18} {cause:<16} {pages:>10} pages {:>10.1} MiB",
            *pages as f64 * 4096.0 / f64::from(1 << 20)
        )?;
    }
    // Time in swap per process and VMA over the whole recording.
    let mut swap: BTreeMap<(u32, u64), SwapReturns> = BTreeMap::new();
    for r in &l.swap_returns {
        let total = swap
            .entry((r.pid, r.vma_start))
            .or_insert_with(|| SwapReturns {
                pages: 0,
                time_in_swap_ns: 0,
                max_ns: 0,
                ..r.clone()
            });
        total.pages += r.pages;
        total.time_in_swap_ns += r.time_in_swap_ns;
        total.max_ns = total.max_ns.max(r.max_ns);
    }
    if !swap.is_empty() {
        writeln!(out, "\nswap round trips:")?;
        for r in swap.values() {
            writeln!(out, "  {}", r.describe(comm(l, r.pid)))?;
        }
    }
    if !l.thp_coverage.is_empty() {
        writeln!(out, "\nTHP coverage per VMA (when it changed):")?;
        for c in &l.thp_coverage {
            writeln!(
                out,
                "{:>8.2}s  {}",
                secs(l, c.ts_ns),
                c.describe(comm(l, c.pid))
            )?;
        }
    }
    if !l.pools.is_empty() {
        writeln!(out, "\nhugetlb pools per node (when they changed):")?;
        for p in &l.pools {
            writeln!(out, "{:>8.2}s  {}", secs(l, p.ts_ns), p.describe())?;
        }
    }
    let episodes = balloon_episodes(l);
    if !episodes.is_empty() {
        writeln!(
            out,
            "\nballoon episodes (pages lost by each process meanwhile):"
        )?;
        for e in &episodes {
            let line = e.describe(l.meta.start_monotonic_ns, |pid| comm(l, pid).to_owned());
            writeln!(out, "  {line}")?;
        }
    }
    let held = hugetlb_held(l);
    if !held.is_empty() {
        writeln!(out, "\nhugetlb pages held (most at one snapshot):")?;
        for ((pid, node), pages) in held {
            writeln!(
                out,
                "  pid {pid} ({}) node {node}: {} kB",
                comm(l, pid),
                pages * 4
            )?;
        }
    }
    let processes = process_summaries(l, wanted);
    if !processes.is_empty() {
        let unseen = processes.iter().filter(|p| p.snapshots == 0).count();
        writeln!(
            out,
            "\nprocesses ({}; {unseen} with no snapshot, counted from their events only):",
            processes.len()
        )?;
        for p in &processes {
            writeln!(out, "  {}", p.describe())?;
        }
    }
    Ok(())
}

/// Every process the recording describes (those followed; not, say,
/// khugepaged, whose scans are tallied under its pid), with `pid` wanted.
fn process_summaries(l: &Loaded, wanted: impl Fn(u32) -> bool) -> Vec<ProcessSummary> {
    let totals = &l.aggregator.total().processes;
    let mut pids: Vec<u32> = l.processes.keys().copied().collect();
    pids.sort_unstable();
    let mut tids: HashMap<u32, std::collections::BTreeSet<u32>> = HashMap::new();
    for e in &l.events {
        tids.entry(e.tgid).or_default().insert(e.tid);
    }
    pids.into_iter()
        .filter(|&pid| wanted(pid))
        .map(|pid| {
            let stats = totals.get(&pid).copied().unwrap_or_default();
            let samples = l.samples.iter().filter(|s| s.pid == pid);
            ProcessSummary {
                pid,
                comm: comm(l, pid).to_owned(),
                faults: stats.faults.faults,
                threads_seen: tids.get(&pid).map_or(0, |t| t.len() as u64),
                threads_started: stats.threads_started,
                processes_started: stats.processes_started,
                snapshots: samples.clone().count() as u64,
                max_rss_pages: samples.map(|s| s.rss_pages).max().unwrap_or(0),
            }
        })
        .collect()
}

fn balloon_episodes(l: &Loaded) -> Vec<BalloonEpisode> {
    balloon::episodes(
        l.meta.start_monotonic_ns,
        &l.interval_ends,
        &l.balloon,
        &l.transitions,
    )
}

/// The most hugetlb pages (4 KiB units) each process held on each node at
/// one snapshot.
fn hugetlb_held(l: &Loaded) -> BTreeMap<(u32, usize), u64> {
    let mut held: BTreeMap<(u32, usize), u64> = BTreeMap::new();
    for s in &l.samples {
        for (node, &pages) in s.hugetlb_pages_per_node.iter().enumerate() {
            if pages > 0 {
                let e = held.entry((s.pid, node)).or_default();
                *e = (*e).max(pages);
            }
        }
    }
    held
}

fn name_by(by: By) -> &'static str {
    match by {
        By::Process => "process",
        By::Vma => "VMA",
        By::Cause => "cause",
        By::Node => "node",
    }
}

fn json_lines(
    out: &mut impl std::io::Write,
    l: &Loaded,
    wanted: impl Fn(u32) -> bool,
) -> anyhow::Result<()> {
    let mut lines: Vec<ReportLine> = l
        .transitions
        .iter()
        .map(|t| {
            ReportLine::Transition(ReportTransition {
                transition: t.clone(),
                t: secs(l, t.ts_ns),
                comm: comm(l, t.pid).to_owned(),
            })
        })
        .collect();
    let mut item = |ts_ns: Option<u64>, pid: Option<u32>, item: Item| {
        lines.push(ReportLine::Item(ReportItem {
            t: ts_ns.map(|ns| secs(l, ns)),
            comm: pid.map(|pid| comm(l, pid).to_owned()),
            item,
        }));
    };
    for s in &l.swap_returns {
        item(Some(s.ts_ns), Some(s.pid), Item::SwapReturns(s.clone()));
    }
    for c in &l.thp_coverage {
        item(Some(c.ts_ns), Some(c.pid), Item::ThpCoverage(c.clone()));
    }
    for p in &l.pools {
        item(Some(p.ts_ns), None, Item::HugetlbPool(p.clone()));
    }
    for e in balloon_episodes(l) {
        item(Some(e.start_ns), None, Item::BalloonEpisode(e));
    }
    for ((pid, node), pages) in hugetlb_held(l) {
        let held = HugetlbHeld {
            pid,
            node: node as u64,
            max_kb: pages * l.meta.page_size / 1024,
        };
        item(None, Some(pid), Item::HugetlbHeld(held));
    }
    for p in process_summaries(l, wanted) {
        item(None, None, Item::Process(p));
    }
    lines.push(ReportLine::Summary {
        summary: ReportSummary {
            target: l.meta.target.clone(),
            kernel: l.meta.kernel_release.clone(),
            intervals: l.intervals,
            events: l.events.len() as u64,
            dropped: l.dropped,
            transitions: l.transitions.len() as u64,
            snapshots: snapshot_line(&l.snapshots),
            complete: l.end && l.cut.is_none(),
            cut: l.cut.clone(),
            skipped_records: l.skipped_records,
        },
    });
    for line in &lines {
        writeln!(out, "{}", serde_json::to_string(line)?)?;
    }
    Ok(())
}

/// Chrome trace-event JSON (the format ui.perfetto.dev and chrome://tracing
/// read): ts in microseconds since the recording started.
fn perfetto(l: &Loaded) -> Value {
    let us = |ts_ns: u64| ts_ns.saturating_sub(l.meta.start_monotonic_ns) as f64 / 1e3;
    let mut ev: Vec<Value> = Vec::new();
    for p in l.processes.values() {
        ev.push(
            json!({"ph": "M", "name": "process_name", "pid": p.pid, "tid": p.pid,
            "args": {"name": p.comm}}),
        );
    }
    for s in &l.samples {
        let kb = |pages: u64| pages * 4;
        ev.push(
            json!({"ph": "C", "name": "memory (kB)", "pid": s.pid, "ts": us(s.ts_ns),
            "args": {"rss": kb(s.rss_pages), "anon": kb(s.anon_pages), "file": kb(s.file_pages),
                     "swap": kb(s.swap_pages), "thp": kb(s.thp_pages)}}),
        );
        if !s.hugetlb_pages_per_node.is_empty() {
            let per_node: serde_json::Map<String, Value> = s
                .hugetlb_pages_per_node
                .iter()
                .enumerate()
                .map(|(n, p)| (format!("node{n}"), json!(kb(*p))))
                .collect();
            ev.push(
                json!({"ph": "C", "name": "hugetlb (kB)", "pid": s.pid, "ts": us(s.ts_ns),
                "args": per_node}),
            );
        }
    }
    // System tracks (pid 0): the per-node hugetlb pools, balloon episodes.
    let episodes = balloon_episodes(l);
    for e in &episodes {
        ev.push(json!({"ph": "X", "cat": "balloon", "pid": 0, "tid": 0,
            "name": if e.inflate { "balloon inflate" } else { "balloon deflate" },
            "ts": us(e.start_ns), "dur": (e.end_ns - e.start_ns) as f64 / 1e3,
            "args": e}));
    }
    if !l.pools.is_empty() || !episodes.is_empty() {
        ev.push(
            json!({"ph": "M", "name": "process_name", "pid": 0, "tid": 0,
            "args": {"name": "system"}}),
        );
    }
    for p in &l.pools {
        let node = p
            .pool
            .node
            .map_or_else(|| "all".to_owned(), |n| n.to_string());
        ev.push(
            json!({"ph": "C", "name": format!("hugetlb pool {} kB node {node}", p.pool.size_kb),
            "pid": 0, "ts": us(p.ts_ns),
            "args": {"nr": p.pool.nr, "free": p.pool.free, "surplus": p.pool.surplus}}),
        );
    }
    for c in &l.thp_coverage {
        ev.push(
            json!({"ph": "C", "name": format!("THP {} {:#x} (kB)", c.vma_label(), c.vma_start),
            "pid": c.pid, "ts": us(c.ts_ns), "args": {"pmd_mapped": c.thp_pages * 4}}),
        );
    }
    for s in &l.swap_returns {
        ev.push(
            json!({"ph": "C", "name": "back from swap", "pid": s.pid, "ts": us(s.ts_ns),
            "args": {"pages": s.pages,
                     "avg_s_in_swap": s.time_in_swap_ns as f64 / s.pages.max(1) as f64 / 1e9}}),
        );
    }
    for t in &l.transitions {
        ev.push(json!({"ph": "i", "s": "p", "pid": t.pid, "tid": t.pid, "ts": us(t.ts_ns),
            "name": format!("{} by {}", t.kind, t.cause),
            "cat": "transition",
            "args": {"pages": t.pages, "vma": t.vma_label(), "vma_start": format!("{:#x}", t.vma_start),
                     "from_node": t.from_node, "to_node": t.to_node}}));
    }
    // Reclaim and compaction episodes as slices on the thread that ran them.
    let mut open: HashMap<(u32, &'static str), u64> = HashMap::new();
    for e in &l.events {
        let (begin, label) = match e.kind {
            EventKind::DirectReclaimBegin { .. } => (true, "direct reclaim"),
            EventKind::DirectReclaimEnd { .. } => (false, "direct reclaim"),
            EventKind::MemcgReclaimBegin { .. } => (true, "memcg reclaim"),
            EventKind::MemcgReclaimEnd { .. } => (false, "memcg reclaim"),
            EventKind::KswapdWake { .. } => (true, "kswapd"),
            EventKind::KswapdSleep { .. } => (false, "kswapd"),
            EventKind::CompactionBegin { .. } => (true, "compaction"),
            EventKind::CompactionEnd { .. } => (false, "compaction"),
            _ => continue,
        };
        if begin {
            open.insert((e.tid, label), e.ts_ns);
        } else if let Some(start) = open.remove(&(e.tid, label)) {
            ev.push(
                json!({"ph": "X", "name": label, "cat": "reclaim", "pid": e.tgid,
                "tid": e.tid, "ts": us(start), "dur": (e.ts_ns - start) as f64 / 1e3}),
            );
        }
    }
    json!({"traceEvents": ev, "displayTimeUnit": "ms",
           "metadata": {"target": l.meta.target, "kernel": l.meta.kernel_release,
                        "cut": l.cut, "dropped": l.dropped}})
}
