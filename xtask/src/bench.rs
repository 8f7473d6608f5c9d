//! `cargo xtask bench`: benchmarks, each as ratios against a baseline run in
//! the same invocation, printed as Markdown for BENCHMARKS.md (also written
//! to target/release/bench.md).
//!
//! Faults: the pw-faults workload at its peak fault rate (map, touch, unmap
//! 256 MiB of 4 KiB pages, repeatedly), untraced, traced by `pagewatch top`
//! (all processes, fault hook), traced by `perf stat -a -e
//! exceptions:page_fault_user` (the counting peer) and by bpftrace counting
//! the same tracepoint per pid into a map (the in-map counting peer),
//! interleaved.
//!
//! Snapshots: see bench_snapshot.rs (pagewatch snapshot against a plain
//! pagemap read, smaps_rollup, and dd of /proc/kpageflags).
//!
//! Scale, one big process, and the soak: see bench_scale.rs (collector CPU
//! and RSS under load, over time). `--only PART` runs one part; the
//! default runs faults, snapshot, scale and big (the soak takes 10 minutes
//! and runs only when asked; so does `selftests`, see bench_selftests.rs).

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{build, cmd, setup};

/// A part of the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Faults,
    Snapshot,
    Scale,
    Big,
    Soak,
    Selftests,
}

#[derive(Debug, Args)]
pub struct Options {
    /// Run only these parts (repeatable; default: all but soak).
    #[arg(long, value_enum)]
    only: Vec<Part>,
    #[command(flatten)]
    scale: crate::bench_scale::ScaleOptions,
    /// Repetitions of each variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Rounds of 256 MiB per fault run (65536 faults each).
    #[arg(long, default_value_t = 16)]
    rounds: usize,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    build::run()?;
    if !cmd::is_root() {
        bail!("the benchmarks read /proc/kpage* and trace the kernel: they need root");
    }
    let dir = cmd::release_dir();
    let pagewatch = dir.join("pagewatch");
    let parts = if opts.only.is_empty() {
        vec![Part::Faults, Part::Snapshot, Part::Scale, Part::Big]
    } else {
        opts.only.clone()
    };
    let mut sections = Vec::new();
    for part in parts {
        sections.push(match part {
            Part::Faults => {
                setup::apt_install(&["linux-perf", "bpftrace"])?;
                faults(&dir, &opts)?
            }
            Part::Snapshot => crate::bench_snapshot::run(&pagewatch, &dir, opts.reps)?,
            Part::Scale => crate::bench_scale::scale(&pagewatch, &dir, &opts.scale)?,
            Part::Big => crate::bench_scale::big(&pagewatch, &dir, &opts.scale)?,
            Part::Soak => crate::bench_scale::soak(&pagewatch, &dir, &opts.scale)?,
            Part::Selftests => crate::bench_selftests::run(&dir)?,
        });
    }
    let markdown = sections.join("\n");
    println!("\n{markdown}");
    let out = dir.join("bench.md");
    std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("(also written to {})", out.display());
    Ok(())
}

/// Faults per second reported by one `pw-faults rate` run.
fn rate_of(stdout: &str) -> anyhow::Result<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("faults "))
        .with_context(|| format!("no `faults` line in {stdout:?}"))?;
    let f: Vec<&str> = line.split(' ').collect();
    let faults: f64 = f[1].parse()?;
    let secs: f64 = f[3].parse()?;
    Ok(faults / secs)
}

/// The bpftrace program of the in-map counting peer: every user page
/// fault counted per pid in a map; `ready` once its probes are attached
/// (BEGIN runs after the attach).
const BPFTRACE_COUNT: &str =
    "BEGIN { printf(\"ready\\n\"); } tracepoint:exceptions:page_fault_user { @[pid] = count(); }";

