//! `cargo xtask test --vm`: the integration suite and the VM scenarios in
//! guests, one boot per kernel of the set (booting costs ~20 s under TCG,
//! so everything for a kernel runs in one boot), with a per-boot timeout,
//! one retry on vng's exit 255, and a per-kernel summary.
//!
//! The test binaries are built on the host (cargo is not on the guest's
//! PATH) and run by path from a generated script in the kernel's results
//! directory, which is also the guest's `--rwdir`: skip log, QMP replies.
//! While the guest runs, [`super::harness`] reads its console and is the
//! scenarios' QMP proxy: the guest program `pw-vm-scenario` prints
//! `@@pw-vm qmp SEQ REQUEST`, the harness drives QEMU and writes the answer
//! to `qmp-SEQ.json` in the results directory, which the guest reads back
//! (9p, uncached).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::Value;

use super::{
    guest::{self, Guest},
    harness::Harness,
    kernels::{self, Kernel},
    run::shell_quote,
    selftests, setup, vm_dir,
};
use crate::cmd::{self, step};

/// Guest size for the suite: 2 GiB in two 1 GiB NUMA nodes, 2 CPUs, a balloon.
const MEMORY_MIB: u64 = 2048;
const CPUS: u32 = 2;

/// The guest's /var/tmp and /tmp are tmpfs: file pages there are shmem,
/// which memcg cannot reclaim without swap, and the host's are disk-backed.
/// Give the tests a real filesystem (ext4 on zram1) as /var/tmp and TMPDIR.
const SCRATCH: &str = r#"if modprobe zram num_devices=2 2>/dev/null && [ -e /sys/block/zram1 ] \
  && echo 1G > /sys/block/zram1/disksize && mkfs.ext4 -q /dev/zram1 \
  && mount /dev/zram1 /var/tmp && chmod 1777 /var/tmp; then
  export TMPDIR=/var/tmp
  echo "@@pw-vm note /var/tmp and TMPDIR are ext4 on zram1"
else
  echo "@@pw-vm note no zram: /var/tmp stays tmpfs"
fi
"#;

/// The guest kernel's log in the `--rwdir`.
const DMESG: &str = "dmesg.log";

/// At most this many lines of [`DMESG`] in the summary.
const DMESG_TAIL: usize = 30;

/// The hook-holding pagewatch's stderr in the `--rwdir`.
const KEEPER_LOG: &str = "keeper.log";

/// QEMU's CPU reset log in the `--rwdir` ([`Guest::qemu_log`]).
const QEMU_LOG: &str = "qemu.log";

/// The scenarios `pw-vm-scenario` knows, in the order they run.
const SCENARIOS: &[&str] = &[
    "balloon",
    "balloon-pressure",
    "numa-hugetlb",
    "numa-migrate",
    "thp",
    "selftests",
];

/// The VM options of `cargo xtask test`.
#[derive(Debug, Args)]
pub struct VmTestOptions {
    /// Run the integration suite and the VM scenarios in guests too, one
    /// boot per kernel of the set (about 12 minutes under TCG): the
    /// default, spelled out.
    #[arg(long, conflicts_with = "host_only")]
    pub vm: bool,
    /// Only the guests: skip lints and the host suite (implies --vm).
    #[arg(long, conflicts_with = "host_only")]
    pub vm_only: bool,
    /// Only the host suite, never the guests.
    #[arg(long)]
    pub host_only: bool,
    /// Only this guest kernel: a vmlinuz, a kernel build tree, or a
    /// fetched release prefix such as 6.12.
    #[arg(long, value_name = "K")]
    pub kernel: Option<String>,
    /// Time limit per guest boot, in seconds. A 6.1 guest under TCG
    /// needed more than 900 s for the tests and scenarios once the map,
    /// expect and diff tests joined (killed in the mm selftests scenario).
    #[arg(long, default_value_t = 1500)]
    pub boot_timeout: u64,
    /// Skip the VM scenarios (balloon, NUMA hugetlb, THP, mm selftests).
    #[arg(long, conflicts_with = "scenarios_only")]
    pub no_scenarios: bool,
    /// Only the VM scenarios, not the test binaries.
    #[arg(long)]
    pub scenarios_only: bool,
    /// Only this scenario (repeatable); the default is every one.
    #[arg(long = "scenario", value_name = "NAME", value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    pub scenarios: Vec<String>,
    /// Test the statically linked pagewatch of `cargo xtask dist` (built
    /// first) instead of the normal build.
    #[arg(long)]
    pub static_binary: bool,
}

