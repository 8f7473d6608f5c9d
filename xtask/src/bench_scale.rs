//! `cargo xtask bench --only scale|big|soak`: pagewatch under load, measured
//! from the outside. The collector's CPU time and RSS come from
//! /proc/PID/stat (utime + stime) and /proc/PID/status (VmRSS) of the
//! pagewatch process, sampled every second; snapshot times from the
//! `snapshot_ms` of its JSON interval lines.
//!
//! - scale: N pw-hold processes of M MiB each (200 x 50 MiB by default),
//!   traced and snapshotted every second (`top --comm pw-hold`), against
//!   the same run tracing every process without snapshots (`top`).
//! - big: one pw-hold process of S MiB, 4 KiB pages then THP, snapshotted
//!   every second (`top --pid`), against a plain read of its pagemap (dd).
//! - soak: `record` of a mixed workload (a throttled fault loop, page-cache
//!   reclaim in a 64 MiB memory cgroup, MADV_COLLAPSE) for D minutes.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Sizes and durations of the scale, big-process and soak benchmarks.
#[derive(Debug, clap::Args)]
pub struct ScaleOptions {
    /// Processes in the scale benchmark.
    #[arg(long, default_value_t = 200)]
    pub scale_processes: usize,
    /// MiB each of them writes.
    #[arg(long, default_value_t = 50)]
    pub scale_mib: usize,
    /// Seconds each scale variant runs.
    #[arg(long, default_value_t = 60)]
    pub scale_seconds: u64,
    /// MiB of the big process (16 GiB is the issue's figure; the default
    /// leaves room for the rest of a shared 24 GiB machine).
    #[arg(long, default_value_t = 8192)]
    pub big_mib: usize,
    /// Minutes of the soak.
    #[arg(long, default_value_t = 10)]
    pub soak_minutes: u64,
}

/// One pagewatch run, sampled every second.
struct Sampled {
    /// (seconds since tracing started, CPU seconds used, VmRSS kB).
    samples: Vec<(f64, f64, u64)>,
    /// The JSON lines it printed (top), or nothing (record).
    lines: Vec<serde_json::Value>,
    stderr: String,
}

