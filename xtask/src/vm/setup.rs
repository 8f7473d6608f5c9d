//! `cargo xtask vm-setup`: installs what the test VMs need, idempotently,
//! saying each step: QEMU, busybox, kmod, udev and file from apt;
//! virtme-ng (pinned) in a venv under `target/vm/venv`; and the test
//! kernels as Debian packages fetched through a private APT config under
//! `target/vm/apt` (its own sources list, lists, cache and status: nothing
//! changes in /boot or /etc/apt), unpacked with `dpkg-deb -x` under
//! `target/vm/kernels/RELEASE/` and `depmod -b`'d; and their mm selftests
//! (see [`super::selftests`]). With everything present
//! it only checks, in well under a second.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use clap::Args;

use super::{
    guest,
    kernels::{self, DEFAULT_SET, Source},
    selftests, venv_bin, vm_dir,
};
use crate::{
    cmd::{self, step},
    setup,
};

/// Host packages: QEMU, the guest's busybox, depmod, udev (without it the
/// guest's console ports never appear and vng exits 255) and file (vng
/// reads the kernel release with it).
const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "udev",
    "file",
    "python3-venv",
];
const VIRTME_NG_VERSION: &str = "1.42";
const MIRROR: &str = "http://deb.debian.org/debian";

#[derive(Debug, Args)]
pub struct Options {
    /// Use this vmlinuz or kernel build tree instead of fetching the default set.
    #[arg(long, value_name = "PATH")]
    kernel: Option<String>,
    /// Refetch the package lists and the newest kernels of the default set.
    #[arg(long)]
    refresh: bool,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    host()?;
    match &opts.kernel {
        Some(spec) => {
            let k = kernels::resolve(spec)?;
            step(&format!("using kernel {}", k.image.display()));
        }
        None => {
            fetch_default_set(opts.refresh)?;
            selftests::ensure(&kernels::default_set()?)?;
        }
    }
    let accel = guest::accelerator(opts.kernel.as_deref())?;
    step(&format!("vm-setup complete; guests run under {accel}"));
    Ok(())
}

/// What `test --vm` and `run --vm` check (and install) before booting:
/// the host packages, virtme-ng and, unless the kernel named is a file or
/// tree of the user's, the default kernel set (`--kernel 6.12` names one of
/// it), so they work on a fresh machine without `vm-setup`.
pub fn ensure(kernel: Option<&str>) -> anyhow::Result<()> {
    host()?;
    if !kernel.is_some_and(|k| Path::new(k).exists()) {
        fetch_default_set(false)?;
    }
    Ok(())
}

/// Host packages and virtme-ng: what every VM command checks first.
fn host() -> anyhow::Result<()> {
    setup::apt_install(HOST_PACKAGES)?;
    virtme_ng()
}

fn virtme_ng() -> anyhow::Result<()> {
    let venv = vm_dir().join("venv");
    let pinned = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|py| {
            py.path()
                .join(format!(
                    "site-packages/virtme_ng-{VIRTME_NG_VERSION}.dist-info"
                ))
                .is_dir()
        });
    if pinned && venv_bin().join("vng").is_file() {
        step(&format!(
            "virtme-ng {VIRTME_NG_VERSION} present in {}",
            venv.display()
        ));
        return Ok(());
    }
    step(&format!(
        "installing virtme-ng {VIRTME_NG_VERSION} into {}",
        venv.display()
    ));
    std::fs::create_dir_all(vm_dir())
        .with_context(|| format!("cannot create {}", vm_dir().display()))?;
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(
        Command::new(venv_bin().join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )
}

fn fetch_default_set(refresh: bool) -> anyhow::Result<()> {
    if !refresh && let Ok(set) = kernels::default_set() {
        let names: Vec<_> = set.iter().map(|k| k.name.as_str()).collect();
        step(&format!(
            "test kernels present: {} (--refresh looks for newer ones)",
            names.join(", ")
        ));
        return Ok(());
    }
    let apt = PrivateApt::create()?;
    step(
        "updating the private package lists (bookworm, bookworm-backports, trixie, trixie-backports)",
    );
    cmd::run(apt.command().args(["update", "-q"]))?;
    let mut releases = Vec::new();
    for source in DEFAULT_SET {
        releases.push(fetch_one(&apt, source)?);
    }
    std::fs::write(kernels::manifest(), releases.join("\n") + "\n")
        .with_context(|| format!("cannot write {}", kernels::manifest().display()))?;
    step(&format!("test kernels ready: {}", releases.join(", ")));
    Ok(())
}

