//! Choosing the processes to snapshot: explicit pids, every process whose
//! `comm` equals a name, the members of a cgroup directory, or all.

use std::path::Path;

use super::{
    error::{Result, SnapshotError},
    source::ProcRoot,
};

/// Which processes to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These pids.
    Pids(Vec<u32>),
    /// Processes whose /proc/PID/comm equals this.
    Comm(String),
    /// Processes listed in this cgroup directory's cgroup.procs.
    Cgroup(std::path::PathBuf),
    /// Every process.
    All,
}

/// All numeric entries of /proc.
pub fn all_pids(root: &ProcRoot) -> Result<Vec<u32>> {
    let rd = std::fs::read_dir(&root.proc).map_err(|e| SnapshotError::read(&root.proc, e))?;
    let mut v: Vec<u32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Resolve a selection into pids (kernel threads, which have no maps, are
/// dropped from `--all` and `--comm`).
pub fn resolve(root: &ProcRoot, sel: &Selection) -> Result<Vec<u32>> {
    let has_mm = |pid: u32| {
        std::fs::read_to_string(root.pid_file(pid, "maps")).is_ok_and(|m| !m.is_empty())
            || std::fs::metadata(root.pid_file(pid, "exe")).is_ok()
    };
    match sel {
        Selection::Pids(p) => Ok(p.clone()),
        Selection::All => Ok(all_pids(root)?.into_iter().filter(|p| has_mm(*p)).collect()),
        Selection::Comm(name) => {
            let v: Vec<u32> = all_pids(root)?
                .into_iter()
                .filter(|p| {
                    std::fs::read_to_string(root.pid_file(*p, "comm"))
                        .is_ok_and(|c| c.trim_end() == name)
                })
                .collect();
            if v.is_empty() {
                return Err(SnapshotError::NoMatch(format!("--comm {name}")));
            }
            Ok(v)
        }
        Selection::Cgroup(path) => {
            let procs = cgroup_procs_path(root, path);
            let text = super::source::read_text(&procs)?;
            let v: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            if v.is_empty() {
                return Err(SnapshotError::NoMatch(format!("cgroup {}", path.display())));
            }
            Ok(v)
        }
    }
}

/// `PATH/cgroup.procs`; a relative PATH is taken under the memory cgroup
/// mount (v1 `memory` controller first, else cgroup2).
fn cgroup_procs_path(root: &ProcRoot, path: &Path) -> std::path::PathBuf {
    if path.is_absolute() && path.exists() {
        return path.join("cgroup.procs");
    }
    let mountinfo = std::fs::read_to_string(root.proc_file("self/mountinfo")).unwrap_or_default();
    let rel = path.strip_prefix("/").unwrap_or(path);
    super::memcg::memcg_mounts(&mountinfo)
        .into_iter()
        .map(|m| m.join(rel))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| path.to_path_buf())
        .join("cgroup.procs")
}
