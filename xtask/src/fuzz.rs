//! `cargo xtask fuzz`: runs the cargo-fuzz targets in fuzz/ (the recording
//! reader and the tracepoint-format parser) for a bounded time each,
//! installing cargo-fuzz first if it is missing. Not part of `test`.

use std::process::Command;

use clap::Args;

use crate::{build, cmd};

/// Each target and the captured inputs that seed its corpus.
const TARGETS: [(&str, &str); 2] = [
    ("record_reader", "../pagewatch/test_data/record"),
    ("tracepoint_format", "../pagewatch/test_data/tracefs"),
];

#[derive(Debug, Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
    /// Only this target (record_reader or tracepoint_format).
    #[arg(long)]
    target: Option<String>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    build::run()?;
    if !cmd::succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        cmd::step("installing cargo-fuzz");
        cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = cmd::workspace().join("fuzz");
    for (target, seeds) in TARGETS {
        if opts.target.as_deref().is_some_and(|t| t != target) {
            continue;
        }
        cmd::step(&format!("fuzzing {target} for {} s", opts.seconds));
        let corpus = format!("corpus/{target}");
        std::fs::create_dir_all(fuzz_dir.join(&corpus))?;
        cmd::run(
            Command::new("cargo")
                .current_dir(&fuzz_dir)
                .args(["+nightly", "fuzz", "run", target, &corpus, seeds, "--"])
                .arg(format!("-max_total_time={}", opts.seconds)),
        )?;
    }
    Ok(())
}
