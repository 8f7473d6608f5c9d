//! The kernel's own mm selftests, built once per fetched test kernel for
//! the `selftests` VM scenario: Debian's `linux-source-X.Y` package of the
//! kernel's exact version is fetched through the private APT configuration
//! (as the kernels are), only the parts of the tree `make headers` and the
//! selftests' Makefile read are unpacked, and the binaries are built with
//! the host's gcc (the guests share the host's root filesystem) into
//! `target/vm/selftests/RELEASE/`. The source tree and the .deb are removed
//! afterwards. A selftest that does not build on a version leaves
//! `NAME.skip` with the compiler's reason, which the scenario reports.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    kernels::{self, Kernel},
    run::shell_quote,
    setup::{PrivateApt, find_deb},
    vm_dir,
};
use crate::{
    cmd::{self, step},
    setup,
};

/// Host packages the build needs: the compiler, make, libnuma for
/// `migration` and `ksm_tests`, xz for the source tarball.
const BUILD_PACKAGES: &[&str] = &["gcc", "make", "libc6-dev", "libnuma-dev", "xz-utils"];

/// A selftest the scenario runs: its name there, and the source file names
/// it has had (`hugepage-mmap.c` became `hugetlb-mmap.c`).
struct Selftest {
    name: &'static str,
    sources: &'static [&'static str],
}

const SELFTESTS: &[Selftest] = &[
    Selftest {
        name: "khugepaged",
        sources: &["khugepaged"],
    },
    Selftest {
        name: "split_huge_page_test",
        sources: &["split_huge_page_test"],
    },
    Selftest {
        name: "ksm_tests",
        sources: &["ksm_tests"],
    },
    Selftest {
        name: "hugepage-mmap",
        sources: &["hugepage-mmap", "hugetlb-mmap"],
    },
    Selftest {
        name: "migration",
        sources: &["migration"],
    },
];

/// What `migration`'s loops run for, in seconds, instead of the source's
/// 60 (6.1) or 20: every test spins for RUNTIME, which under TCG made one
/// run of the 6.1 binary take three minutes. Its per-test timeout stays
/// 2 x RUNTIME, as in the source.
const MIGRATION_RUNTIME: u32 = 10;

/// The top-level parts of the source tree the build reads.
const TREE_PARTS: &[&str] = &[
    "Makefile", "Kbuild", "Kconfig", "scripts", "include", "arch/x86", "tools", "usr", "mm",
];

/// Where `release`'s selftests are (the `selftests` scenario's `PW_VM_SELFTESTS`).
pub fn dir(release: &str) -> PathBuf {
    vm_dir().join("selftests").join(release)
}

/// Left once `release`'s selftests are built (or known not to build).
fn built_marker(release: &str) -> PathBuf {
    dir(release).join(".pagewatch-built")
}

/// Builds the selftests of every fetched kernel in `kernels` that has none
/// yet; kernels named by path have no Debian source and are only named.
pub fn ensure(kernels: &[Kernel]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for k in kernels {
        if !kernels::ready_marker(&k.name).exists() {
            step(&format!(
                "no mm selftests for {}: only the fetched kernels have a Debian source package; the selftests scenario will skip there",
                k.name
            ));
        } else if built_marker(&k.name).exists() {
            step(&format!(
                "mm selftests for {} present in {}",
                k.name,
                dir(&k.name).display()
            ));
        } else {
            missing.push(k.name.as_str());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    setup::apt_install(BUILD_PACKAGES)?;
    let apt = PrivateApt::create()?;
    for release in missing {
        build(&apt, release)?;
    }
    Ok(())
}

/// The `Version:` of `linux-image-RELEASE` in the private lists, which is
/// the version of its `linux-source-X.Y`.
fn kernel_version(apt: &PrivateApt, release: &str) -> anyhow::Result<String> {
    let package = format!("linux-image-{release}");
    let record = match apt.show(&package) {
        Ok(r) => r,
        Err(_) => {
            step("the private package lists lack the kernel's package: updating them");
            cmd::run(apt.command().args(["update", "-q"]))?;
            apt.show(&package)?
        }
    };
    field(&record, "Version").with_context(|| format!("{package} has no Version in the lists"))
}

fn field(record: &str, name: &str) -> Option<String> {
    record.lines().find_map(|l| {
        l.strip_prefix(name)?
            .strip_prefix(':')
            .map(|v| v.trim().to_string())
    })
}

/// `linux-source-X.Y` for a Debian kernel version such as `6.12.95-1~bpo12+1`.
fn source_package(version: &str) -> anyhow::Result<String> {
    let mut parts = version.split(['.', '-', '+', '~']);
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor))
            if major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok() =>
        {
            Ok(format!("linux-source-{major}.{minor}"))
        }
        _ => bail!("cannot read a kernel X.Y from the package version {version:?}"),
    }
}

