//! `cargo xtask run --vm`: build pagewatch, boot one guest (the newest
//! kernel of the default set unless `--kernel`), run `pagewatch ARGS` in it
//! and stream its output. `--balloon` adds a virtio-balloon and a QMP
//! socket that `cargo xtask balloon SIZE` drives while it runs.
//!
//! `--kernel A,B` runs the same ARGS in a guest of each kernel, one after
//! another. A `record -o FILE` in ARGS is written to the host (its
//! directory is shared with the guest read-write), as `STEM-KERNEL.EXT`
//! with several kernels, and the recordings are then compared with
//! `pagewatch diff` (the first kernel's against each other's).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

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
    /// prefix such as 6.1 (default: the newest fetched); several, comma
    /// separated, run one after another and compare their recordings.
    #[arg(long, value_name = "K[,K...]", requires = "vm")]
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
    let specs: Vec<&str> = opts
        .kernel
        .as_deref()
        .map(|k| k.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let output = record_output(&args);
    if specs.len() > 1 && output.is_none() {
        bail!(
            "--kernel {}: several kernels are compared through their recordings: \
             run `record -o FILE -- CMD` (each kernel's is written as FILE-KERNEL)",
            opts.kernel.as_deref().unwrap_or_default()
        );
    }
    // A path kernel needs no download; anything else the default set.
    let fetch = specs.iter().find(|k| !Path::new(k).exists()).copied();
    setup::ensure(fetch.or(specs.first().copied()))?;
    let _lock = super::exclusive()?;
    build::run()?;
    let kernels = if specs.is_empty() {
        vec![kernels::default_set()?.pop().ok_or_else(|| {
            anyhow::anyhow!("the default kernel set is empty: run `cargo xtask vm-setup`")
        })?]
    } else {
        specs
            .iter()
            .map(|k| kernels::resolve(k))
            .collect::<anyhow::Result<_>>()?
    };
    let memory = parse_size(&opts.memory)?;
    if memory < 256 << 20 {
        bail!("--memory {}: the guest needs at least 256M", opts.memory);
    }
    let accel = guest::accelerator(specs.first().copied())?;
    let args = if args.is_empty() {
        // No Ctrl-C reaches the guest program: bound the default run.
        vec!["top".into(), "--duration".into(), "10s".into()]
    } else {
        args
    };
    let mut recordings = Vec::new();
    for kernel in kernels {
        let mut args = args.clone();
        let mut g = guest::Guest::new(kernel, memory >> 20, opts.cpus, accel);
        if let Some((i, form)) = output {
            let slug = g.kernel.slug();
            let file = host_output(
                &args[i][form.len()..],
                (specs.len() > 1).then_some(slug.as_str()),
            )?;
            g.rwdirs = vec![file.parent().expect("an absolute file path").to_path_buf()];
            args[i] = format!("{form}{}", file.display());
            recordings.push(file);
        }
        g.numa = opts.numa;
        g.balloon = opts.balloon;
        g.timeout = Duration::from_secs(opts.timeout);
        g.verbose = opts.verbose_boot;
        if opts.balloon {
            g.qmp = Some(default_qmp_socket());
        }
        boot(&g, &args, opts.balloon, opts.timeout)?;
    }
    if recordings.len() > 1 {
        let bin = cmd::release_dir().join("pagewatch");
        for other in &recordings[1..] {
            cmd::step(&format!(
                "comparing {} with {}",
                recordings[0].display(),
                other.display()
            ));
            cmd::run(
                std::process::Command::new(&bin)
                    .arg("diff")
                    .arg(&recordings[0])
                    .arg(other),
            )?;
        }
    }
    Ok(())
}

/// Runs `pagewatch ARGS` in guest `g`; an error unless it exits 0.
fn boot(g: &guest::Guest, args: &[String], balloon: bool, timeout: u64) -> anyhow::Result<()> {
    let bin = cmd::release_dir().join("pagewatch");
    let script = std::iter::once(bin.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    cmd::step(&format!(
        "booting {} under {} ({} MiB, {} CPUs{}{}) to run: {script}",
        g.kernel.name,
        g.accel,
        g.memory_mib,
        g.cpus,
        if g.numa { ", 2 NUMA nodes" } else { "" },
        if g.balloon { ", balloon" } else { "" },
    ));
    if balloon {
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
            "the guest command on {} exited {c} after {:.0?}{}",
            g.kernel.name,
            out.elapsed,
            if c == guest::EXIT_BOOT_FAILED {
                " (255: the boot failed; rerun, or add --verbose-boot to see the console)"
            } else {
                ""
            }
        ),
        None => bail!("the guest on {} timed out after {timeout} s", g.kernel.name),
    }
}