impl VmTestOptions {
    /// Whether the guests run: unless `--host-only` (which clap refuses
    /// beside `--vm`, so `--vm` needs no test of its own).
    pub fn wanted(&self) -> bool {
        !self.host_only
    }

    /// The scenarios `--scenario` names, in the suite's order, else all.
    fn selected_scenarios(&self) -> Vec<&'static str> {
        SCENARIOS
            .iter()
            .copied()
            .filter(|s| self.scenarios.is_empty() || self.scenarios.iter().any(|n| n == s))
            .collect()
    }
}

/// One kernel's results.
#[derive(Debug, Default)]
struct Tally {
    kernel: String,
    passed: u64,
    failed: u64,
    skipped: u64,
    scenarios_passed: Vec<String>,
    scenarios_failed: Vec<String>,
    scenarios_skipped: Vec<String>,
    failures: Vec<String>,
    /// Why steps failed, from the console ([`crate::libtest::Reader::why`]).
    why: Vec<String>,
    /// What passed only on a second try, or as a known issue
    /// ([`crate::libtest::Reader::flaky`]).
    flaky: Vec<String>,
    /// How each boot that died before its script ended went
    /// ([`death_report`]), and which boot it was.
    guest_logs: Vec<(&'static str, Vec<String>)>,
    skips: Vec<String>,
    finished: bool,
    exit: Option<i32>,
    retries: u32,
    elapsed: Duration,
    /// Seconds from boot start to the guest script, and per step.
    booted_at: Option<f64>,
    step_secs: Vec<(String, f64)>,
}

pub fn run(opts: &VmTestOptions, test_args: &[String]) -> anyhow::Result<()> {
    let start = Instant::now();
    setup::ensure(opts.kernel.as_deref())?;
    let _lock = super::exclusive()?;
    let kernels = kernels::selected(opts.kernel.as_deref())?;
    let scenarios = opts.selected_scenarios();
    if scenarios.contains(&"selftests") && test_args.is_empty() {
        selftests::ensure(&kernels)?;
    }
    let accel = guest::accelerator(opts.kernel.as_deref())?;
    let pagewatch = if opts.static_binary {
        crate::dist::build()?
    } else {
        cmd::release_dir().join("pagewatch")
    };
    let binaries = if opts.scenarios_only {
        crate::build::run()?;
        Vec::new()
    } else {
        test_binaries()?
    };
    step(&format!(
        "VM suite: {} test binaries and {} scenarios on {} kernel(s) under {accel}",
        binaries.len(),
        if opts.no_scenarios {
            0
        } else {
            scenarios.len()
        },
        kernels.len()
    ));
    let mut tallies = Vec::new();
    for kernel in kernels {
        tallies.push(run_kernel(
            kernel, accel, opts, &binaries, test_args, &pagewatch,
        )?);
    }
    let retries: u32 = tallies.iter().map(|t| t.retries).sum();
    println!("\nxtask test --vm ({accel}):");
    println!(
        "  {:<24} {:>6} {:>6} {:>7}  {:<22} {:>7} {:>7}",
        "kernel", "passed", "failed", "skipped", "scenarios p/f/s", "time", "retries"
    );
    for t in &tallies {
        println!(
            "  {:<24} {:>6} {:>6} {:>7}  {:<22} {:>6.0}s {:>7}{}",
            t.kernel,
            t.passed,
            t.failed,
            t.skipped,
            format!(
                "{}/{}/{}",
                t.scenarios_passed.len(),
                t.scenarios_failed.len(),
                t.scenarios_skipped.len()
            ),
            t.elapsed.as_secs_f64(),
            t.retries,
            if t.finished {
                String::new()
            } else {
                format!(
                    "  INCOMPLETE ({})",
                    match t.exit {
                        Some(c) => format!("guest exited {c}"),
                        None => "timed out".into(),
                    }
                )
            }
        );
    }
    for t in &tallies {
        print_times(t);
    }
    for t in &tallies {
        for s in &t.skips {
            println!("  SKIPPED on {}: {s}", t.kernel);
        }
        for f in &t.failures {
            println!("  FAILED on {}: {f}", t.kernel);
        }
        for w in &t.why {
            println!("  WHY on {}: {w}", t.kernel);
        }
        for f in &t.flaky {
            println!("  FLAKY or KNOWN ISSUE on {}: {f}", t.kernel);
        }
        for (boot, log) in &t.guest_logs {
            println!(
                "  {} died in {boot}: QEMU's triple fault report, then the kernel's warnings and worse:",
                t.kernel
            );
            for l in log {
                println!("    {l}");
            }
        }
    }
    let sum = |f: fn(&Tally) -> u64| tallies.iter().map(f).sum::<u64>();
    println!(
        "xtask test --vm: {} passed, {} failed, {} skipped; scenarios {}/{}/{}; {} kernels in {:.0}s, {retries} retries after exit 255",
        sum(|t| t.passed),
        sum(|t| t.failed),
        sum(|t| t.skipped),
        sum(|t| t.scenarios_passed.len() as u64),
        sum(|t| t.scenarios_failed.len() as u64),
        sum(|t| t.scenarios_skipped.len() as u64),
        tallies.len(),
        start.elapsed().as_secs_f64()
    );
    if tallies
        .iter()
        .any(|t| !t.finished || t.failed > 0 || !t.scenarios_failed.is_empty())
    {
        bail!("the VM suite failed");
    }
    Ok(())
}

/// Where one kernel's time went: boot, the test binaries, the scenarios,
/// power-off, and the slowest steps.
fn print_times(t: &Tally) {
    let total = t.elapsed.as_secs_f64();
    let Some(boot) = t.booted_at else {
        println!(
            "  time on {}: {total:.0}s, the guest script never began",
            t.kernel
        );
        return;
    };
    // A fold from +0.0: an empty f64 sum is -0.0, printed "-0s".
    let sum = |scenarios: bool| -> f64 {
        t.step_secs
            .iter()
            .filter(|(n, _)| n.starts_with("scenario ") == scenarios)
            .fold(0.0, |sum, (_, s)| sum + s)
    };
    let (binaries, scenarios) = (sum(false), sum(true));
    let mut slowest: Vec<&(String, f64)> = t.step_secs.iter().collect();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = slowest
        .iter()
        .take(8)
        .map(|(n, s)| format!("{n} {s:.0}s"))
        .collect();
    println!(
        "  time on {}: {total:.0}s = boot {boot:.0}s + setup and test binaries {binaries:.0}s + scenarios {scenarios:.0}s + power-off {:.0}s; slowest: {}",
        t.kernel,
        total - boot - binaries - scenarios,
        top.join(", ")
    );
}

/// A test binary built on the host: (label, path).
type Binary = (String, PathBuf);

/// Builds the test binaries (and pagewatch and the workloads) and learns
/// their paths from cargo's JSON messages.
fn test_binaries() -> anyhow::Result<Vec<Binary>> {
    crate::build::run()?;
    step("building the test binaries (cargo test --release --no-run)");
    let out =
        cmd::output(cmd::cargo().args(["test", "--release", "--no-run", "--message-format=json"]))?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let package = v["package_id"].as_str().unwrap_or_default();
        // The xtask's own unit tests are about the host.
        if package.contains("/xtask#") {
            continue;
        }
        let label = format!(
            "{}:{}",
            v["target"]["kind"][0].as_str().unwrap_or("?"),
            v["target"]["name"].as_str().unwrap_or("?")
        );
        bins.push((label, PathBuf::from(exe)));
    }
    if bins.is_empty() {
        bail!("cargo test --no-run reported no test binaries");
    }
    Ok(bins)
}

