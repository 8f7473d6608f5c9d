//! `cargo xtask setup`: installs what building and running pagewatch needs
//! on a fresh Debian machine, idempotently, saying what it does. With
//! everything present it only probes, in a few seconds.
//!
//! The recipe (docs/toolchain.md says why each step is there): Debian's
//! LLVM 22 development packages, bpf-linker 0.13 built against them, the
//! nightly toolchain with rust-src (for `-Z build-std=core`), tracefs, and
//! tmux for the tests.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::cmd::{self, step};

/// Debian packages bpf-linker's LLVM 22 build links against, and tmux,
/// which the integration test of `top`'s live screen drives.
const APT_PACKAGES: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "tmux"];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<()> {
    apt_install(APT_PACKAGES)?;
    nightly()?;
    bpf_linker()?;
    tracefs()?;
    step("setup complete");
    Ok(())
}

/// Whether every package in `pkgs` is installed.
fn apt_missing(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs the Debian packages in `pkgs` that are missing.
pub fn apt_install(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing = apt_missing(pkgs);
    if missing.is_empty() {
        step(&format!("apt packages present: {}", pkgs.join(" ")));
        return Ok(());
    }
    step(&format!("installing apt packages: {}", missing.join(" ")));
    if !cmd::is_root() {
        bail!(
            "installing {} needs root; run as root or install them with apt-get",
            missing.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn nightly() -> anyhow::Result<()> {
    let installed = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !installed.lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (builds the eBPF crate)");
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        step("nightly toolchain with rust-src present");
        return Ok(());
    }
    step("adding rust-src to the nightly toolchain");
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = &version
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        step(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about 3 minutes)"
    ));
    // LLVM_PREFIX is what bpf-linker's build script reads; without it it
    // finds /usr/bin/llvm-config (LLVM 14) and fails to link -lLLVM.
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
}

fn tracefs() -> anyhow::Result<()> {
    let root = Path::new("/sys/kernel/tracing");
    if root.join("events").is_dir() {
        step("tracefs mounted on /sys/kernel/tracing");
        return Ok(());
    }
    step("mounting tracefs on /sys/kernel/tracing");
    if !cmd::is_root() {
        bail!("mounting tracefs needs root");
    }
    cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}