/// Fetches, unpacks and depmods the kernel `source`'s meta package points
/// at; returns its release.
fn fetch_one(apt: &PrivateApt, source: &Source) -> anyhow::Result<String> {
    let meta = apt.show(&format!("{}/{}", source.meta, source.suite))?;
    let image = depends(&meta)
        .into_iter()
        .find(|(name, _)| name.starts_with("linux-image-") && name != source.meta)
        .with_context(|| {
            format!(
                "{}/{} names no linux-image-RELEASE package",
                source.meta, source.suite
            )
        })?;
    let release = image.0.trim_start_matches("linux-image-").to_string();
    if kernels::ready_marker(&release).exists() {
        step(&format!("kernel {release} ({}) present", source.suite));
        return Ok(release);
    }
    // From 7.x linux-image-KV is an empty meta package: the files are in
    // linux-binary-KV, linux-modules-KV and linux-base-KV.
    let mut packages = vec![image.clone()];
    let image_meta = apt.show(&format!("{}={}", image.0, image.1))?;
    packages.extend(
        depends(&image_meta)
            .into_iter()
            .filter(|(name, _)| name.ends_with(&release)),
    );
    step(&format!(
        "fetching kernel {release} from {}: {}",
        source.suite,
        packages
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let debs = vm_dir().join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    cmd::run(
        apt.command()
            .arg("download")
            .args(packages.iter().map(|(n, v)| format!("{n}={v}")))
            .current_dir(&debs),
    )?;
    let root = kernels::kernels_dir().join(&release);
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove the partial {}", root.display()))?;
    }
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    for (name, _) in &packages {
        let deb = find_deb(&debs, name)?;
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        // The unpacked copy is what the guests boot; the .deb is not needed.
        let _ = std::fs::remove_file(&deb);
    }
    let base = if root.join("usr/lib/modules").join(&release).is_dir() {
        root.join("usr")
    } else {
        root.clone()
    };
    step(&format!(
        "depmod for {release} (else every boot spends ~15 s on it)"
    ));
    cmd::run(Command::new("depmod").arg("-b").arg(&base).arg(&release))?;
    kernels::vmlinuz_in(&root, &release)
        .with_context(|| format!("no vmlinuz in the unpacked {}", root.display()))?;
    std::fs::write(kernels::ready_marker(&release), "")
        .with_context(|| format!("cannot mark {} ready", root.display()))?;
    Ok(release)
}

pub(super) fn find_deb(dir: &Path, package: &str) -> anyhow::Result<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                dir.display()
            )
        })
}

/// The `Depends:` of an `apt-cache show` record as (name, exact version).
fn depends(record: &str) -> Vec<(String, String)> {
    record
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .unwrap_or_default()
        .split(',')
        .filter_map(|dep| {
            let dep = dep.split('|').next()?.trim();
            let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
            let version = rest
                .trim()
                .strip_prefix("(=")
                .and_then(|v| v.strip_suffix(')'))
                .map(|v| v.trim().to_string())
                .unwrap_or_default();
            Some((name.to_string(), version))
        })
        .collect()
}

/// An APT configuration of our own under `target/vm/apt`.
pub(super) struct PrivateApt {
    config: std::path::PathBuf,
}

impl PrivateApt {
    pub(super) fn create() -> anyhow::Result<Self> {
        let dir = vm_dir().join("apt");
        for sub in ["lists/partial", "cache/archives/partial", "preferences.d"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")
                .with_context(|| format!("cannot create {}", status.display()))?;
        }
        let sources: String = [
            "bookworm",
            "bookworm-backports",
            "trixie",
            "trixie-backports",
        ]
        .iter()
        .map(|s| format!("deb {MIRROR} {s} main\n"))
        .collect();
        let list = dir.join("sources.list");
        std::fs::write(&list, sources)
            .with_context(|| format!("cannot write {}", list.display()))?;
        let d = dir.display();
        let config = dir.join("apt.conf");
        std::fs::write(
            &config,
            format!(
                "Dir::State \"{d}\";\n\
                 Dir::State::Lists \"{d}/lists\";\n\
                 Dir::State::status \"{d}/status\";\n\
                 Dir::Cache \"{d}/cache\";\n\
                 Dir::Etc::SourceList \"{d}/sources.list\";\n\
                 Dir::Etc::SourceParts \"/nonexistent\";\n\
                 Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
                 APT::Architecture \"amd64\";\n\
                 APT::Sandbox::User \"root\";\n"
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        Ok(Self { config })
    }

    pub(super) fn command(&self) -> Command {
        let mut c = Command::new("apt-get");
        c.env("APT_CONFIG", &self.config);
        c
    }

    /// `apt-cache show PKG` (first record) in the private configuration.
    pub(super) fn show(&self, package: &str) -> anyhow::Result<String> {
        let out = cmd::output(
            Command::new("apt-cache")
                .args(["show", package])
                .env("APT_CONFIG", &self.config),
        )?;
        let first = out.split("\n\n").next().unwrap_or_default().to_string();
        if first.trim().is_empty() {
            bail!("apt-cache show {package} printed nothing");
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_exact_dependencies() {
        let rec = "Package: linux-image-7.3.4+deb13-amd64\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n";
        let deps = super::depends(rec);
        assert_eq!(deps[0], ("dracut".into(), String::new()));
        assert_eq!(
            deps[2],
            (
                "linux-binary-7.3.4+deb13-amd64".into(),
                "7.3.4-1~bpo13+1".into()
            )
        );
    }
}
