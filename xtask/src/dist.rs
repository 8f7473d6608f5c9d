//! `cargo xtask dist`: a statically linked pagewatch (the eBPF object is
//! embedded in it) in a tarball, for guests whose root filesystem is not the
//! host's. musl where its Rust target is installed; else glibc linked
//! statically (`+crt-static`, needs libc6-dev's libc.a), which pagewatch
//! allows because it calls nothing of glibc's that loads shared objects at
//! run time (no NSS lookups, no iconv, no dlopen). The binary is checked:
//! no program interpreter (not dynamically linked) and `--version` runs.
//! docs/dist.md says how to copy it into a guest.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::{cmd, setup};

const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";

#[derive(Debug, Args)]
pub struct Options {
    /// Directory for the tarball (default: target/dist).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// The Rust target to link statically for: musl if rustup has it.
fn target() -> &'static str {
    let installed = cmd::output(Command::new("rustup").args(["target", "list", "--installed"]))
        .unwrap_or_default();
    if installed.lines().any(|l| l.trim() == MUSL) {
        MUSL
    } else {
        GNU
    }
}

/// Builds the static binary and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    setup::run()?;
    let target = target();
    cmd::step(&format!(
        "building a static pagewatch for {target}{}",
        if target == GNU {
            " (glibc +crt-static: the musl target is not installed)"
        } else {
            ""
        }
    ));
    // A target of its own (target/<triple>/release): the RUSTFLAGS differ
    // from the normal build, which would otherwise be rebuilt each time.
    cmd::run(
        cmd::cargo()
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .args(["build", "--release", "-p", "pagewatch", "--target", target]),
    )?;
    let bin = static_bin(target);
    check_static(&bin)?;
    Ok(bin)
}

/// Where [`build`] puts the static binary for `target`.
fn static_bin(target: &str) -> PathBuf {
    cmd::release_dir()
        .with_file_name(target)
        .join("release/pagewatch")
}

/// Fails unless `bin` has no PT_INTERP program header (ELF64 little
/// endian), i.e. the kernel runs it without a dynamic loader, and runs.
fn check_static(bin: &Path) -> anyhow::Result<()> {
    let elf = std::fs::read(bin).with_context(|| format!("read {}", bin.display()))?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        bail!("{} is not a 64-bit ELF file", bin.display());
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        bail!("{}: truncated ELF header", bin.display());
    };
    const PT_INTERP: u32 = 3;
    for i in 0..usize::from(phnum) {
        let at = usize::try_from(phoff)? + i * usize::from(phentsize);
        let Some(kind) = elf.get(at..at + 4) else {
            bail!("{}: truncated program headers", bin.display());
        };
        if u32::from_le_bytes(kind.try_into().expect("4 bytes")) == PT_INTERP {
            bail!(
                "{} has a program interpreter: it is dynamically linked",
                bin.display()
            );
        }
    }
    let version = cmd::output(Command::new(bin).arg("--version"))?;
    cmd::step(&format!(
        "{} is static (no program interpreter) and runs: {}",
        bin.display(),
        version.trim()
    ));
    Ok(())
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let bin = build()?;
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("pagewatch-{version}-x86_64-linux-static");
    let out = opts
        .out
        .unwrap_or_else(|| cmd::release_dir().with_file_name("dist"));
    let stage = out.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).with_context(|| format!("create {}", stage.display()))?;
    let ws = cmd::workspace();
    for (from, to) in [
        (bin.clone(), "pagewatch"),
        (ws.join("README.md"), "README.md"),
        (ws.join("docs/dist.md"), "dist.md"),
    ] {
        std::fs::copy(&from, stage.join(to))
            .with_context(|| format!("copy {} to {}", from.display(), stage.display()))?;
    }
    // The man page and completions, from `pagewatch generate`.
    extras(&bin, &stage).context("the man page and completions for the tarball")?;
    let tarball = out.join(format!("{name}.tar.gz"));
    cmd::run(
        Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&out)
            .arg(&name),
    )?;
    std::fs::remove_dir_all(&stage).with_context(|| format!("remove {}", stage.display()))?;
    println!("{}", tarball.display());
    Ok(())
}

/// `pagewatch generate man DIR` (pagewatch.1 and one page per subcommand)
/// into `man/`, and `pagewatch generate completions SHELL DIR` into
/// `completions/`, in the tarball's directory.
fn extras(bin: &Path, stage: &Path) -> anyhow::Result<()> {
    cmd::run(
        Command::new(bin)
            .args(["generate", "man"])
            .arg(stage.join("man")),
    )?;
    for shell in ["bash", "zsh", "fish"] {
        cmd::run(
            Command::new(bin)
                .args(["generate", "completions", shell])
                .arg(stage.join("completions")),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_refused() {
        // /bin/sh is dynamically linked on Debian (PT_INTERP ld-linux).
        let e = check_static(Path::new("/bin/sh")).unwrap_err();
        assert!(e.to_string().contains("dynamically linked"), "{e}");
        let e = check_static(Path::new("/etc/hostname")).unwrap_err();
        assert!(e.to_string().contains("not a 64-bit ELF"), "{e}");
    }
}
