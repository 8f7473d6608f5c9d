//! Which kernels the guests boot: the default set fetched by `vm-setup`
//! (the oldest supported, 6.1 from bookworm; 6.12 from bookworm-backports;
//! the newest 7.x from trixie-backports), or one named by `--kernel`: a
//! vmlinuz, a kernel build tree, or a release prefix of a fetched kernel
//! (`--kernel 6.12`).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::vm_dir;

/// A Debian suite and the flavour meta package whose dependency names the
/// kernel to fetch from it.
pub struct Source {
    pub suite: &'static str,
    pub meta: &'static str,
}

/// The default set, oldest first.
pub const DEFAULT_SET: &[Source] = &[
    Source {
        suite: "bookworm",
        meta: "linux-image-amd64",
    },
    Source {
        suite: "bookworm-backports",
        meta: "linux-image-amd64",
    },
    Source {
        suite: "trixie-backports",
        meta: "linux-image-amd64",
    },
];

/// One bootable kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Short name for summaries: the release (`6.12.95+deb12-amd64`) or the path.
    pub name: String,
    /// What `vng -r` gets: a vmlinuz file or a kernel build tree.
    pub image: PathBuf,
}

impl Kernel {
    /// The name as a file name: characters other than ASCII letters,
    /// digits and `.-+_` become `_`, and leading `.` and `_` go
    /// (`../linux/vmlinux` gives `linux_vmlinux`).
    pub fn slug(&self) -> String {
        let slug: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-+_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        slug.trim_start_matches(['.', '_']).to_string()
    }
}

/// Where the fetched kernels are unpacked, one directory per release.
pub fn kernels_dir() -> PathBuf {
    vm_dir().join("kernels")
}

/// The manifest `vm-setup` writes: the default set's releases, one a line.
pub fn manifest() -> PathBuf {
    kernels_dir().join("default-set")
}

/// The marker `vm-setup` leaves once a release is unpacked and depmod'ed.
pub fn ready_marker(release: &str) -> PathBuf {
    kernels_dir().join(release).join(".pagewatch-ready")
}

/// The vmlinuz inside an unpacked Debian kernel: `boot/vmlinuz-KV` up to
/// 6.x, `usr/lib/modules/KV/vmlinuz` from 7.x.
pub fn vmlinuz_in(root: &Path, release: &str) -> Option<PathBuf> {
    [
        root.join(format!("boot/vmlinuz-{release}")),
        root.join(format!("usr/lib/modules/{release}/vmlinuz")),
        root.join(format!("lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// The default set as fetched by `vm-setup`.
pub fn default_set() -> anyhow::Result<Vec<Kernel>> {
    let text = std::fs::read_to_string(manifest()).with_context(|| {
        format!(
            "cannot read {}: run `cargo xtask vm-setup` first",
            manifest().display()
        )
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|release| fetched(release.trim()))
        .collect()
}

fn fetched(release: &str) -> anyhow::Result<Kernel> {
    let root = kernels_dir().join(release);
    if !ready_marker(release).exists() {
        bail!(
            "kernel {release} is not fully unpacked under {}: run `cargo xtask vm-setup`",
            root.display()
        );
    }
    let image = vmlinuz_in(&root, release)
        .with_context(|| format!("no vmlinuz for {release} under {}", root.display()))?;
    Ok(Kernel {
        name: release.to_string(),
        image,
    })
}

/// `--kernel K`: a path to a vmlinuz or a kernel build tree, else a
/// release prefix of a fetched kernel (`6.1`, `7.3.4`).
pub fn resolve(spec: &str) -> anyhow::Result<Kernel> {
    let path = Path::new(spec);
    if path.exists() {
        let image = path
            .canonicalize()
            .with_context(|| format!("cannot resolve {spec}"))?;
        if image.is_dir() {
            let bz = image.join("arch/x86/boot/bzImage");
            if !image.join(".config").is_file() || !bz.is_file() {
                bail!(
                    "{spec} is a directory but not a built kernel tree (needs .config and arch/x86/boot/bzImage)"
                );
            }
        }
        return Ok(Kernel {
            name: spec.to_string(),
            image,
        });
    }
    let mut known: Vec<String> = std::fs::read_dir(kernels_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    let matching: Vec<&String> = known
        .iter()
        .filter(|r| {
            r.strip_prefix(spec)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '-', '+']))
        })
        .collect();
    match matching.as_slice() {
        [one] => fetched(one),
        [] => bail!(
            "--kernel {spec}: no such file, and no fetched kernel release starts with it (fetched: {})",
            if known.is_empty() {
                "none; run `cargo xtask vm-setup`".to_string()
            } else {
                known.join(", ")
            }
        ),
        many => bail!(
            "--kernel {spec} is ambiguous: {}",
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The kernels a command boots: `--kernel` if given, else the default set.
pub fn selected(spec: Option<&str>) -> anyhow::Result<Vec<Kernel>> {
    match spec {
        Some(s) => Ok(vec![resolve(s)?]),
        None => default_set(),
    }
}