/// The guest script: every test binary, then every scenario, with marker
/// lines this side parses.
fn script(
    kernel: &Kernel,
    pagewatch: &Path,
    rw: &Path,
    binaries: &[Binary],
    scenarios: &[&str],
    test_args: &[String],
) -> String {
    let release = cmd::release_dir();
    let mut s = String::from("#!/bin/sh\n# Generated by `cargo xtask test --vm`.\n");
    let _ = writeln!(
        s,
        "export PAGEWATCH_BIN={} PAGEWATCH_SKIP_LOG={} PW_VM_RWDIR={} PW_VM_MEMORY_MIB={MEMORY_MIB}",
        shell_quote(&pagewatch.display().to_string()),
        shell_quote(&rw.join("skips.log").display().to_string()),
        shell_quote(&rw.display().to_string()),
    );
    // The mm selftests built for this kernel, if it is a fetched one.
    let _ = writeln!(
        s,
        "export PW_VM_SELFTESTS={}",
        shell_quote(&selftests::dir(&kernel.name).display().to_string())
    );
    let _ = writeln!(
        s,
        "cd {}\necho \"@@pw-vm begin $(uname -r)\"",
        shell_quote(&cmd::workspace().display().to_string())
    );
    s.push_str(SCRATCH);
    // The kernel's warnings and worse, kept on the host: if the guest dies
    // (an oops, the OOM killer, a panic), the summary shows how.
    let _ = writeln!(
        s,
        "dmesg --follow --level=emerg,alert,crit,err,warn > {} 2>&1 &",
        shell_quote(&rw.join(DMESG).display().to_string())
    );
    // A pagewatch that holds every default hook from here to the end,
    // following only an idle `sleep`: each tracepoint is switched on once,
    // before any test runs, and the tests' own attaches and detaches then
    // only add and remove programs. Switching a tracepoint patches kernel
    // text, and under multi-threaded TCG a CPU now and then runs the
    // patch's breakpoint after the patch is done (`Oops: int3`, then a
    // panic; docs/testing.md).
    // It is waited for without a poll: the waiting shell blocks opening a
    // FIFO that the keeper's stderr reader opens once "tracing;" went by
    // (a polling loop's forks, each 0.1 s, killed a 6.12 guest during
    // the keeper's own attach).
    let log = shell_quote(&rw.join(KEEPER_LOG).display().to_string());
    let _ = writeln!(
        s,
        "sleep 1000000 & PW_IDLE=$!\n\
         mkfifo /tmp/pw-keeper-ready\n\
         {{ {} top --pid $PW_IDLE --interval 3600s --json 2>&1 > /dev/null; }} | \
         {{ sed '/tracing;/q' > {log}; echo > /tmp/pw-keeper-ready; cat >> {log}; }} &\n\
         read -r _ < /tmp/pw-keeper-ready\n\
         echo \"@@pw-vm note hooks held for the whole boot: $(grep -c 'tracing;' {log}) pagewatch tracing\"",
        shell_quote(&pagewatch.display().to_string()),
    );
    let args: String = test_args
        .iter()
        .map(|a| format!(" {}", shell_quote(a)))
        .collect();
    for (label, path) in binaries {
        let _ = writeln!(
            s,
            "echo '@@pw-vm binary {label}'\n{} --test-threads=1{args} 2>&1\necho \"@@pw-vm binary-exit {label} $?\"",
            shell_quote(&path.display().to_string())
        );
    }
    let scenario_bin = release.join("pw-vm-scenario");
    for name in scenarios {
        let _ = writeln!(
            s,
            "echo '@@pw-vm scenario {name}'\n{} {name} 2>&1\necho \"@@pw-vm scenario-exit {name} $?\"",
            shell_quote(&scenario_bin.display().to_string())
        );
    }
    s.push_str("echo '@@pw-vm end'\n");
    s
}

