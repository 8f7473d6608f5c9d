//! Test VMs: QEMU guests booted through virtme-ng (`vng`) on test kernels
//! fetched as Debian packages, for what the host cannot show (a
//! virtio-balloon, two NUMA nodes, fentry, other kernel versions).
//!
//! `setup` installs QEMU and virtme-ng and fetches the kernels under
//! `target/vm/`; `guest` boots one guest and streams its console; `qmp`
//! talks to QEMU's monitor; `run`, `suite` and `balloon` are the
//! `cargo xtask run --vm`, `test --vm` and `balloon` commands; `selftests`
//! builds the kernel's mm selftests per test kernel. The recipe
//! and its pitfalls are written down in docs/toolchain.md.

pub mod balloon;
pub mod guest;
pub mod harness;
pub mod kernels;
pub mod qmp;
pub mod run;
pub mod selftests;
pub mod setup;
pub mod suite;

use std::{
    fs::{File, TryLockError},
    path::PathBuf,
};

use anyhow::Context as _;

use crate::cmd;

/// Everything the VM commands keep: `target/vm` (git-ignored).
pub fn vm_dir() -> PathBuf {
    cmd::release_dir()
        .parent()
        .expect("release dir has a parent")
        .join("vm")
}

/// Takes `target/vm/lock` for as long as the returned file lives: two
/// guests at once would share the results directories and QMP sockets
/// (and on 2 cores, TCG guests slow each other past their timeouts).
pub fn exclusive() -> anyhow::Result<File> {
    let dir = vm_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            cmd::step(&format!(
                "another guest is running (it holds {}): waiting for it to end",
                path.display()
            ));
            file.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    Ok(file)
}

/// The virtme-ng venv's `bin`, which goes first on PATH (vng execs virtme-run).
pub fn venv_bin() -> PathBuf {
    vm_dir().join("venv/bin")
}

/// The QMP socket `run --vm --balloon` exposes and `cargo xtask balloon` drives.
pub fn default_qmp_socket() -> PathBuf {
    vm_dir().join("qmp.sock")
}

/// Parses a size such as `2G`, `1536M`, `1073741824` into bytes.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let mult = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => anyhow::bail!("{s:?}: unknown size unit (use K, M, G or T)"),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a size such as 2G or 1536M"))?;
    n.checked_mul(mult)
        .ok_or_else(|| anyhow::anyhow!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_sizes_with_units() {
        assert_eq!(super::parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(super::parse_size("1536M").unwrap(), 1536 << 20);
        assert_eq!(super::parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(super::parse_size("4096").unwrap(), 4096);
        assert!(super::parse_size("2X").is_err());
        assert!(super::parse_size("G").is_err());
    }
}
