//! Command-line interface: one module per subcommand, each a clap struct
//! validated into a config before any work starts; shared value parsers.

mod record;
mod report;
mod session;
mod snapshot;
mod top;

use std::time::Duration;

use clap::{Parser, Subcommand};

/// pagewatch: which process a page-state change happened to, and why.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    /// Options of `top`, which runs when no subcommand is given.
    #[command(flatten)]
    top: top::TopArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Live per-process page faults and system reclaim, per interval (the default).
    Top(top::TopArgs),
    /// Page census of processes and of the whole system from pagemap and kpageflags.
    Snapshot(snapshot::SnapshotArgs),
    /// Record events, snapshots and attributed transitions to a file (like perf record).
    Record(record::RecordArgs),
    /// Show a recording as a timeline and summary, JSON lines, or a Perfetto trace.
    Report(report::ReportArgs),
}

/// Runs the chosen subcommand; its exit status (`record -- CMD` exits
/// with the command's).
pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let done = match cli.command {
        None => top::run(cli.top),
        Some(Command::Top(args)) => top::run(args),
        Some(Command::Snapshot(args)) => snapshot::run(args),
        Some(Command::Record(args)) => return record::run(args),
        Some(Command::Report(args)) => report::run(args),
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

/// Runs `f` to completion on a single-threaded tokio runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(f)
}

/// Parses a positive duration such as `1s`, `250ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 1s or 500ms ({e})"))?;
    if d.is_zero() {
        return Err(format!("{text:?}: the duration must be greater than zero"));
    }
    Ok(d)
}

/// Parses a byte size such as `4M`, `256K`, `1MiB` or `65536`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 4M or 256K"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown size unit {unit:?} (use K, M or G)"
            ));
        }
    };
    num.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_or_explain() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("4X").unwrap_err().contains("unit"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
