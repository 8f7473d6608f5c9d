//! Running commands from the xtask: each is printed before it runs, and a
//! failure names the command.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// Prints a step heading.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs `cmd`, inheriting stdio; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("    $ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed with {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and says whether it succeeded (probes).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` and returns its stdout; fails with the command line.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed with {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `cmd` with stdout and stderr on one pipe (so their lines arrive
/// in order and nothing needs a terminal), hands each line to `on_line` as
/// it arrives (invalid UTF-8 replaced), and returns its exit status.
pub fn lines(
    mut cmd: Command,
    on_line: &mut dyn FnMut(&str),
) -> anyhow::Result<std::process::ExitStatus> {
    use std::io::BufRead as _;
    let (reader, writer) = std::io::pipe().context("cannot create a pipe")?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().context("cannot clone a pipe")?)
        .stderr(writer);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", describe(&cmd)))?;
    // The Command holds the pipe's write ends: close them so the read end
    // sees EOF once the command and its children are gone.
    let name = describe(&cmd);
    drop(cmd);
    let mut reader = std::io::BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading the output of {name}"))?;
        if n == 0 {
            break;
        }
        on_line(String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']));
    }
    child.wait().with_context(|| format!("waiting for {name}"))
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo` as invoked by the user (CARGO), run in the workspace.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

/// Where release binaries land.
pub fn release_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("release")
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
