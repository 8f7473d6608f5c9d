//! Command-line interface: one module per subcommand, each a clap struct
//! validated into a config before any work starts; shared value parsers.

mod duration;
mod expect;
mod generate;
mod map;
mod record;
mod report;
mod session;
mod snapshot;
mod top;
mod top_screen;

use clap::{Parser, Subcommand};
pub use duration::parse_duration;

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
    /// Physical memory per pageblock: free, huge, compactable or blocked, and by what.
    Map(map::MapArgs),
    /// Record events, snapshots and attributed transitions to a file (like perf record).
    Record(record::RecordArgs),
    /// Show a recording as a timeline and summary, JSON lines, or a Perfetto trace.
    Report(report::ReportArgs),
    /// Print the JSON Schema of the JSON lines `top --json` or `report --format json` write.
    Schema(generate::SchemaArgs),
    /// Write man pages or shell completions generated from these definitions.
    #[command(hide = true)]
    Generate(generate::GenerateArgs),
    /// Compare recordings: `A B`, or several runs per side `A1 A2 -- B1 B2`.
    Diff(report::compare::DiffArgs),
}

/// Runs the chosen subcommand; its exit status (`record -- CMD` exits
/// with the command's).
pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let done = match cli.command {
        None => top::run(cli.top),
        Some(Command::Top(args)) => top::run(args),
        Some(Command::Snapshot(args)) => snapshot::run(args),
        Some(Command::Map(args)) => map::run(args),
        Some(Command::Record(args)) => return record::run(args),
        Some(Command::Report(args)) => return report::run(args),
        Some(Command::Diff(args)) => report::compare::diff(args),
        Some(Command::Schema(args)) => generate::schema(args),
        Some(Command::Generate(args)) => generate::generate(args),
    };
    done.map(|()| std::process::ExitCode::SUCCESS)
}

/// Where to read the kernel's files and how many threads read kpageflags
/// (hidden options of `snapshot` and `map`).
#[derive(Debug, clap::Args)]
pub struct SourceArgs {
    /// procfs to read (a captured tree or a guest's).
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc_root: std::path::PathBuf,
    /// sysfs to read.
    #[arg(long, default_value = "/sys", hide = true)]
    pub sys_root: std::path::PathBuf,
    /// Threads reading /proc/kpageflags for the whole system (default: online CPUs).
    #[arg(long, hide = true)]
    pub threads: Option<usize>,
}

impl SourceArgs {
    /// The root to read and the reader threads.
    pub fn split(self) -> (pagewatch::snapshot::ProcRoot, usize) {
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let root = pagewatch::snapshot::ProcRoot {
            proc: self.proc_root,
            sys: self.sys_root,
        };
        (root, threads)
    }
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
    fn sizes_parse_or_explain() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("256KiB"), Ok(256 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("4X").unwrap_err().contains("unit"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
    }
}
