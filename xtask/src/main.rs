//! `cargo xtask`: the entry point for people and CI. One subcommand per
//! module: setup (install what is missing), build, run, test, bench, fuzz, docs, and the
//! test-VM commands (vm-setup, balloon; `run --vm`, `test --vm`).

mod bench;
mod bench_scale;
mod bench_selftests;
mod bench_snapshot;
mod build;
mod cmd;
mod dist;
mod docs;
mod fuzz;
mod libtest;
mod run;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Build, run, test and benchmark pagewatch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what is missing on this Debian machine (idempotent).
    Setup,
    /// Set up, then build the eBPF object and pagewatch (release).
    Build,
    /// Build, then run pagewatch as root with ARGS (default: `top`).
    Run(run::Options),
    /// Build, then run unit tests, lints and the integration suite.
    Test(test::Options),
    /// Build, then run the benchmarks and print Markdown for BENCHMARKS.md.
    Bench(bench::Options),
    /// Build a statically linked pagewatch into a tarball (target/dist).
    Dist(dist::Options),
    /// Run the fuzz targets in fuzz/ for a bounded time each (not part of test).
    Fuzz(fuzz::Options),
    /// Build, then write man pages, shell completions and JSON Schemas into target/docs.
    Docs(docs::Options),
    /// Install QEMU and virtme-ng and fetch the test kernels (idempotent).
    VmSetup(vm::setup::Options),
    /// Set (or query) the guest size of a `run --vm --balloon` guest.
    Balloon(vm::balloon::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build => build::run(),
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::run(opts),
        Command::Bench(opts) => bench::run(opts),
        Command::Fuzz(opts) => fuzz::run(opts),
        Command::Docs(opts) => docs::run(opts),
        Command::Dist(opts) => dist::run(opts),
        Command::VmSetup(opts) => vm::setup::run(opts),
        Command::Balloon(opts) => vm::balloon::run(opts),
    }
}
