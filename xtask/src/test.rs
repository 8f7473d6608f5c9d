//! `cargo xtask test`: build, check formatting and lints, run the unit
//! tests and the integration suite against the running kernel, one test at
//! a time (several change global kernel state), then (unless
//! `--host-only`) the same suite and the VM scenarios in QEMU guests on
//! each test kernel. Tests that cannot run here log a reason to a skip
//! file; the closing lines count them as skipped, not passed.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{build, cmd};

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
    let mut child = cmd::cargo()
        .args(["test", "--release", "--", "--test-threads=1"])
        .args(&opts.args)
        .env("PAGEWATCH_BIN", cmd::release_dir().join("pagewatch"))
        .env("PAGEWATCH_SKIP_LOG", &skip_log)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skipped = skips.lines().count() as u64;
    if skipped > 0 {
        eprintln!("\nSkipped tests (they could not run here, and did not pass):");
        for line in skips.lines() {
            let (name, reason) = line.split_once('\t').unwrap_or((line, ""));
            eprintln!("  SKIPPED {name}: {reason}");
        }
    }
    // Skipped tests return early and so count as passed in cargo's tally.
    println!(
        "\nxtask test: {} passed, {failed} failed, {skipped} skipped",
        passed.saturating_sub(skipped)
    );
    if !status.success() || failed > 0 {
        bail!("tests failed");
    }
    Ok(())
}

/// Reads cargo's `test result: ok. 6 passed; 0 failed; ...` line.
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    // Each `;`-separated part ends in "<count> <word>".
    let num = |word: &str| {
        rest.split(';').find_map(|part| {
            let mut w = part.split_whitespace().rev();
            let (name, count) = (w.next()?, w.next()?);
            (name == word).then(|| count.parse().ok())?
        })
    };
    Some((num("passed")?, num("failed")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_cargo_test_result_lines() {
        let line = "test result: ok. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.16s";
        assert_eq!(super::parse_result(line), Some((6, 1)));
        assert_eq!(super::parse_result("running 6 tests"), None);
    }
}
