//! The snapshot benchmark: for a process holding 4 GiB of
//! touched anonymous memory, once as 4 KiB pages (MADV_NOHUGEPAGE) and once
//! THP-backed (MADV_HUGEPAGE), time (a) `pagewatch snapshot --pid` (Pss and
//! flags), (b) a plain sequential read of the same pagemap range in 512 KiB
//! preads, (c) `cat /proc/PID/smaps_rollup`; then the whole-system census
//! (`pagewatch snapshot --system`) against `dd if=/proc/kpageflags
//! bs=512K`. Each is repeated and the median reported, as a Markdown
//! section for BENCHMARKS.md.

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader},
    os::unix::fs::FileExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

const SIZE_MIB: u64 = 4096;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Run `cmd` to completion with output discarded; fail on non-zero exit.
fn time_command(cmd: &mut Command) -> Result<Duration> {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let d = t.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(d)
}

/// Run each of `fs` `reps` times, interleaved (so load changes hit all
/// alike), and return their medians.
fn interleaved<const N: usize>(
    what: [&str; N],
    reps: usize,
    mut fs: [&mut dyn FnMut() -> Result<Duration>; N],
) -> Result<[Duration; N]> {
    let mut v: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for _ in 0..reps {
        for (f, times) in fs.iter_mut().zip(&mut v) {
            times.push(f()?);
        }
    }
    let m = v.map(median);
    for (w, d) in what.iter().zip(&m) {
        eprintln!("  {w}: median {:.1} ms over {reps} runs", ms(*d));
    }
    Ok(m)
}

/// The pw-hold workload and its big mapping.
struct Hold {
    child: Child,
    pid: u32,
    start: u64,
    end: u64,
}

