//! `cargo xtask bench --only selftests`: the `selftests` VM scenario run on
//! this host, with the mm selftests built from the fetched test kernel
//! whose version is nearest the host's (Debian has no source package of
//! the host's own), and its Markdown table (pages per transition kind,
//! % unexplained, pagewatch against the kernel's counters, slowdown under
//! `record`) as the section. In the guests, `cargo xtask test --vm
//! --scenario selftests` prints the same table per kernel.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{
    cmd,
    vm::{kernels, selftests, setup},
};

/// (major, minor) of a release such as `6.12.95+deb12-amd64`.
fn major_minor(release: &str) -> Option<(i64, i64)> {
    let mut parts = release.split(['.', '-', '+']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// How far apart two (major, minor) are, as major x 20 + minor (Linux has
/// had at most 20 minors per major): the host's 6.18 is 5 from 7.3 and 6
/// from 6.12.
fn distance(a: (i64, i64), b: (i64, i64)) -> i64 {
    let (a, b) = (a.0 * 20 + a.1, b.0 * 20 + b.1);
    (a - b).abs()
}

pub fn run(dir: &Path) -> anyhow::Result<String> {
    setup::ensure(None)?;
    let set = kernels::default_set()?;
    selftests::ensure(&set)?;
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("cannot read /proc/sys/kernel/osrelease")?;
    let host = host.trim();
    let here = major_minor(host).with_context(|| format!("cannot read X.Y from {host:?}"))?;
    let nearest = set
        .iter()
        .filter_map(|k| Some((distance(major_minor(&k.name)?, here), k)))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
        .context("no fetched kernel with a version")?;
    cmd::step(&format!(
        "mm selftests on the host ({host}) built from {}'s source, the nearest fetched version",
        nearest.name
    ));
    let out = Command::new(dir.join("pw-vm-scenario"))
        .arg("selftests")
        .env("PAGEWATCH_BIN", dir.join("pagewatch"))
        .env("PW_VM_SELFTESTS", selftests::dir(&nearest.name))
        .output()
        .context("cannot run pw-vm-scenario selftests")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        bail!("the selftests scenario failed on the host (its output is above)");
    }
    let rows: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .collect();
    Ok(format!(
        "## mm selftests under `pagewatch record` (host {host}, selftests from {})\n\n{}\n",
        nearest.name,
        rows.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_nearest_release() {
        let host = super::major_minor("6.18.44-fc-v1272").unwrap();
        let d = |r: &str| super::distance(super::major_minor(r).unwrap(), host);
        assert_eq!(d("7.3.4+deb13-amd64"), 5);
        assert_eq!(d("6.12.95+deb12-amd64"), 6);
        assert!(d("7.3.4+deb13-amd64") < d("6.1.0-50-amd64"));
    }
}
