//! `pagewatch diff A B` (or several runs per side, `A1 A2 -- B1 B2`):
//! two sets of recordings side by side, as a kernel developer compares the
//! same workload before and after a patch: pages per transition kind and
//! cause, per process (matched by command line, not pid), the system's
//! collapse/split/KSM/migration/reclaim/swap counts and khugepaged scan
//! results, events and drops; each side's mean (and, with several runs, its
//! standard deviation), the absolute and relative delta, biggest first.
//! A child module of `report`, whose loader it shares.

use std::{collections::BTreeMap, io::Write as _, path::PathBuf};

use anyhow::bail;
use clap::{Args, ValueEnum};
use pagewatch_common::hook::Hook;
use serde::Serialize;

use super::{By, Format, Loaded, ReportArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DiffFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Two recordings `A B`, or side A's runs when side B's follow `--`.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Side B's runs (after `--`: `A1 A2 -- B1 B2`).
    #[arg(last = true, value_name = "B_FILE")]
    b_files: Vec<PathBuf>,
    #[arg(long, default_value = "table")]
    format: DiffFormat,
    /// Rows per section in the table (the biggest differences).
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

/// What is compared, in the order the sections print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Section {
    /// Pages per `KIND by CAUSE`.
    Transitions,
    /// Pages per kind and faults, per command line.
    Processes,
    /// Event counts of the whole system (collapses, splits, KSM merges,
    /// migrations, reclaim, khugepaged scan results...).
    System,
    /// Events recorded and dropped.
    Recording,
}

impl Section {
    const ALL: [Section; 4] = [
        Section::Transitions,
        Section::Processes,
        Section::System,
        Section::Recording,
    ];

    fn title(self) -> &'static str {
        match self {
            Section::Transitions => "transitions (pages, by kind and cause)",
            Section::Processes => "processes (by command line)",
            Section::System => "system (events and pages counted from events)",
            Section::Recording => "recording",
        }
    }
}

/// One recording, reduced to named numbers.
struct Run {
    file: PathBuf,
    kernel: String,
    values: BTreeMap<(Section, String), f64>,
}

/// A process's name for matching across runs: its command line, else
/// `[comm]`.
fn process_name(l: &Loaded, pid: u32) -> String {
    match l.processes.get(&pid) {
        Some(p) if !p.cmdline.is_empty() => p.cmdline.join(" "),
        Some(p) => format!("[{}]", p.comm),
        None => "(process not recorded)".to_owned(),
    }
}

fn run(file: PathBuf) -> anyhow::Result<Run> {
    let args = ReportArgs {
        file: file.clone(),
        by: By::Process,
        pids: Vec::new(),
        format: Format::Table,
        expect: Vec::new(),
    };
    let l = super::load(&args)?;
    if let Some(cut) = &l.cut {
        eprintln!(
            "pagewatch: note: {}: {cut}; compared up to there",
            file.display()
        );
    }
    let mut values: BTreeMap<(Section, String), f64> = BTreeMap::new();
    let mut add = |section: Section, name: String, n: u64| {
        *values.entry((section, name)).or_default() += n as f64;
    };
    for t in &l.transitions {
        add(
            Section::Transitions,
            format!("{} by {}", t.kind, t.cause),
            t.pages,
        );
        add(
            Section::Processes,
            format!("{}: {} pages", process_name(&l, t.pid), t.kind),
            t.pages,
        );
    }
    let total = l.aggregator.total();
    for (&pid, s) in &total.processes {
        if l.processes.contains_key(&pid) {
            add(
                Section::Processes,
                format!("{}: faults", process_name(&l, pid)),
                s.faults.faults,
            );
        }
    }
    if let serde_json::Value::Object(system) = serde_json::to_value(total.system)? {
        for (name, v) in system {
            if let Some(n) = v.as_u64() {
                add(Section::System, name, n);
            }
        }
    }
    let decoder = l.meta.decoder();
    for (&status, &n) in &total.scan_status {
        let name = decoder
            .symbol(Hook::ScanPmd, "status", status)
            .map_or_else(|| format!("status_{status}"), str::to_owned);
        add(Section::System, format!("khugepaged scan: {name}"), n);
    }
    add(Section::Recording, "events".into(), l.events.len() as u64);
    add(Section::Recording, "dropped".into(), l.dropped);
    add(Section::Recording, "intervals".into(), l.intervals);
    Ok(Run {
        file,
        kernel: l.meta.kernel_release.clone(),
        values,
    })
}

