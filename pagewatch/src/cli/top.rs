//! `pagewatch top`: live per-process page faults, reclaim stalls and THP
//! collapses, system reclaim/THP/compaction/migration/KSM/OOM counts, and
//! (with `--pid`/`--comm`) the attributed page transitions of the followed
//! processes, every interval, as a table or JSON lines, then a summary;
//! on a terminal, a live screen instead (see [`super::top_screen`]).

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Write as _},
};

use clap::Args;
use pagewatch::{
    aggregate::{ProcessStats, SystemStats},
    note::Note,
    output::{Item, SkippedHook, TopItem, TopLine, TopProcess, TopSummary, TopSystem, round3},
    proc::{CommCache, ProcessKey},
    session::{IntervalReport, SessionView, Sink, Summary},
    transition::TransitionGroup,
};

use super::session::{TraceArgs, config, print_note, say_tracing, start};

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    trace: TraceArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Print each interval as lines even on a terminal (as when piped),
    /// instead of the live screen.
    #[arg(long)]
    lines: bool,
    /// Rows per interval in the table.
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Count pagewatch's own faults too (its row is left out by default).
    #[arg(long = "self")]
    include_self: bool,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    let config = config(args.trace, &pagewatch::proc::ProcRoot::default(), &[])?;
    let mut sink = TopSink {
        json: args.json,
        limit: args.limit,
        hidden: (!args.include_self).then(std::process::id),
    };
    if !args.json && !args.lines && std::io::stdout().is_terminal() {
        return super::top_screen::run(config, sink);
    }
    super::block_on(async {
        let mut session = start(config)?;
        session.drop_privileges();
        session.run(&mut sink, std::future::pending()).await
    })
}

/// Prints each interval as a table or JSON lines.
pub(super) struct TopSink {
    json: bool,
    limit: usize,
    /// pagewatch's own pid unless `--self`: its snapshots' page faults
    /// are not the workload's.
    pub(super) hidden: Option<u32>,
}

/// One row per process (a reused pid is a row of its own), most faults
/// first.
pub(super) fn rows(
    view: &SessionView<'_>,
    processes: &BTreeMap<ProcessKey, ProcessStats>,
    hidden: Option<u32>,
) -> Vec<(ProcessKey, ProcessStats)> {
    let mut rows: Vec<(ProcessKey, ProcessStats)> = processes
        .iter()
        .filter(|(key, _)| view.shown(key.pid) && Some(key.pid) != hidden)
        .map(|(key, s)| (*key, *s))
        .collect();
    rows.sort_by_key(|(key, s)| (std::cmp::Reverse(s.faults.faults), *key));
    rows
}

impl Sink for TopSink {
    fn tracing(&mut self) -> anyhow::Result<()> {
        say_tracing()
    }

    fn note(&mut self, note: &Note) -> anyhow::Result<()> {
        print_note(note);
        Ok(())
    }

    fn interval(&mut self, view: &mut SessionView<'_>, r: &IntervalReport) -> anyhow::Result<()> {
        let rows = rows(view, &r.tally.processes, self.hidden);
        let scans = view.scan_results(&r.tally);
        let mut out = std::io::stdout().lock();
        if self.json {
            let (interval, t) = (r.index, round3(r.t));
            let mut lines: Vec<TopLine> = rows
                .iter()
                .map(|(key, stats)| {
                    TopLine::Process(TopProcess {
                        interval,
                        t,
                        pid: key.pid,
                        start_ticks: key.start_ticks,
                        comm: view.comms.name(*key).to_owned(),
                        stats: *stats,
                    })
                })
                .collect();
            // One line per item, with its process's name.
            let mut item = |pid: Option<u32>, item: Item| {
                lines.push(TopLine::Item(TopItem {
                    interval,
                    t,
                    comm: pid.map(|pid| view.comms.get(pid).to_owned()),
                    item,
                }));
            };
            for g in &r.transitions {
                item(Some(g.pid), Item::Transition(g.clone()));
            }
            for s in &r.thp_scans {
                item(Some(s.pid), Item::ThpScans(s.clone()));
            }
            for s in &r.swap_returns {
                item(Some(s.pid), Item::SwapReturns(s.clone()));
            }
            for c in &r.thp_coverage {
                item(Some(c.pid), Item::ThpCoverage(c.clone()));
            }
            for p in &r.hugetlb_pools {
                item(None, Item::HugetlbPool(p.clone()));
            }
            lines.push(TopLine::System(TopSystem {
                interval,
                t,
                events: r.tally.events,
                dropped: r.dropped,
                system: r.tally.system,
                thp_scan_results: scans.clone(),
                snapshot_ms: r.snapshot_time.map(|d| round3(d.as_secs_f64() * 1e3)),
                snapshot: r.snapshot_work.clone(),
            }));
            for line in &lines {
                writeln!(out, "{}", serde_json::to_string(line)?)?;
            }
        } else {
            writeln!(
                out,
                "{:>7.1}s  events {}  dropped {}  | {}",
                r.t,
                r.tally.events,
                r.dropped,
                reclaim_line(&r.tally.system)
            )?;
            if let Some(line) = page_events_line(&r.tally.system, &scans) {
                writeln!(out, "{:>9} {line}", "")?;
            }
            write_table(&mut out, &rows, self.limit, view.comms)?;
            write_transitions(&mut out, &r.transitions, self.limit, view.comms)?;
            for s in r.thp_scans.iter().take(self.limit) {
                let vma = pagewatch::transition::vma_label(&s.vma);
                writeln!(
                    out,
                    "{:>9} pid {} ({}) {} {:#x}: khugepaged scanned {} times: {}",
                    "",
                    s.pid,
                    view.comms.get(s.pid),
                    vma,
                    s.vma_start,
                    s.scans,
                    s.result
                )?;
            }
            for s in r.swap_returns.iter().take(self.limit) {
                writeln!(out, "{:>9} {}", "", s.describe(view.comms.get(s.pid)))?;
            }
            for c in r.thp_coverage.iter().take(self.limit) {
                writeln!(out, "{:>9} {}", "", c.describe(view.comms.get(c.pid)))?;
            }
            for p in &r.hugetlb_pools {
                writeln!(out, "{:>9} {}", "", p.describe())?;
            }
        }
        out.flush()?;
        Ok(())
    }