impl Sampled {
    /// CPU use over the tracing window, in percent of one core.
    fn cpu_pct(&self) -> f64 {
        match (self.samples.first(), self.samples.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) / (b.0 - a.0) * 100.0,
            _ => f64::NAN,
        }
    }

    fn rss_max_mib(&self) -> f64 {
        self.samples.iter().map(|s| s.2).max().unwrap_or(0) as f64 / 1024.0
    }

    /// RSS (MiB) averaged over the first and the last `secs` seconds.
    fn rss_ends_mib(&self, secs: f64) -> (f64, f64) {
        let end = self.samples.last().map_or(0.0, |s| s.0);
        let avg = |keep: &dyn Fn(f64) -> bool| {
            let v: Vec<u64> = self
                .samples
                .iter()
                .filter(|s| keep(s.0))
                .map(|s| s.2)
                .collect();
            v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1024.0
        };
        (avg(&|t| t <= secs), avg(&|t| t >= end - secs))
    }

    /// Mean RSS (MiB) of each minute, as a list.
    fn rss_by_minute(&self) -> String {
        let mut minutes: Vec<(u64, usize)> = Vec::new();
        for &(t, _, rss) in &self.samples {
            let m = (t / 60.0) as usize;
            if minutes.len() <= m {
                minutes.resize(m + 1, (0, 0));
            }
            minutes[m].0 += rss;
            minutes[m].1 += 1;
        }
        minutes
            .iter()
            .filter(|m| m.1 > 0)
            .map(|&(sum, n)| format!("{:.1}", sum as f64 / n as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Snapshot times (ms) of every interval that took one.
    fn snapshot_ms(&self) -> Vec<f64> {
        self.snapshot_ms_where(|_| true)
    }

    /// Snapshot times (ms) of the intervals whose snapshot read pages
    /// (`read`) or carried every process over (`!read`).
    fn snapshot_ms_reading(&self, read: bool) -> Vec<f64> {
        self.snapshot_ms_where(|l| {
            let pages = l
                .get("snapshot")
                .and_then(|w| w.get("rescanned_pages")?.as_u64());
            (pages.unwrap_or(0) > 0) == read
        })
    }

    fn snapshot_ms_where(&self, keep: impl Fn(&serde_json::Value) -> bool) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .lines
            .iter()
            .filter(|l| keep(l))
            .filter_map(|l| l.get("snapshot_ms")?.as_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Per snapshot after the first: (processes read again, carried,
    /// whether everything was read again and why).
    fn snapshot_work(&self) -> Vec<(u64, u64, Option<String>)> {
        self.lines
            .iter()
            .filter_map(|l| l.get("snapshot"))
            .filter(|w| !w.is_null())
            .map(|w| {
                let n = |k: &str| w.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                (
                    n("rescanned"),
                    n("carried"),
                    w.get("all_because")
                        .and_then(|a| a.as_str())
                        .map(str::to_owned),
                )
            })
            .collect()
    }

    fn dropped(&self) -> u64 {
        self.lines
            .iter()
            .filter_map(|l| l.get("summary")?.get("dropped")?.as_u64())
            .sum()
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// (CPU seconds, VmRSS kB) of `pid` now.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let utime: f64 = f.nth(11)?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(((utime + stime) / clock_ticks(), rss))
}

/// Runs pagewatch with `args` to its end, sampling it every second once it
/// says it is tracing.
fn sample_pagewatch(pagewatch: &Path, args: &[String], out_dir: &Path) -> anyhow::Result<Sampled> {
    cmd::step(&format!("pagewatch {}", args.join(" ")));
    let (out, err) = (out_dir.join("pw.out"), out_dir.join("pw.err"));
    let mut child = Command::new(pagewatch)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .spawn()
        .context("starting pagewatch")?;
    let pid = child.id();
    let mut samples = Vec::new();
    let mut started = None;
    while child.try_wait()?.is_none() {
        if started.is_none() && std::fs::read_to_string(&err).is_ok_and(|e| e.contains("tracing;"))
        {
            started = Some(Instant::now());
        }
        if let (Some(t0), Some((cpu, rss))) = (started, usage(pid)) {
            samples.push((t0.elapsed().as_secs_f64(), cpu, rss));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let stderr = std::fs::read_to_string(&err)?;
    if !child.wait()?.success() {
        bail!("pagewatch {} failed: {stderr}", args.join(" "));
    }
    let lines = std::fs::read_to_string(&out)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Sampled {
        samples,
        lines,
        stderr,
    })
}

/// pw-hold processes, killed on drop.
struct Holders(Vec<Child>);

impl Holders {
    /// Starts `n` pw-hold processes writing `mib` MiB each and waits until
    /// every one has written all of it.
    fn start(dir: &Path, n: usize, mib: usize, thp: bool) -> anyhow::Result<Self> {
        let mut holders = Self(Vec::with_capacity(n));
        for _ in 0..n {
            holders.0.push(
                Command::new(dir.join("pw-hold"))
                    .arg(mib.to_string())
                    .arg(if thp { "thp" } else { "nothp" })
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .context("starting pw-hold")?,
            );
        }
        for child in &mut holders.0 {
            let stdout = child.stdout.take().context("pw-hold stdout")?;
            let ready = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|l| l == "ready");
            if !ready {
                bail!("a pw-hold process exited before it was ready");
            }
        }
        Ok(holders)
    }

    /// The largest mapping of the first process: (pid, start, end).
    fn region(&self) -> anyhow::Result<(u32, u64, u64)> {
        let pid = self.0.first().context("no pw-hold process")?.id();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
        let (start, end) = maps
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split(' ').next()?.split_once('-')?;
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            })
            .max_by_key(|(a, b)| b - a)
            .context("pw-hold has no mappings")?;
        Ok((pid, start, end))
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A /proc/vmstat counter (0 if absent).
fn vmstat(name: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn strs(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// 200 processes x 50 MiB: snapshotted and traced, against traced only.
pub fn scale(pagewatch: &Path, dir: &Path, o: &ScaleOptions) -> anyhow::Result<String> {
    cmd::step(&format!(
        "scale: starting {} pw-hold processes of {} MiB",
        o.scale_processes, o.scale_mib
    ));
    let load_at_start = load();
    let holders = Holders::start(dir, o.scale_processes, o.scale_mib, false)?;
    let secs = format!("{}s", o.scale_seconds);
    let base = ["top", "--json", "--interval", "1s", "--duration", &secs];
    // By pid, not --comm pw-hold: other pw-hold processes on a shared
    // machine are not this benchmark's.
    let pid_args: Vec<String> = holders
        .0
        .iter()
        .flat_map(|c| ["--pid".to_owned(), c.id().to_string()])
        .collect();
    let snap = sample_pagewatch(pagewatch, &[strs(&base), pid_args].concat(), dir)?;
    let load_after = load();
    let trace = sample_pagewatch(pagewatch, &strs(&base), dir)?;
    drop(holders);
    let pages = o.scale_processes * o.scale_mib * 256;
    let ms = snap.snapshot_ms();
    let work = snap.snapshot_work();
    let all: Vec<&str> = work.iter().filter_map(|w| w.2.as_deref()).collect();
    let mut rescanned: Vec<f64> = work.iter().map(|w| w.0 as f64).collect();
    rescanned.sort_by(f64::total_cmp);
    let row = |name: &str, s: &Sampled, snap: String| {
        format!(
            "| {name} | {snap} | {:.1}% | {:.1} MiB | {} |\n",
            s.cpu_pct(),
            s.rss_max_mib(),
            s.dropped()
        )
    };
    Ok(format!(
        "## Scale: {n} processes x {mib} MiB\n\n\
         Command: `cargo xtask bench --only scale` (xtask/src/bench_scale.rs). {n} pw-hold \
         processes each write {mib} MiB of 4 KiB pages ({pages} pages in all) and stay idle; \
         pagewatch runs {secs} at 1 s intervals. CPU is the collector's utime+stime over its \
         tracing time, RSS the largest VmRSS sampled each second. Load average at the start: \
         {load_at_start}; after the snapshotting run: {load_after}.\n\n\
         | variant | snapshot per interval: median / p95 / max | collector CPU (one core) | collector RSS (max) | dropped |\n\
         |---|---:|---:|---:|---:|\n{a}{b}\n\
         Collector RSS per tracked page while snapshotting: {per_page:.1} bytes.\n\n\
         Snapshots after the first ({snaps}): processes read again per snapshot median {r50:.0}, \
         max {rmax:.0}; every process read again in {nall} of them{why}.\n",
        snaps = work.len(),
        r50 = percentile(&rescanned, 0.5),
        rmax = percentile(&rescanned, 1.0),
        nall = all.len(),
        why = if all.is_empty() {
            String::new()
        } else {
            format!(" (counters that moved: {})", all.join("; "))
        },
        n = o.scale_processes,
        mib = o.scale_mib,
        a = row(
            "`top --pid P1 --pid P2 ...` (traced and snapshotted)",
            &snap,
            format!(
                "{:.0} / {:.0} / {:.0} ms ({} intervals)",
                percentile(&ms, 0.5),
                percentile(&ms, 0.95),
                percentile(&ms, 1.0),
                ms.len()
            )
        ),
        b = row(
            "`top` (every process traced, no snapshots)",
            &trace,
            "-".into()
        ),
        per_page = snap.rss_max_mib() * f64::from(1 << 20) / pages as f64,
    ))
}

/// Seconds `dd` takes to read the pagemap entries of `[start, end)`.
fn dd_pagemap(pid: u32, start: u64, end: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    cmd::run(Command::new("dd").args([
        format!("if=/proc/{pid}/pagemap"),
        "of=/dev/null".into(),
        "bs=512K".into(),
        "iflag=skip_bytes,count_bytes".into(),
        format!("skip={}", start / 4096 * 8),
        format!("count={}", (end - start) / 4096 * 8),
        "status=none".into(),
    ]))?;
    Ok(t.elapsed().as_secs_f64())
}

/// One big process, 4 KiB pages and THP.
pub fn big(pagewatch: &Path, dir: &Path, o: &ScaleOptions) -> anyhow::Result<String> {
    let mut rows = String::new();
    let load_at_start = load();
    for thp in [false, true] {
        cmd::step(&format!(
            "big: one pw-hold of {} MiB ({})",
            o.big_mib,
            if thp { "THP" } else { "4 KiB" }
        ));
        let holder = Holders::start(dir, 1, o.big_mib, thp)?;
        let (pid, start, end) = holder.region()?;
        let mut raw: Vec<f64> = (0..5)
            .map(|_| dd_pagemap(pid, start, end).map(|s| s * 1e3))
            .collect::<anyhow::Result<_>>()?;
        raw.sort_by(f64::total_cmp);
        let s = sample_pagewatch(
            pagewatch,
            &strs(&[
                "top",
                "--json",
                "--interval",
                "1s",
                "--duration",
                "15s",
                "--pid",
                &pid.to_string(),
            ]),
            dir,
        )?;
        drop(holder);
        let ms = s.snapshot_ms_reading(true);
        let carried = s.snapshot_ms_reading(false);
        let pages = o.big_mib * 256;
        rows.push_str(&format!(
            "| {} | {pages} | {:.0} ms ({} reads) | {:.1} ms ({}) | {:.0} ms | {:.1}x | {:.1} MiB | {:.1} |\n",
            if thp {
                "THP (MADV_HUGEPAGE)"
            } else {
                "4 KiB (MADV_NOHUGEPAGE)"
            },
            percentile(&ms, 0.5),
            ms.len(),
            percentile(&carried, 0.5),
            carried.len(),
            percentile(&raw, 0.5),
            percentile(&ms, 0.5) / percentile(&raw, 0.5),
            s.rss_max_mib(),
            s.rss_max_mib() * f64::from(1 << 20) / pages as f64,
        ));
    }
    Ok(format!(
        "## One big process: {mib} MiB\n\n\
         Command: `cargo xtask bench --only big --big-mib {mib}` (xtask/src/bench_scale.rs). \
         One pw-hold process writes {mib} MiB; `pagewatch top --pid PID --interval 1s --duration 15s` \
         snapshots it every second against `dd bs=512K` of the same pagemap range (median of 5), \
         the raw read bound. A snapshot that reads the process (the first, and any that a moved \
         counter makes read it again) is timed apart from one that carries it over unchanged \
         (medians, with their counts). Load average at the start: {load_at_start}.\n\n\
         | memory | pages | snapshot reading it (median) | snapshot carrying it (median) | pagemap read | ratio (reading / pagemap) | collector RSS (max) | bytes per tracked page |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n{rows}",
        mib = o.big_mib,
    ))
}

/// A v1 memory cgroup for the soak's reclaim loop, removed on drop.
struct SoakCgroup(PathBuf);

impl SoakCgroup {
    fn create() -> anyhow::Result<Self> {
        let dir = PathBuf::from("/sys/fs/cgroup/memory/pagewatch-soak");
        if !dir
            .parent()
            .is_some_and(|p| p.join("memory.limit_in_bytes").exists())
        {
            bail!("the soak needs the v1 memory cgroup controller at /sys/fs/cgroup/memory");
        }
        let _ = std::fs::create_dir(&dir);
        std::fs::write(dir.join("memory.limit_in_bytes"), "64M")
            .with_context(|| format!("limiting {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for SoakCgroup {
    fn drop(&mut self) {
        // Move what is left to the root, then remove the group.
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/memory/cgroup.procs", pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `record` of a mixed workload for `soak_minutes`.
pub fn soak(pagewatch: &Path, dir: &Path, o: &ScaleOptions) -> anyhow::Result<String> {
    let cgroup = SoakCgroup::create()?;
    let data = dir.join("soak.dat");
    cmd::run(Command::new("dd").args([
        "if=/dev/zero".into(),
        format!("of={}", data.display()),
        "bs=1M".into(),
        "count=256".into(),
        // Not through the page cache: the reads in the cgroup charge it.
        "oflag=direct".into(),
        "status=none".into(),
    ]))?;
    let recording = dir.join("soak.pwrec");
    let _ = std::fs::remove_file(&recording);
    let secs = o.soak_minutes * 60;
    // Three loops until the deadline: 32 MiB of faults a second (8,192
    // faults), a 256 MiB file read through a 64 MiB memory cgroup every
    // 2 s, and an 8 MiB MADV_COLLAPSE every 5 s (1.5 s after the 4 KiB
    // pages are written, kept 2 s after: snapshots see both sides).
    let script = format!(
        "export end=$(( $(date +%s) + {secs} ))\n\
         sh -c 'while [ $(date +%s) -lt $end ]; do {bin}/pw-faults rate 8 4 >/dev/null; sleep 1; done' &\n\
         sh -c 'echo $$ > {cg}/cgroup.procs; while [ $(date +%s) -lt $end ]; do cat {data} >/dev/null; sleep 2; done' &\n\
         sh -c 'while [ $(date +%s) -lt $end ]; do (sleep 1.5; echo go; sleep 2) | {bin}/pw-thp 8 madvise >/dev/null; sleep 1.5; done' &\n\
         wait\n",
        bin = dir.display(),
        cg = cgroup.0.display(),
        data = data.display(),
    );
    let load_at_start = load();
    let collapses_before = vmstat("thp_collapse_alloc");
    let s = sample_pagewatch(
        pagewatch,
        &strs(&[
            "record",
            "-o",
            recording.to_str().context("recording path")?,
            "--",
            "sh",
            "-c",
            &script,
        ]),
        dir,
    )?;
    let collapses = vmstat("thp_collapse_alloc") - collapses_before;
    let memcg_stat = std::fs::read_to_string(cgroup.0.join("memory.stat")).unwrap_or_default();
    let memcg_scanned = memcg_stat
        .lines()
        .filter_map(|l| l.strip_prefix("pgpgout "))
        .find_map(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    drop(cgroup);
    let size = std::fs::metadata(&recording)?.len();
    let report = cmd::output(
        Command::new(pagewatch)
            .args(["report", "--format", "json"])
            .arg(&recording),
    )?;
    let summary: serde_json::Value = report
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|l| l.get("summary").cloned())
        .context("report printed no summary")?;
    let by_cause = cmd::output(
        Command::new(pagewatch)
            .args(["report", "--by", "cause"])
            .arg(&recording),
    )?;
    let by_cause: Vec<&str> = by_cause
        .lines()
        .skip_while(|l| !l.starts_with("summary by cause"))
        .collect();
    let (rss_start, rss_end) = s.rss_ends_mib(60.0);
    let minutes = s.samples.last().map_or(0.0, |l| l.0) / 60.0;
    let _ = std::fs::remove_file(&data);
    Ok(format!(
        "## Soak: {m} minutes of a mixed workload\n\n\
         Command: `cargo xtask bench --only soak --soak-minutes {m}` (xtask/src/bench_scale.rs). \
         `pagewatch record -- sh -c SCRIPT` (default 4 MiB ring buffer, 1 s intervals) of three loops: \
         `pw-faults rate 8 4` then 1 s of sleep (8,192 faults a second), `cat` of a 256 MiB file \
         in a 64 MiB v1 memory cgroup every 2 s (memcg reclaim), and `pw-thp 8 madvise` every 5 s \
         (MADV_COLLAPSE 1.5 s after its 4 KiB pages are written, exit 2 s later). Load average at the start: {load_at_start}.\n\n\
         | figure | value |\n|---|---:|\n\
         | collector RSS, first minute (mean) | {rss_start:.1} MiB |\n\
         | collector RSS, last minute (mean) | {rss_end:.1} MiB |\n\
         | collector RSS, max | {rss_max:.1} MiB |\n\
         | collector RSS by minute (mean, MiB) | {by_minute} |\n\
         | collector CPU (one core) | {cpu:.1}% |\n\
         | events recorded | {events} |\n\
         | dropped by the kernel | {dropped} |\n\
         | recording size | {size_mib:.1} MiB ({per_min:.1} MiB per minute) |\n\
         | THP collapses on the machine (vmstat thp_collapse_alloc) | {collapses} |\n\
         | pages charged out of the memory cgroup (memory.stat pgpgout) | {memcg_scanned} |\n\n\
         pagewatch said: `{said}`; `pagewatch report --by cause` of the recording:\n\n\
         ```\n{by_cause}\n```\n",
        m = o.soak_minutes,
        rss_max = s.rss_max_mib(),
        by_minute = s.rss_by_minute(),
        cpu = s.cpu_pct(),
        events = summary["events"],
        dropped = summary["dropped"],
        size_mib = size as f64 / f64::from(1 << 20),
        per_min = size as f64 / f64::from(1 << 20) / minutes.max(1e-9),
        said = s.stderr.lines().last().unwrap_or_default(),
        by_cause = by_cause.join("\n"),
    ))
}