fn build(apt: &PrivateApt, release: &str) -> anyhow::Result<()> {
    let version = kernel_version(apt, release)?;
    let package = source_package(&version)?;
    let wanted = format!("{package}={version}");
    let fetch = if apt.show(&wanted).is_ok() {
        wanted
    } else {
        let newest = field(&apt.show(&package)?, "Version")
            .with_context(|| format!("{package} has no Version in the lists"))?;
        step(&format!(
            "{wanted} is no longer in the archive's lists: building the selftests from {package}={newest} instead"
        ));
        format!("{package}={newest}")
    };
    let out = dir(release);
    let work = out.join("build");
    for d in [&out, &work] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("cannot clear {}", d.display()))?;
        }
    }
    let src = work.join("src");
    std::fs::create_dir_all(&src).with_context(|| format!("cannot create {}", src.display()))?;
    step(&format!(
        "building the mm selftests for {release} from {fetch} (Debian's kernel source; 6.5 minutes for the three kernels on 2 busy cores) into {}",
        out.display()
    ));
    cmd::run(apt.command().arg("download").arg(&fetch).current_dir(&work))?;
    let deb = find_deb(&work, &package)?;
    let top = package.clone();
    let members: Vec<String> = TREE_PARTS.iter().map(|p| format!("{top}/{p}")).collect();
    step(&format!(
        "unpacking {} of the tree (the rest is not needed)",
        TREE_PARTS.join(" ")
    ));
    cmd::run(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile {deb} | tar -xO ./usr/src/{top}.tar.xz | tar -xJ -C {src} --strip-components=1 {members}",
        deb = shell_quote(&deb.display().to_string()),
        src = shell_quote(&src.display().to_string()),
        members = members.join(" "),
    )))?;
    std::fs::remove_file(&deb).with_context(|| format!("cannot remove {}", deb.display()))?;
    cmd::run(
        Command::new("make")
            .args(["-s", "-j2", "headers"])
            .current_dir(&src),
    )?;
    // tools/testing/selftests/vm became .../mm in 6.3.
    let mm = ["mm", "vm"]
        .iter()
        .map(|d| src.join("tools/testing/selftests").join(d))
        .find(|d| d.join("Makefile").is_file())
        .with_context(|| format!("no tools/testing/selftests/mm or vm in {fetch}"))?;
    shorten_migration(&mm)?;
    let objs = work.join("out");
    std::fs::create_dir_all(&objs).with_context(|| format!("cannot create {}", objs.display()))?;
    let mut built = Vec::new();
    for t in SELFTESTS {
        match build_one(&mm, &objs, t) {
            Ok(bin) => {
                let dest = out.join(t.name);
                std::fs::rename(&bin, &dest).with_context(|| {
                    format!("cannot move {} to {}", bin.display(), dest.display())
                })?;
                built.push(t.name);
            }
            Err(reason) => {
                eprintln!(
                    "    SKIPPED selftest {} for {release} (the selftests scenario will say so): {reason}",
                    t.name
                );
                let skip = out.join(format!("{}.skip", t.name));
                std::fs::write(&skip, format!("{reason}\n"))
                    .with_context(|| format!("cannot write {}", skip.display()))?;
            }
        }
    }
    std::fs::remove_dir_all(&work).with_context(|| format!("cannot remove {}", work.display()))?;
    std::fs::write(
        built_marker(release),
        format!("from {fetch}: {}\n", built.join(" ")),
    )
    .with_context(|| format!("cannot mark {} built", out.display()))?;
    step(&format!(
        "mm selftests for {release}: {} built",
        built.join(", ")
    ));
    Ok(())
}

/// Sets `migration.c`'s `#define RUNTIME` to [`MIGRATION_RUNTIME`].
fn shorten_migration(mm: &Path) -> anyhow::Result<()> {
    let path = mm.join("migration.c");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let mut found = false;
    let patched: String = text
        .lines()
        .map(|l| {
            if l.starts_with("#define RUNTIME") {
                found = true;
                format!("#define RUNTIME ({MIGRATION_RUNTIME})")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    if !found {
        bail!("{} has no #define RUNTIME to shorten", path.display());
    }
    step(&format!(
        "migration: RUNTIME set to {MIGRATION_RUNTIME} s (each of its tests loops that long; the source's 20-60 s take minutes under TCG)"
    ));
    std::fs::write(&path, patched).with_context(|| format!("cannot write {}", path.display()))
}

/// Builds one selftest; the error is why it did not build.
fn build_one(mm: &Path, objs: &Path, t: &Selftest) -> Result<PathBuf, String> {
    let Some(source) = t
        .sources
        .iter()
        .find(|s| mm.join(format!("{s}.c")).is_file())
    else {
        return Err(format!(
            "no {} in {}",
            t.sources
                .iter()
                .map(|s| format!("{s}.c"))
                .collect::<Vec<_>>()
                .join(" or "),
            mm.display()
        ));
    };
    let target = objs.join(source);
    let out = Command::new("make")
        .arg(format!("OUTPUT={}", objs.display()))
        .arg(&target)
        .current_dir(mm)
        .output()
        .map_err(|e| format!("cannot run make: {e}"))?;
    if out.status.success() && target.is_file() {
        return Ok(target);
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("error") || l.contains("***"))
        .take(5)
        .collect();
    Err(format!(
        "make {source} failed with {}: {}",
        out.status,
        errors.join(" | ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_the_source_package_of_a_version() {
        assert_eq!(
            super::source_package("6.12.95-1~bpo12+1").unwrap(),
            "linux-source-6.12"
        );
        assert_eq!(
            super::source_package("6.1.176-1").unwrap(),
            "linux-source-6.1"
        );
        assert!(super::source_package("x").is_err());
    }
}