impl Hold {
    fn start(workload_dir: &Path, thp: bool) -> Result<Self> {
        let bin = workload_dir.join("pw-hold");
        let mut child = Command::new(&bin)
            .arg(SIZE_MIB.to_string())
            .arg(if thp { "thp" } else { "nothp" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut pid = None;
        for line in BufReader::new(child.stdout.take().context("pw-hold stdout")?).lines() {
            let line = line?;
            if let Some(p) = line.strip_prefix("pid ") {
                pid = Some(p.trim().parse::<u32>()?);
            }
            if line == "ready" {
                break;
            }
        }
        let pid = pid.context("pw-hold printed no pid")?;
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let (start, end) = maps
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_whitespace().next()?.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .find(|(a, b)| b - a >= SIZE_MIB << 20)
            .context("pw-hold's 4 GiB mapping not found in maps")?;
        Ok(Hold {
            child,
            pid,
            start,
            end,
        })
    }

    fn rollup_kb(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix(field)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .unwrap_or(0)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain sequential read of `[start, end)`'s pagemap entries.
fn read_pagemap(pid: u32, start: u64, end: u64) -> Result<Duration> {
    let f = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buf = vec![0u8; 512 << 10];
    let t = Instant::now();
    let (mut off, stop) = (start / 4096 * 8, end / 4096 * 8);
    while off < stop {
        let n = ((stop - off) as usize).min(buf.len());
        let got = f.read_at(&mut buf[..n], off)?;
        if got == 0 {
            bail!("pagemap of pid {pid} ended early");
        }
        off += got as u64;
    }
    Ok(t.elapsed())
}

/// Runs of consecutive PFNs in `[start, end)`'s pagemap: how fragmented
/// the process's physical memory is (each run costs pagewatch a pread of
/// kpageflags and one of kpagecgroup).
fn pfn_runs(pid: u32, start: u64, end: u64) -> Result<u64> {
    const PFN_MASK: u64 = (1 << 55) - 1;
    let f = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut buf = vec![0u8; 512 << 10];
    let (mut off, stop) = (start / 4096 * 8, end / 4096 * 8);
    let (mut runs, mut prev) = (0u64, None::<u64>);
    while off < stop {
        let n = ((stop - off) as usize).min(buf.len());
        let got = f.read_at(&mut buf[..n], off)?;
        if got == 0 {
            bail!("pagemap of pid {pid} ended early");
        }
        for e in buf[..got].chunks_exact(8) {
            let pfn = u64::from_ne_bytes(e.try_into().expect("8 bytes")) & PFN_MASK;
            if prev.is_none_or(|p| pfn != p + 1) {
                runs += 1;
            }
            prev = Some(pfn);
        }
        off += got as u64;
    }
    Ok(runs)
}

/// The three load averages of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run the snapshot benchmark and return its Markdown section.
pub fn run(pagewatch: &Path, workload_dir: &Path, reps: usize) -> Result<String> {
    let mut md = String::new();
    let load = loadavg();
    writeln!(md, "## Snapshot (`pagewatch snapshot`)\n")?;
    writeln!(
        md,
        "Load average when the run started: {} (other work on the machine competes for the CPUs the \
         parallel reads need).\n",
        load
    )?;
    writeln!(
        md,
        "Command: `cargo xtask bench` (xtask/src/bench_snapshot.rs). A pw-hold process holds {SIZE_MIB} MiB of \
         written anonymous memory; each figure is the median of {reps} runs, the three variants interleaved. (a) `pagewatch snapshot --pid PID \
         --format json` (maps, pagemap, kpageflags, kpagecount, kpagecgroup, Pss, folios, memcg), (b) a plain \
         sequential read of the same pagemap range in 512 KiB preads, (c) `cat /proc/PID/smaps_rollup`. PFN runs: runs of \
         consecutive PFNs in the mapping (physical fragmentation; pagewatch reads kpageflags and kpagecgroup per run).\n"
    )?;
    writeln!(
        md,
        "| memory | pages | AnonHugePages | PFN runs | (a) pagewatch | (b) pagemap read | (c) smaps_rollup | (a) pages/s | (a)/(b) | (a)/(c) |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for thp in [false, true] {
        let label = if thp {
            "THP (MADV_HUGEPAGE)"
        } else {
            "4 KiB (MADV_NOHUGEPAGE)"
        };
        eprintln!("snapshot bench: {label}");
        let hold = Hold::start(workload_dir, thp)?;
        let pid = hold.pid.to_string();
        let pages = (hold.end - hold.start) / 4096;
        let runs = pfn_runs(hold.pid, hold.start, hold.end)?;
        let [a, b, c] = interleaved(
            [
                "pagewatch snapshot --pid",
                "sequential pagemap read",
                "cat smaps_rollup",
            ],
            reps,
            [
                &mut || {
                    time_command(
                        Command::new(pagewatch)
                            .args(["snapshot", "--pid", &pid, "--format", "json"]),
                    )
                },
                &mut || read_pagemap(hold.pid, hold.start, hold.end),
                &mut || time_command(Command::new("cat").arg(format!("/proc/{pid}/smaps_rollup"))),
            ],
        )?;
        writeln!(
            md,
            "| {label} | {pages} | {} MiB | {runs} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} M | {:.1}x | {:.1}x |",
            hold.rollup_kb("AnonHugePages") >> 10,
            ms(a),
            ms(b),
            ms(c),
            pages as f64 / a.as_secs_f64() / 1e6,
            a.as_secs_f64() / b.as_secs_f64(),
            a.as_secs_f64() / c.as_secs_f64(),
        )?;
    }
    eprintln!("snapshot bench: whole-system census");
    let pfns = std::fs::read_to_string("/proc/zoneinfo")?
        .lines()
        .fold((0u64, 0u64), |(end, spanned), l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["spanned", v] => (end, v.parse().unwrap_or(0)),
                ["start_pfn:", v] if spanned > 0 => {
                    (end.max(v.parse::<u64>().unwrap_or(0) + spanned), spanned)
                }
                _ => (end, spanned),
            }
        })
        .0;
    let [census, dd] = interleaved(
        [
            "pagewatch snapshot --system",
            "dd if=/proc/kpageflags bs=512K",
        ],
        reps,
        [
            &mut || {
                time_command(
                    Command::new(pagewatch).args(["snapshot", "--system", "--format", "json"]),
                )
            },
            &mut || {
                time_command(Command::new("dd").args([
                    "if=/proc/kpageflags",
                    "of=/dev/null",
                    "bs=512K",
                ]))
            },
        ],
    )?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    writeln!(
        md,
        "\nWhole-system census over {pfns} PFNs ({} GiB), {cpus} CPUs: `pagewatch snapshot --system --format json` \
         (distinct kpageflags combinations, hugetlb/THP/vmstat state; disjoint ranges read on every CPU) against \
         `dd if=/proc/kpageflags of=/dev/null bs=512K`.\n",
        pfns >> 18
    )?;
    writeln!(md, "| | median | PFNs/s | vs dd |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    for (name, d) in [("pagewatch snapshot --system", census), ("dd bs=512K", dd)] {
        writeln!(
            md,
            "| {name} | {:.1} ms | {:.1} M | {:.2}x |",
            ms(d),
            pfns as f64 / d.as_secs_f64() / 1e6,
            d.as_secs_f64() / dd.as_secs_f64()
        )?;
    }
    writeln!(md, "\nLoad average when the run ended: {}.", loadavg())?;
    Ok(md)
}