fn run_kernel(
    kernel: Kernel,
    accel: guest::Accel,
    opts: &VmTestOptions,
    binaries: &[Binary],
    test_args: &[String],
    pagewatch: &Path,
) -> anyhow::Result<Tally> {
    let rw = vm_dir().join("results").join(kernel.slug());
    let selected = opts.selected_scenarios();
    let scenarios: &[&str] = if opts.no_scenarios || !test_args.is_empty() {
        &[]
    } else {
        &selected
    };
    let mut g = Guest::new(kernel.clone(), MEMORY_MIB, CPUS, accel);
    g.numa = true;
    g.balloon = true;
    g.qmp = Some(rw.join("qmp.sock"));
    g.qemu_log = Some(rw.join(QEMU_LOG));
    g.rwdirs = vec![rw.clone()];
    g.timeout = Duration::from_secs(opts.boot_timeout);
    let mut tally = Tally {
        kernel: kernel.name.clone(),
        ..Tally::default()
    };
    let reset = |rw: &Path| -> anyhow::Result<()> {
        if rw.exists() {
            std::fs::remove_dir_all(rw)
                .with_context(|| format!("cannot clear {}", rw.display()))?;
        }
        std::fs::create_dir_all(rw).with_context(|| format!("cannot create {}", rw.display()))?;
        let sh = rw.join("run.sh");
        std::fs::write(
            &sh,
            script(&kernel, pagewatch, rw, binaries, scenarios, test_args),
        )
        .with_context(|| format!("cannot write {}", sh.display()))
    };
    reset(&rw)?;
    step(&format!(
        "booting {} ({MEMORY_MIB} MiB in 2 NUMA nodes, {CPUS} CPUs, balloon); output in {}",
        kernel.name,
        rw.display()
    ));
    let log_path = rw.join("console.log");
    let qmp = g.qmp.clone().expect("set above");
    let mut state = Harness::new(kernel.name.clone(), MEMORY_MIB, rw.clone(), qmp);
    let start = Instant::now();
    let script_cmd = format!(
        "sh {}",
        shell_quote(&rw.join("run.sh").display().to_string())
    );
    let mut console = String::new();
    let mut retries = 0;
    let outcome = {
        let mut on_line = |line: &str| {
            let at = start.elapsed().as_secs_f64();
            let _ = writeln!(console, "{at:7.1} {line}");
            println!("[{} {at:4.0}s] {line}", state.kernel);
            state.line(line, at);
        };
        let mut before_retry = || {
            let _ = std::fs::remove_file(rw.join("skips.log"));
            tally
                .guest_logs
                .push(("the first boot (retried)", death_report(&rw)));
        };
        g.boot_retrying(&script_cmd, &mut on_line, &mut before_retry, &mut retries)?
    };
    tally.retries = retries;
    tally.elapsed = start.elapsed();
    tally.exit = outcome.code;
    let _ = std::fs::write(&log_path, console);
    // The retry reran everything: count only the last boot's results.
    let skips = std::fs::read_to_string(rw.join("skips.log")).unwrap_or_default();
    for line in skips.lines() {
        let (name, reason) = line.split_once('\t').unwrap_or((line, ""));
        tally.skips.push(format!("{name}: {reason}"));
    }
    if !state.finished {
        tally.guest_logs.push(("the last boot", death_report(&rw)));
    }
    tally.finish(state, scenarios);
    Ok(tally)
}

