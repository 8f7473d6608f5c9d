//! `cargo xtask run --vm`: build pagewatch, boot one guest (the newest
//! kernel of the default set unless `--kernel`), run `pagewatch ARGS` in it
//! and stream its output. `--balloon` adds a virtio-balloon and a QMP
//! socket that `cargo xtask balloon SIZE` drives while it runs.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::{default_qmp_socket, guest, kernels, parse_size, setup};
use crate::{build, cmd};

/// The `--vm` options of `cargo xtask run`.
#[derive(Debug, Args)]
pub struct VmOptions {
    /// Run pagewatch in a QEMU guest instead of on this machine.
    #[arg(long)]
    pub vm: bool,
    /// Guest kernel: a vmlinuz, a kernel build tree, or a fetched release
    /// prefix such as 6.1 (default: the newest fetched).
    #[arg(long, value_name = "K", requires = "vm")]
    pub kernel: Option<String>,
    /// Guest memory.
    #[arg(long, default_value = "2G", requires = "vm")]
    pub memory: String,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, requires = "vm")]
    pub cpus: u32,
    /// Two NUMA nodes (memory and CPUs split evenly).
    #[arg(long, requires = "vm")]
    pub numa: bool,
    /// A virtio-balloon, driven through QMP (`cargo xtask balloon SIZE`).
    #[arg(long, requires = "vm")]
    pub balloon: bool,
    /// Guest time limit in seconds (the guest is killed after it).
    #[arg(long, default_value_t = 900, requires = "vm")]
    pub timeout: u64,
    /// Show the guest's boot console.
    #[arg(long, requires = "vm")]
    pub verbose_boot: bool,
}

pub fn run(opts: VmOptions, args: Vec<String>) -> anyhow::Result<()> {
    setup::ensure(opts.kernel.as_deref())?;
    let _lock = super::exclusive()?;
    build::run()?;
    let kernel = match &opts.kernel {
        Some(k) => kernels::resolve(k)?,
        None => kernels::default_set()?.pop().ok_or_else(|| {
            anyhow::anyhow!("the default kernel set is empty: run `cargo xtask vm-setup`")
        })?,
    };
    let memory = parse_size(&opts.memory)?;
    if memory < 256 << 20 {
        bail!("--memory {}: the guest needs at least 256M", opts.memory);
    }
    let accel = guest::accelerator(opts.kernel.as_deref())?;
    let mut g = guest::Guest::new(kernel, memory >> 20, opts.cpus, accel);
    g.numa = opts.numa;
    g.balloon = opts.balloon;
    g.timeout = Duration::from_secs(opts.timeout);
    g.verbose = opts.verbose_boot;
    if opts.balloon {
        g.qmp = Some(default_qmp_socket());
    }
    let args = if args.is_empty() {
        // No Ctrl-C reaches the guest program: bound the default run.
        vec!["top".into(), "--duration".into(), "10s".into()]
    } else {
        args
    };
    let bin = cmd::release_dir().join("pagewatch");
    let script = std::iter::once(bin.display().to_string())
        .chain(args)
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    cmd::step(&format!(
        "booting {} under {accel} ({} MiB, {} CPUs{}{}) to run: {script}",
        g.kernel.name,
        g.memory_mib,
        g.cpus,
        if g.numa { ", 2 NUMA nodes" } else { "" },
        if g.balloon { ", balloon" } else { "" },
    ));
    if opts.balloon {
        eprintln!(
            "    QMP socket: {} -- in another terminal: `cargo xtask balloon 1G` (guest size), \
             `cargo xtask balloon` (query)",
            default_qmp_socket().display()
        );
    }
    let out = g.boot(&script, &mut |l| println!("{l}"))?;
    match out.code {
        Some(0) => Ok(()),
        Some(c) => bail!(
            "the guest command exited {c} after {:.0?}{}",
            out.elapsed,
            if c == guest::EXIT_BOOT_FAILED {
                " (255: the boot failed; rerun, or add --verbose-boot to see the console)"
            } else {
                ""
            }
        ),
        None => bail!("the guest timed out after {} s", opts.timeout),
    }
}

/// Quotes `s` for the guest's shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quotes_for_the_guest_shell() {
        assert_eq!(super::shell_quote("--pid=4"), "--pid=4");
        assert_eq!(super::shell_quote("a b"), "'a b'");
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }
}