/// One side's numbers for one row.
#[derive(Debug, Serialize)]
struct Stats {
    mean: f64,
    /// Sample standard deviation (none with one run).
    sd: Option<f64>,
    values: Vec<f64>,
}

impl Stats {
    fn of(values: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = (values.len() > 1)
            .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
        Self { mean, sd, values }
    }

    fn show(&self) -> String {
        match self.sd {
            Some(sd) => format!("{} ± {}", num(self.mean), num(sd)),
            None => num(self.mean),
        }
    }
}

#[derive(Debug, Serialize)]
struct Row {
    section: Section,
    name: String,
    a: Stats,
    b: Stats,
    /// B's mean minus A's.
    delta: f64,
    /// `delta` over A's mean (none when A's is 0).
    relative: Option<f64>,
    /// With several runs per side: the delta is within the two sides'
    /// spread (|delta| <= sd(A) + sd(B)), not to be told from noise.
    within_spread: Option<bool>,
}

impl Row {
    /// `A  B  DELTA  RELATIVE  NAME[  ~ within spread]`.
    fn describe(&self) -> String {
        let relative = self
            .relative
            .map_or_else(|| "new".to_owned(), |x| format!("{:+.1}%", x * 100.0));
        let sign = if self.delta > 0.0 { "+" } else { "" };
        let noise = if self.within_spread == Some(true) {
            "  (~ within spread)"
        } else {
            ""
        };
        format!(
            "{:>16} {:>16} {:>12} {:>9}  {}{noise}",
            self.a.show(),
            self.b.show(),
            format!("{sign}{}", num(self.delta)),
            relative,
            self.name
        )
    }
}

#[derive(Debug, Serialize)]
struct Side {
    runs: Vec<RunInfo>,
}

#[derive(Debug, Serialize)]
struct RunInfo {
    file: PathBuf,
    kernel: String,
}

/// Every named number of either side, A's and B's runs (0 where a run
/// has none), biggest absolute delta first within each section.
fn rows(a: &[Run], b: &[Run]) -> Vec<Row> {
    let mut names: Vec<&(Section, String)> =
        a.iter().chain(b).flat_map(|r| r.values.keys()).collect();
    names.sort();
    names.dedup();
    let stats = |runs: &[Run], key: &(Section, String)| {
        Stats::of(
            runs.iter()
                .map(|r| r.values.get(key).copied().unwrap_or(0.0))
                .collect(),
        )
    };
    let mut rows: Vec<Row> = names
        .into_iter()
        .map(|key| {
            let (sa, sb) = (stats(a, key), stats(b, key));
            let delta = sb.mean - sa.mean;
            let within_spread = sa.sd.zip(sb.sd).map(|(x, y)| delta.abs() <= x + y);
            Row {
                section: key.0,
                name: key.1.clone(),
                relative: (sa.mean != 0.0).then(|| delta / sa.mean),
                delta,
                within_spread,
                a: sa,
                b: sb,
            }
        })
        .filter(|r| r.a.mean != 0.0 || r.b.mean != 0.0)
        .collect();
    rows.sort_by(|x, y| {
        x.section
            .cmp(&y.section)
            .then(y.delta.abs().total_cmp(&x.delta.abs()))
            .then(x.name.cmp(&y.name))
    });
    rows
}

/// A number without needless decimals: `2048`, `12.5`.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn side(runs: &[Run]) -> Side {
    Side {
        runs: runs
            .iter()
            .map(|r| RunInfo {
                file: r.file.clone(),
                kernel: r.kernel.clone(),
            })
            .collect(),
    }
}

