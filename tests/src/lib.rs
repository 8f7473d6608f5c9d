//! Shared helpers for pagewatch's integration tests: where the pagewatch
//! binary is (workloads come from `env!("CARGO_BIN_EXE_<name>")`), how a test skips loudly, and small /proc readers used as oracles.
//!
//! Tests run against the real kernel as root. A test that cannot run here
//! calls [`skip`], which prints the reason and appends it to the file named
//! by `PAGEWATCH_SKIP_LOG` (set by `cargo xtask test`), so the run reports
//! it as skipped rather than passed.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
};

/// The pagewatch binary under test: `$PAGEWATCH_BIN`, else the release build.
pub fn pagewatch_bin() -> PathBuf {
    std::env::var_os("PAGEWATCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("release/pagewatch"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Whether we run as root (uid 0).
pub fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
}

/// Report a test as skipped: printed loudly and logged for the run summary.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("PAGEWATCH_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{test}\t{reason}");
    }
}

/// Skip (returning true) unless running as root.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        false
    } else {
        skip(test, "needs root (BPF, /proc/kpageflags)");
        true
    }
}

/// Read one `/proc/vmstat` counter.
pub fn vmstat(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/vmstat").expect("read /proc/vmstat");
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// Run pagewatch with `args` to completion, returning (status, stdout, stderr).
pub fn run_pagewatch(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(pagewatch_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn pagewatch");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
