//! Memory cgroup names for the inode numbers /proc/kpagecgroup gives: the
//! inode of the cgroup directory the page is charged to. The cgroup
//! filesystems are found in mountinfo (v1 `memory` controller or v2) and
//! walked once; inode 0 means "no memcg" (or CONFIG_MEMCG off).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use super::source::ProcRoot;

/// inode -> cgroup path (relative to the memory cgroup root, e.g. `/a/b`).
#[derive(Debug, Default, Clone)]
pub struct MemcgNames {
    names: HashMap<u64, String>,
    /// Mount points walked.
    pub mounts: Vec<PathBuf>,
}

impl MemcgNames {
    /// Walk the memory cgroup mounts named in `root`'s self/mountinfo.
    pub fn load(root: &ProcRoot) -> Self {
        let mut out = MemcgNames::default();
        let text = std::fs::read_to_string(root.proc_file("self/mountinfo")).unwrap_or_default();
        for m in memcg_mounts(&text) {
            walk(&m, &m, &mut out.names);
            out.mounts.push(m);
        }
        out
    }

    /// Name of a memcg inode (`?ino` when not found, `-` for 0).
    pub fn name(&self, ino: u64) -> String {
        if ino == 0 {
            return "-".into();
        }
        self.names
            .get(&ino)
            .cloned()
            .unwrap_or_else(|| format!("?{ino}"))
    }
}

/// Mount points of the v1 memory controller and of cgroup2, v1 first.
pub fn memcg_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mnt) = pre.split(' ').nth(4) else {
            continue;
        };
        let mut post = post.split(' ');
        let fstype = post.next().unwrap_or("");
        let opts = post.nth(1).unwrap_or("");
        if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") {
            v1.push(PathBuf::from(mnt));
        } else if fstype == "cgroup2" {
            v2.push(PathBuf::from(mnt));
        }
    }
    v1.extend(v2);
    v1
}

fn walk(base: &Path, dir: &Path, names: &mut HashMap<u64, String>) {
    if let Ok(md) = std::fs::metadata(dir) {
        let rel = dir.strip_prefix(base).unwrap_or(dir);
        names
            .entry(md.ino())
            .or_insert_with(|| format!("/{}", rel.display()));
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(base, &e.path(), names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_memory_cgroup_mounts() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/mountinfo"
        ))
        .unwrap();
        let m = memcg_mounts(&text);
        assert_eq!(m[0], PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(m.last().unwrap(), &PathBuf::from("/sys/fs/cgroup/unified"));
    }
}