/// The fault rate of one workload run while bpftrace counts its faults
/// (see [`BPFTRACE_COUNT`]); an error unless bpftrace's map holds at
/// least `faults` for one pid (the workload's), so a peer that counted
/// nothing is not mistaken for a cheap one.
fn bpftrace_rate(workload: &Path, wl_args: &[String], faults: u64) -> anyhow::Result<f64> {
    let mut bt = Command::new("bpftrace")
        .args(["-e", BPFTRACE_COUNT])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    let mut lines = BufReader::new(bt.stdout.take().expect("piped")).lines();
    loop {
        let Some(line) = lines.next() else {
            bail!("bpftrace exited before its probes were attached");
        };
        if line?.trim() == "ready" {
            break;
        }
    }
    let rate = rate_of(&cmd::output(Command::new(workload).args(wl_args))?)?;
    // SAFETY: signalling our own child; bpftrace prints its map on SIGINT.
    unsafe { libc::kill(bt.id() as i32, libc::SIGINT) };
    let most = lines
        .map_while(Result::ok)
        .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    bt.wait().context("waiting for bpftrace")?;
    if most < faults {
        bail!("bpftrace counted at most {most} faults for one pid, the workload made {faults}");
    }
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn faults(dir: &Path, opts: &Options) -> anyhow::Result<String> {
    let workload = dir.join("pw-faults");
    let wl_args = ["rate".to_string(), "256".into(), opts.rounds.to_string()];
    let faults = (opts.rounds * 65536) as u64;
    let (mut plain, mut traced, mut perf, mut bpftrace, mut drops) =
        (vec![], vec![], vec![], vec![], 0u64);
    for rep in 1..=opts.reps {
        cmd::step(&format!("fault benchmark, repetition {rep}/{}", opts.reps));
        plain.push(rate_of(&cmd::output(
            Command::new(&workload).args(&wl_args),
        )?)?);

        let mut pw = Command::new(dir.join("pagewatch"))
            .args(["top", "--json", "--events", "faults", "--interval", "10s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pagewatch")?;
        let stderr = BufReader::new(pw.stderr.take().expect("piped"));
        for line in stderr.lines() {
            if line?.contains("tracing;") {
                break;
            }
        }
        traced.push(rate_of(&cmd::output(
            Command::new(&workload).args(&wl_args),
        )?)?);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pw.id() as i32, libc::SIGINT) };
        let out = pw.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text
            .lines()
            .find(|l| l.contains("\"summary\""))
            .context("pagewatch printed no summary")?;
        let dropped = summary
            .split("\"dropped\":")
            .nth(1)
            .and_then(|s| s.split([',', '}']).next())
            .and_then(|n| n.parse::<u64>().ok())
            .context("no dropped count in the summary")?;
        drops += dropped;

        let out = cmd::output(
            Command::new("perf")
                .args([
                    "stat",
                    "-a",
                    "-x,",
                    "-e",
                    "exceptions:page_fault_user",
                    "--",
                ])
                .arg(&workload)
                .args(&wl_args),
        )?;
        perf.push(rate_of(&out)?);
        bpftrace.push(bpftrace_rate(&workload, &wl_args, faults)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    let (p, t, f, b) = (
        median(plain),
        median(traced),
        median(perf),
        median(bpftrace),
    );
    let pct = |x: f64| (p / x - 1.0) * 100.0;
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    Ok(format!(
        "## Fault tracing overhead\n\n\
         Command: `cargo xtask bench` (workload `pw-faults rate 256 {rounds}`: {faults} faults per run, \
         median of {reps} interleaved runs)\n\n\
         | variant | faults/s (median) | slowdown vs untraced |\n|---|---:|---:|\n\
         | untraced | {p:.0} | 1.00x |\n\
         | `pagewatch top --events faults` (all processes) | {t:.0} | {rt:.2}x ({pt:+.1}%) |\n\
         | `perf stat -a -e exceptions:page_fault_user` | {f:.0} | {rf:.2}x ({pf:+.1}%) |\n\
         | bpftrace, `@[pid] = count()` on the same tracepoint | {b:.0} | {rb:.2}x ({pb:+.1}%) |\n\n\
         pagewatch dropped events over all runs: {drops} (default 4 MiB ring buffer).\n\n\
         Targets (issue 17): pagewatch's slowdown at most bpftrace's: {v_bpf} \
         ({pt:+.1}% vs {pb:+.1}%); at most perf stat's + 3 points: {v_perf} ({pt:+.1}% vs {pf:+.1}%).\n",
        rounds = opts.rounds,
        reps = opts.reps,
        rt = p / t,
        pt = pct(t),
        rf = p / f,
        pf = pct(f),
        rb = p / b,
        pb = pct(b),
        v_bpf = verdict(pct(t) <= pct(b)),
        v_perf = verdict(pct(t) <= pct(f) + 3.0),
    ))
}