/// `A: 2 runs on Linux 6.12.1 (a1.pwrec, a2.pwrec)`.
fn side_line(label: &str, runs: &[Run]) -> String {
    let mut kernels: Vec<&str> = runs.iter().map(|r| r.kernel.as_str()).collect();
    kernels.dedup();
    let files: Vec<String> = runs.iter().map(|r| r.file.display().to_string()).collect();
    format!(
        "{label}: {} run{} on Linux {} ({})",
        runs.len(),
        if runs.len() == 1 { "" } else { "s" },
        kernels.join(", "),
        files.join(", ")
    )
}

pub fn diff(args: DiffArgs) -> anyhow::Result<()> {
    let (a, b) = if args.b_files.is_empty() {
        match <[PathBuf; 2]>::try_from(args.files) {
            Ok([a, b]) => (vec![a], vec![b]),
            Err(files) => bail!(
                "diff compares two recordings (A B), or several runs per side (A1 A2 -- B1 B2): got {} without --",
                files.len()
            ),
        }
    } else {
        (args.files, args.b_files)
    };
    let a: Vec<Run> = a.into_iter().map(run).collect::<anyhow::Result<_>>()?;
    let b: Vec<Run> = b.into_iter().map(run).collect::<anyhow::Result<_>>()?;
    let rows = rows(&a, &b);
    let mut out = std::io::stdout().lock();
    match args.format {
        DiffFormat::Json => {
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"a": side(&a), "b": side(&b), "rows": rows}),
            )?;
            writeln!(out)?;
        }
        DiffFormat::Table => {
            writeln!(out, "{}", side_line("A", &a))?;
            writeln!(out, "{}", side_line("B", &b))?;
            for section in Section::ALL {
                let these: Vec<&Row> = rows.iter().filter(|r| r.section == section).collect();
                if these.is_empty() {
                    continue;
                }
                writeln!(
                    out,
                    "\n{:>18} {:>16} {:>12} {:>9}  {}",
                    "A",
                    "B",
                    "B-A",
                    "B/A-1",
                    section.title()
                )?;
                for r in these.iter().take(args.limit) {
                    writeln!(out, "  {}", r.describe())?;
                }
                if these.len() > args.limit {
                    writeln!(out, "  ... {} more", these.len() - args.limit)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[(&str, f64)]) -> Run {
        Run {
            file: PathBuf::from("x.pwrec"),
            kernel: "6.12".into(),
            values: values
                .iter()
                .map(|(n, v)| ((Section::Transitions, (*n).to_owned()), *v))
                .collect(),
        }
    }

    #[test]
    fn means_spread_and_biggest_delta_first() {
        let a = [
            run(&[("x", 10.0), ("y", 100.0)]),
            run(&[("x", 14.0), ("y", 100.0)]),
        ];
        let b = [
            run(&[("x", 13.0), ("y", 0.0), ("z", 5.0)]),
            run(&[("x", 11.0)]),
        ];
        let rows = rows(&a, &b);
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["y", "z", "x"], "by |delta|: 100, 5, 0");
        let y = &rows[0];
        assert_eq!((y.a.mean, y.b.mean, y.delta), (100.0, 0.0, -100.0));
        assert_eq!(y.relative, Some(-1.0));
        assert_eq!(y.within_spread, Some(false));
        assert_eq!(rows[1].relative, None, "z is new in B");
        let x = &rows[2];
        assert_eq!((x.a.mean, x.b.mean), (12.0, 12.0));
        assert!((x.a.sd.unwrap() - 8f64.sqrt()).abs() < 1e-9);
        assert_eq!(x.within_spread, Some(true));
    }

    #[test]
    fn one_run_per_side_has_no_spread() {
        let rows = rows(&[run(&[("x", 3.0)])], &[run(&[("x", 4.0), ("w", 0.0)])]);
        assert_eq!(rows.len(), 1, "all-zero rows are left out");
        assert_eq!(rows[0].a.sd, None);
        assert_eq!(rows[0].within_spread, None);
        assert_eq!(rows[0].a.show(), "3");
        assert_eq!(num(-2.5), "-2.5");
    }
}