/// How a guest that died before its script ended went: QEMU's triple
/// fault report if it logged one, then the last [`DMESG_TAIL`] lines of
/// the kernel's log.
fn death_report(rw: &Path) -> Vec<String> {
    let qemu = std::fs::read_to_string(rw.join(QEMU_LOG)).unwrap_or_default();
    let mut report: Vec<String> = match qemu.rfind("Triple fault") {
        Some(at) => qemu[at..]
            .lines()
            .take(DMESG_TAIL)
            .map(|l| format!("qemu: {l}"))
            .collect(),
        None => vec!["qemu: no triple fault logged".into()],
    };
    let log = std::fs::read_to_string(rw.join(DMESG)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    report.extend(
        lines[lines.len().saturating_sub(DMESG_TAIL)..]
            .iter()
            .map(|l| l.to_string()),
    );
    report
}

impl Tally {
    fn finish(&mut self, h: Harness, scenarios: &[&str]) {
        self.finished = h.finished;
        self.booted_at = h.booted_at;
        self.step_secs.clone_from(&h.step_secs);
        let skipped_names: Vec<&str> = self
            .skips
            .iter()
            .filter_map(|s| s.split(':').next())
            .collect();
        // Skipped tests return early and count as passed in cargo's tally.
        let scenario_skips = scenarios
            .iter()
            .filter(|s| skipped_names.iter().any(|n| *n == format!("vm-{s}")))
            .count() as u64;
        self.skipped = (skipped_names.len() as u64).saturating_sub(scenario_skips);
        self.passed = h.tests.passed.saturating_sub(self.skipped);
        self.failed = h.tests.failed;
        self.failures.extend(h.tests.failed_tests);
        self.why = h.tests.why;
        self.flaky = h.tests.flaky;
        for name in scenarios {
            let skipped = skipped_names.iter().any(|n| *n == format!("vm-{name}"));
            match h.scenario_exits.iter().find(|(n, _)| n == name) {
                Some((_, 0)) if skipped => self.scenarios_skipped.push(name.to_string()),
                Some((_, 0)) => self.scenarios_passed.push(name.to_string()),
                Some((_, code)) => {
                    self.scenarios_failed.push(name.to_string());
                    self.failures.push(format!(
                        "scenario {name} exited {code} (see the console above)"
                    ));
                }
                None => {
                    self.scenarios_failed.push(name.to_string());
                    self.failures
                        .push(format!("scenario {name} did not run to the end"));
                }
            }
        }
    }
}