    fn finish(&mut self, view: &mut SessionView<'_>, s: &Summary) -> anyhow::Result<()> {
        let rows = rows(view, &s.total.processes, self.hidden);
        let faults: u64 = rows.iter().map(|(_, p)| p.faults.faults).sum();
        let dropped: u64 = s.dropped_per_cpu.iter().sum();
        let scans = view.scan_results(&s.total);
        let mut out = std::io::stdout().lock();
        if self.json {
            let summary = TopLine::Summary {
                summary: TopSummary {
                    events: s.total.events,
                    dropped,
                    dropped_per_cpu: s.dropped_per_cpu.clone(),
                    dropped_per_hook: s
                        .dropped_per_hook
                        .iter()
                        .map(|(hook, n)| ((*hook).to_owned(), *n))
                        .collect(),
                    decode_errors: s.decode_errors,
                    intervals: s.intervals,
                    duration_s: round3(s.duration_s),
                    faults,
                    processes: rows.len() as u64,
                    system: s.total.system,
                    thp_scan_results: scans.clone(),
                    transitions: s.transitions,
                    hooks: view
                        .probe
                        .attached
                        .iter()
                        .map(|a| a.tracepoint.clone())
                        .collect(),
                    skipped_hooks: view
                        .probe
                        .skipped
                        .iter()
                        .map(|h| SkippedHook {
                            hook: h.program.to_owned(),
                            reason: h.reason.to_string(),
                        })
                        .collect(),
                },
            };
            writeln!(out, "{}", serde_json::to_string(&summary)?)?;
        } else {
            writeln!(
                out,
                "\nsummary: {:.1}s, {} events, {} dropped (per CPU: {:?}), {} faults in {} processes",
                s.duration_s,
                s.total.events,
                dropped,
                s.dropped_per_cpu,
                faults,
                rows.len()
            )?;
            writeln!(out, "{}", reclaim_line(&s.total.system))?;
            if let Some(line) = page_events_line(&s.total.system, &scans) {
                writeln!(out, "{line}")?;
            }
            write_table(&mut out, &rows, self.limit, view.comms)?;
        }
        Ok(())
    }
}

/// The interval's attributed transitions, largest first.
fn write_transitions(
    out: &mut impl std::io::Write,
    transitions: &[TransitionGroup],
    limit: usize,
    comms: &mut CommCache,
) -> std::io::Result<()> {
    let mut sorted: Vec<&TransitionGroup> = transitions.iter().collect();
    sorted.sort_by_key(|t| std::cmp::Reverse(t.pages));
    for t in sorted.iter().take(limit) {
        writeln!(out, "{:>9} {}", "", t.describe(comms.get(t.pid)))?;
    }
    Ok(())
}

pub(super) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

pub(super) fn reclaim_line(s: &SystemStats) -> String {
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
pub(super) fn page_events_line(s: &SystemStats, scans: &BTreeMap<String, u64>) -> Option<String> {
    let p = &s.page_events;
    let any = [
        p.thp_scans + p.thp_pmd_splits + p.thp_folio_splits,
        p.compactions,
        p.pages_migrated + p.migrate_failed,
        p.ksm_merges,
        p.oom_kills,
        p.forks + p.execs + p.exits,
        p.pages_allocated + p.pages_freed,
        p.balloon_inflated
            + p.balloon_deflated
            + p.balloon_vmstat_inflated
            + p.balloon_vmstat_deflated,
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
        "thp: scans {} ({}) collapsed {} failed {} split pmd {} folio {} | compaction {} migrated {} failed {} | \
         migrate ok {} failed {} | ksm merges {} | oom kills {} | fork {} exec {} exit {}{}{}",
        p.thp_scans,
        reasons.join(", "),
        p.thp_collapses,
        p.thp_collapse_failed,
        p.thp_pmd_splits,
        p.thp_folio_splits,
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
        if p.balloon_inflated
            + p.balloon_deflated
            + p.balloon_vmstat_inflated
            + p.balloon_vmstat_deflated
            > 0
        {
            format!(
                " | balloon +{} -{} pages (vmstat +{} -{})",
                p.balloon_inflated,
                p.balloon_deflated,
                p.balloon_vmstat_inflated,
                p.balloon_vmstat_deflated
            )
        } else {
            String::new()
        }
    ))
}

fn write_table(
    out: &mut impl std::io::Write,
    rows: &[(ProcessKey, ProcessStats)],
    limit: usize,
    comms: &CommCache,
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
    for (key, s) in rows.iter().take(limit) {
        let f = &s.faults;
        writeln!(
            out,
            "{:>8} {:<16} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>10.1} {:>10.1} {:>8}",
            key.pid,
            comms.name(*key),
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
