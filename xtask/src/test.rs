//! `cargo xtask test`: build, check formatting and lints, run the unit
//! tests and the integration suite against the running kernel, one test at
//! a time (several change global kernel state), then (unless
//! `--host-only`) the same suite and the VM scenarios in QEMU guests on
//! each test kernel. Tests that cannot run here log a reason to a skip
//! file; the closing lines count them as skipped, not passed.

use anyhow::bail;
use clap::Args;

use crate::{build, cmd, libtest::Reader};

#[derive(Debug, Args)]
pub struct Options {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    no_lint: bool,
    #[command(flatten)]
    vm: crate::vm::suite::VmTestOptions,
    /// Extra arguments for the test binaries (after `--`), e.g. a name filter.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.vm.vm_only {
        return crate::vm::suite::run(&opts.vm, &opts.args);
    }
    host(&opts)?;
    if !opts.vm.wanted() {
        return Ok(());
    }
    if !cmd::is_root() {
        println!(
            "\nSKIPPED the VM suite: booting test guests needs root (to install QEMU and \
             virtme-ng, and for /dev/kvm); run `sudo cargo xtask test` for it"
        );
        return Ok(());
    }
    crate::vm::suite::run(&opts.vm, &opts.args)
}

/// The host suite.
fn host(opts: &Options) -> anyhow::Result<()> {
    build::run()?;
    if !opts.no_lint {
        cmd::step("checking formatting");
        cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
        cmd::step("clippy (warnings are errors)");
        cmd::run(cmd::cargo().args([
            "clippy",
            "--release",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    if !cmd::is_root() {
        eprintln!(
            "NOTE: not root: tests that need BPF or /proc/kpageflags will be reported as skipped"
        );
    }
    let skip_log = cmd::release_dir().join("test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    cmd::step("unit and integration tests (one at a time)");
    // Every binary runs even after one fails, so the summary lists every
    // failure.
    let mut command = cmd::cargo();
    command
        .args([
            "test",
            "--release",
            // Every binary runs even after one fails, so the summary
            // lists every failure.
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ])
        .args(&opts.args)
        .env("PAGEWATCH_BIN", cmd::release_dir().join("pagewatch"))
        .env("PAGEWATCH_SKIP_LOG", &skip_log);
    let mut tests = Reader::default();
    let mut binary = String::from("?");
    // cargo names each binary it runs on stderr, before the binary's own
    // lines on stdout: cmd::lines keeps them in order.
    let status = cmd::lines(command, &mut |line| {
        println!("{line}");
        tests.line(&binary, line);
        if let Some(name) = running(line) {
            binary = name;
            tests.step();
        }
    })?;
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skipped = skips.lines().count() as u64;
    if skipped > 0 {
        eprintln!("\nSkipped tests (they could not run here, and did not pass):");
        for line in skips.lines() {
            let (name, reason) = line.split_once('\t').unwrap_or((line, ""));
            eprintln!("  SKIPPED {name}: {reason}");
        }
    }
    for f in &tests.failed_tests {
        println!("  FAILED {f}");
    }
    for w in &tests.why {
        println!("  WHY {w}");
    }
    // Skipped tests return early and so count as passed in cargo's tally.
    println!(
        "\nxtask test: {} passed, {} failed, {skipped} skipped",
        tests.passed.saturating_sub(skipped),
        tests.failed
    );
    if !status.success() || tests.failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// The test binary cargo's `Running tests/map.rs (target/...)` line
/// starts (`tests/map.rs`), or `unittests src/lib.rs` and such.
fn running(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("Running ")?;
    Some(rest.split(" (").next().unwrap_or(rest).to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_binary_cargo_runs() {
        let line = "     Running tests/map.rs (target/release/deps/map-0123abcd)";
        assert_eq!(super::running(line).as_deref(), Some("tests/map.rs"));
        let unit = "     Running unittests src/lib.rs (target/release/deps/pagewatch-0123abcd)";
        assert_eq!(
            super::running(unit).as_deref(),
            Some("unittests src/lib.rs")
        );
        assert_eq!(super::running("running 6 tests"), None);
    }
}
