//! Small /proc readers for the event side: process names (cached, so a
//! name outlives its process) and pid lookups. Every reader takes the proc
//! root, so tests can point it at a captured tree.

use std::{collections::HashMap, path::PathBuf};

/// The procfs and sysfs mounts every reader takes (normally `/proc` and
/// `/sys`; a captured tree or a guest's files in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot {
    /// procfs mount, normally `/proc`.
    pub proc: PathBuf,
    /// sysfs mount, normally `/sys`.
    pub sys: PathBuf,
}

impl Default for ProcRoot {
    fn default() -> Self {
        Self {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

impl ProcRoot {
    /// A proc tree rooted at `path`, with the system's /sys.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            proc: path.into(),
            ..Self::default()
        }
    }

    fn pid_dir(&self, pid: u32) -> PathBuf {
        self.proc.join(pid.to_string())
    }

    /// A file of process `pid`, e.g. `pid_file(1, "maps")`.
    pub fn pid_file(&self, pid: u32, name: &str) -> PathBuf {
        self.pid_dir(pid).join(name)
    }

    /// A top-level /proc file such as `kpageflags`.
    pub fn proc_file(&self, name: &str) -> PathBuf {
        self.proc.join(name)
    }

    /// A file under /sys.
    pub fn sys_file(&self, name: &str) -> PathBuf {
        self.sys.join(name)
    }

    /// Whether a process with this pid exists now.
    pub fn pid_exists(&self, pid: u32) -> bool {
        self.pid_dir(pid).is_dir()
    }

    /// The command name of `pid` (`/proc/PID/comm`), if it still exists.
    pub fn comm(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(self.pid_dir(pid).join("comm")).ok()?;
        Some(text.trim_end_matches('\n').to_owned())
    }

    /// The pids of every process whose comm is `name`.
    pub fn pids_named(&self, name: &str) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(&self.proc) else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|&pid| self.comm(pid).as_deref() == Some(name))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// (ppid, start time in clock ticks since boot) from /proc/PID/stat
    /// fields 4 and 22; with the pid, the start time tells a reused pid
    /// from the process it replaced.
    pub fn stat_fields(&self, pid: u32) -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(self.pid_dir(pid).join("stat")).ok()?;
        // Fields after the parenthesised comm, which may contain spaces.
        let mut f = text.get(text.rfind(')')? + 2..)?.split(' ');
        let ppid = f.nth(1)?.parse().ok()?;
        let start = f.nth(17)?.parse().ok()?;
        Some((ppid, start))
    }

    /// /proc/PID/cmdline split at NULs (at most 4 KiB of it).
    pub fn cmdline(&self, pid: u32) -> Vec<String> {
        let Ok(bytes) = std::fs::read(self.pid_dir(pid).join("cmdline")) else {
            return Vec::new();
        };
        bytes[..bytes.len().min(4096)]
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    /// Addresses of kernel symbols in `names` from `kallsyms` (root only:
    /// others read zeros, returned as None), in the order asked.
    pub fn kallsyms(&self, names: &[&str]) -> Vec<Option<u64>> {
        let mut found = vec![None; names.len()];
        let Ok(text) = std::fs::read_to_string(self.proc_file("kallsyms")) else {
            return found;
        };
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(addr), Some(_kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            if let Some(i) = names.iter().position(|n| *n == name)
                && let Ok(addr) = u64::from_str_radix(addr, 16)
                && addr != 0
            {
                found[i] = Some(addr);
            }
        }
        found
    }
}

/// Process names, looked up once per pid and kept after the process exits.
#[derive(Debug, Default)]
pub struct CommCache {
    root: ProcRoot,
    names: HashMap<u32, String>,
}

impl CommCache {
    /// A cache reading names from `root`.
    pub fn new(root: ProcRoot) -> Self {
        Self {
            root,
            names: HashMap::new(),
        }
    }

    /// Records the name an exiting process reported (from its exit event),
    /// replacing a `?` left by a lookup that came too late.
    pub fn learn(&mut self, pid: u32, comm: &[u8]) {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let name = String::from_utf8_lossy(&comm[..end]).into_owned();
        let slot = self.names.entry(pid).or_insert_with(|| "?".to_owned());
        if slot == "?" && !name.is_empty() {
            *slot = name;
        }
    }

    /// Reads the name of `pid` again (after an exec changed it).
    pub fn refresh(&mut self, pid: u32) {
        if let Some(name) = self.root.comm(pid) {
            self.names.insert(pid, name);
        }
    }

    /// Forgets the name of `pid`, which exited: a process that reuses the
    /// pid is looked up afresh.
    pub fn forget(&mut self, pid: u32) {
        self.names.remove(&pid);
    }

    /// The name of `pid`; `?` when it exited before it was first seen.
    pub fn get(&mut self, pid: u32) -> &str {
        let root = &self.root;
        self.names
            .entry(pid)
            .or_insert_with(|| root.comm(pid).unwrap_or_else(|| "?".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_from_a_proc_tree_and_keeps_them_after_exit() {
        let dir = std::env::temp_dir().join(format!("pw-proc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("42")).unwrap();
        std::fs::write(dir.join("42/comm"), "worker\n").unwrap();
        std::fs::write(
            dir.join("42/stat"),
            "42 (a (weird) name) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 0\n",
        )
        .unwrap();
        std::fs::write(dir.join("42/cmdline"), "/bin/worker\0--fast\0").unwrap();
        std::fs::write(
            dir.join("kallsyms"),
            "ffffffff81699db0 T balloon_page_enqueue\n0000000000000000 T hidden\n",
        )
        .unwrap();
        let root = ProcRoot::at(&dir);
        assert_eq!(
            root.kallsyms(&["hidden", "balloon_page_enqueue", "absent"]),
            vec![None, Some(0xffff_ffff_8169_9db0), None]
        );
        assert!(root.pid_exists(42));
        assert_eq!(root.stat_fields(42), Some((7, 123456)));
        assert_eq!(root.cmdline(42), vec!["/bin/worker", "--fast"]);
        assert_eq!(root.stat_fields(43), None);
        assert!(!root.pid_exists(43));
        assert_eq!(root.pids_named("worker"), vec![42]);
        let mut cache = CommCache::new(root);
        assert_eq!(cache.get(42), "worker");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cache.get(42), "worker", "name survives the process");
        assert_eq!(cache.get(43), "?");
        cache.learn(43, b"short-lived\0\0\0\0\0");
        assert_eq!(
            cache.get(43),
            "short-lived",
            "exit event fills in a missed name"
        );
        cache.learn(42, b"renamed\0");
        assert_eq!(cache.get(42), "worker", "a name read from /proc is kept");
        cache.forget(42);
        assert_eq!(cache.get(42), "?", "a reused pid is looked up again");
    }
}