/// Where `record`'s output file is in ARGS, if ARGS run `record`: the
/// index of the argument holding it and the option text before the file
/// in that argument (`""` for the FILE after `-o`/`--output`,
/// `"--output="` or `"-o"` for `--output=FILE` or `-oFILE`). Only
/// pagewatch's own options count: the recorded command's start at `--`.
fn record_output(args: &[String]) -> Option<(usize, &'static str)> {
    if args.first().map(String::as_str) != Some("record") {
        return None;
    }
    let own = args.iter().position(|a| a == "--").unwrap_or(args.len());
    (1..own).find_map(|i| match args[i].as_str() {
        "-o" | "--output" if i + 1 < own => Some((i + 1, "")),
        a if a.starts_with("--output=") => Some((i, "--output=")),
        a if a.starts_with("-o") && a.len() > 2 => Some((i, "-o")),
        _ => None,
    })
}

/// The host path (absolute, its directory created) for the recording
/// `file`, with `-KERNEL` before the extension when `kernel` (a
/// [`kernels::Kernel::slug`]) is given.
fn host_output(file: &str, kernel: Option<&str>) -> anyhow::Result<PathBuf> {
    let mut path = std::path::absolute(file)
        .map_err(|e| anyhow::anyhow!("record -o {file}: cannot make the path absolute: {e}"))?;
    if let Some(name) = kernel {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let file_name = match path.extension() {
            Some(ext) => format!("{stem}-{name}.{}", ext.to_string_lossy()),
            None => format!("{stem}-{name}"),
        };
        path.set_file_name(file_name);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    Ok(path)
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
    fn finds_records_output_and_names_it_per_kernel() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            super::record_output(&args("record -o r.pwrec -- true")),
            Some((2, ""))
        );
        assert_eq!(
            super::record_output(&args("record --all --output r -- x")),
            Some((3, ""))
        );
        assert_eq!(
            super::record_output(&args("record --output=r -- x")),
            Some((1, "--output="))
        );
        assert_eq!(
            super::record_output(&args("record -or -- x")),
            Some((1, "-o"))
        );
        // A file after -o that itself starts with -o is the whole argument.
        assert_eq!(
            super::record_output(&args("record -o -or -- x")),
            Some((2, ""))
        );
        // The recorded command's own -o is not pagewatch's.
        assert_eq!(super::record_output(&args("record --all -- cc -o x")), None);
        assert_eq!(super::record_output(&args("top -o x")), None);
        let dir = std::env::temp_dir().join(format!("pw-xtask-{}", std::process::id()));
        let file = dir.join("run.pwrec").display().to_string();
        let kernel = |name: &str| super::kernels::Kernel {
            name: name.into(),
            image: "/".into(),
        };
        let named = super::host_output(&file, Some(&kernel("7.3.4+deb13-amd64").slug())).unwrap();
        assert_eq!(named, dir.join("run-7.3.4+deb13-amd64.pwrec"));
        assert!(dir.is_dir(), "its directory is created");
        let path_kernel = kernel("../linux/arch/x86/boot/bzImage").slug();
        let named = super::host_output(&file, Some(&path_kernel)).unwrap();
        assert_eq!(named, dir.join("run-linux_arch_x86_boot_bzImage.pwrec"));
        assert_eq!(
            super::host_output(&file, None).unwrap(),
            dir.join("run.pwrec")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quotes_for_the_guest_shell() {
        assert_eq!(super::shell_quote("--pid=4"), "--pid=4");
        assert_eq!(super::shell_quote("a b"), "'a b'");
        assert_eq!(super::shell_quote("it's"), r"'it'\''s'");
        assert_eq!(super::shell_quote(""), "''");
    }
}
