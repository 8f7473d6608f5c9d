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

    /// A thread of process `tgid` that has not exited, to read the
    /// process's memory through: the leader while it runs, else any other.
    /// Once the leader thread has exited (pthread_exit) while others run
    /// on, /proc/TGID/{maps,pagemap,status} show no memory (the leader has
    /// dropped its mm); /proc/TID/... of a live thread shows the process's.
    /// None when no thread is alive: the thread group is dead (or gone).
    pub fn live_thread(&self, tgid: u32) -> Option<u32> {
        if self.task_alive(&self.pid_dir(tgid)) {
            return Some(tgid);
        }
        let tasks = std::fs::read_dir(self.pid_dir(tgid).join("task")).ok()?;
        tasks
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&tid| {
                tid != tgid
                    && self.task_alive(&self.pid_dir(tgid).join("task").join(tid.to_string()))
            })
    }

    /// Whether the task whose /proc directory is `dir` exists and has not
    /// exited (its stat state is neither Z, zombie, nor X, dead).
    fn task_alive(&self, dir: &std::path::Path) -> bool {
        std::fs::read_to_string(dir.join("stat")).is_ok_and(|text| {
            text.rfind(')')
                .and_then(|i| text.get(i + 2..i + 3))
                .is_some_and(|state| !matches!(state, "Z" | "X" | "x"))
        })
    }

    /// The process (thread group) thread `tid` belongs to, from
    /// /proc/TID/status (readable for every thread, though /proc lists
    /// only processes).
    pub fn tgid_of(&self, tid: u32) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_dir(tid).join("status")).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Tgid:"))?
            .trim()
            .parse()
            .ok()
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

/// A process rather than a pid: its pid and its start time (clock ticks
/// after boot, /proc/PID/stat field 22). A pid reused by a later process is
/// another key, so the two are never merged. (Two processes given the same
/// pid within one clock tick, 10 ms, cannot be told apart this way; only a
/// forced `ns_last_pid` does that.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    /// 0 when the process had exited before it was first looked up.
    pub start_ticks: u64,
}

/// Which process each pid belongs to now, and the names of every process
/// seen, looked up once per process and kept after it exits.
///
/// Events are read some time after they happened, so the process a pid
/// names in /proc may already be a later one: a start time after the event
/// is not the event's process. Its start time then comes from its fork
/// event, when pagewatch saw it (the kernel stamps start and fork within
/// the same microseconds), else it is 0 (unknown).
#[derive(Debug, Default)]
pub struct CommCache {
    root: ProcRoot,
    /// The process each pid was last seen to belong to.
    current: HashMap<u32, ProcessKey>,
    /// Processes that exited (and were forgotten) whose pid no fork has
    /// given out again: a later lookup of the pid, with /proc/PID gone, is
    /// of them (a transition of their last pages, read an interval later).
    departed: HashMap<u32, ProcessKey>,
    names: HashMap<ProcessKey, String>,
    /// Start ticks of processes whose fork was seen in this interval.
    born: HashMap<u32, u64>,
    /// CLOCK_BOOTTIME minus CLOCK_MONOTONIC (event times), in ns.
    boot_offset_ns: u64,
    /// Nanoseconds per clock tick (10 ms at USER_HZ 100).
    tick_ns: u64,
}

impl CommCache {
    /// A cache reading start times and names from `root`.
    pub fn new(root: ProcRoot) -> Self {
        let boot = crate::kernel::clock_ns(libc::CLOCK_BOOTTIME);
        let mono = crate::kernel::clock_ns(libc::CLOCK_MONOTONIC);
        Self {
            root,
            boot_offset_ns: u64::try_from(boot - mono).unwrap_or(0),
            tick_ns: 1_000_000_000 / crate::kernel::clock_ticks_per_sec().max(1),
            ..Self::default()
        }
    }

    /// Start-time ticks of an event at CLOCK_MONOTONIC `ts_ns`.
    fn ticks_at(&self, ts_ns: u64) -> u64 {
        (ts_ns + self.boot_offset_ns) / self.tick_ns.max(1)
    }

    /// The process `pid` belongs to now (for output).
    pub fn key(&mut self, pid: u32) -> ProcessKey {
        self.key_at(pid, u64::MAX)
    }

    /// The process `pid` belonged to at CLOCK_MONOTONIC `ts_ns` (an
    /// event's time): read from /proc on first sight (or after
    /// [`forget`](Self::forget)), with its name.
    pub fn key_at(&mut self, pid: u32, ts_ns: u64) -> ProcessKey {
        if let Some(&key) = self.current.get(&pid) {
            return key;
        }
        let at = if ts_ns == u64::MAX {
            u64::MAX
        } else {
            self.ticks_at(ts_ns)
        };
        let stat = self
            .root
            .stat_fields(pid)
            .filter(|s| s.1 <= at.saturating_add(1));
        let key = match (stat, self.born.get(&pid), self.departed.get(&pid)) {
            (Some(s), ..) => ProcessKey {
                pid,
                start_ticks: s.1,
            },
            (None, Some(&born), _) => ProcessKey {
                pid,
                start_ticks: born,
            },
            (None, None, Some(&gone)) => gone,
            (None, None, None) => ProcessKey {
                pid,
                start_ticks: 0,
            },
        };
        self.current.insert(pid, key);
        let root = &self.root;
        self.names.entry(key).or_insert_with(|| {
            stat.and_then(|_| root.comm(pid))
                .unwrap_or_else(|| "?".to_owned())
        });
        key
    }

    /// A fork at CLOCK_MONOTONIC `ts_ns` gave `pid` to a new process: the
    /// next lookup is of that process.
    ///
    /// The kernel stamps the start time before the fork event fires, so
    /// the event's tick can be one late (a 6.12 guest under TCG named a
    /// process that started at tick 14305 by 14306). The child's own stat
    /// has it exactly: it is read now, while the child most likely still
    /// runs, and taken if it is that child's (no later than the event).
    /// Only a child already gone keeps the event's tick.
    pub fn forked(&mut self, pid: u32, ts_ns: u64) {
        self.current.remove(&pid);
        self.departed.remove(&pid);
        let at = self.ticks_at(ts_ns);
        let ticks = self
            .root
            .stat_fields(pid)
            .map(|s| s.1)
            .filter(|&t| t <= at && t + 1 >= at)
            .unwrap_or(at);
        self.born.insert(pid, ticks);
    }

    /// Drops the fork times of the interval, once its events are read
    /// (threads' forks are never looked up as processes).
    pub fn end_interval(&mut self) {
        self.born.clear();
    }

    /// Records the name an exiting process reported (from its exit event),
    /// replacing a `?` left by a lookup that came too late.
    pub fn learn(&mut self, pid: u32, comm: &[u8]) {
        let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        let name = String::from_utf8_lossy(&comm[..end]).into_owned();
        let key = self.key(pid);
        let slot = self.names.entry(key).or_insert_with(|| "?".to_owned());
        if slot == "?" && !name.is_empty() {
            *slot = name;
        }
    }

    /// Reads the name of `pid` again after an exec changed it: the same
    /// process, a new name. If it is already gone, the name from before the
    /// exec is wrong (a child between fork and exec has its parent's name):
    /// `?`, for its exit event to fill in.
    pub fn refresh(&mut self, pid: u32) {
        let key = self.key(pid);
        let name = self.root.comm(pid).unwrap_or_else(|| "?".to_owned());
        self.names.insert(key, name);
    }

    /// `pid` exited: the next lookup reads its start time and name afresh
    /// (a process now in /proc/PID, or whose fork was seen, is a new one;
    /// otherwise it is still the one that exited). Names already read are
    /// kept.
    pub fn forget(&mut self, pid: u32) {
        if let Some(key) = self.current.remove(&pid) {
            self.departed.insert(pid, key);
        }
    }

    /// The name of the process `pid` belongs to; `?` when it exited before
    /// it was first seen.
    pub fn get(&mut self, pid: u32) -> &str {
        let key = self.key(pid);
        self.name(key)
    }

    /// The name of a process seen before (`?` if never seen).
    pub fn name(&self, key: ProcessKey) -> &str {
        self.names.get(&key).map_or("?", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_lives_while_any_thread_does() {
        let dir = std::env::temp_dir().join(format!("pw-threads-{}", std::process::id()));
        let stat = |path: &str, state: &str| {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, format!("1 (a b) {state} 1 1 1 0 -1 0\n")).unwrap();
        };
        // Leader exited (zombie) while thread 12 runs on.
        stat("10/stat", "Z");
        stat("10/task/10/stat", "Z");
        stat("10/task/11/stat", "X");
        stat("10/task/12/stat", "S");
        std::fs::write(dir.join("10/status"), "Name:\tx\nTgid:\t10\nPid:\t10\n").unwrap();
        // A running leader; a group whose threads are all dead.
        stat("20/stat", "R");
        stat("30/stat", "Z");
        stat("30/task/30/stat", "Z");
        let root = ProcRoot::at(&dir);
        assert_eq!(root.live_thread(10), Some(12));
        assert_eq!(root.live_thread(20), Some(20));
        assert_eq!(root.live_thread(30), None);
        assert_eq!(root.live_thread(40), None, "gone");
        assert_eq!(root.tgid_of(10), Some(10));
        assert_eq!(root.tgid_of(12), None, "no status file");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
        let exited = cache.key(42);
        cache.forget(42);
        assert_eq!(
            (cache.key(42), cache.get(42)),
            (exited, "worker"),
            "after its exit, a pid with no /proc entry and no fork is still the exited process"
        );
        assert_eq!(cache.get(43), "?");
        cache.learn(43, b"short-lived\0\0\0\0\0");
        assert_eq!(
            cache.get(43),
            "short-lived",
            "exit event fills in a missed name"
        );
        cache.learn(42, b"renamed\0");
        assert_eq!(cache.get(42), "worker", "a name read from /proc is kept");
        let old = cache.key(42);
        assert_eq!(old.start_ticks, 123456);
        std::fs::create_dir_all(dir.join("42")).unwrap();
        std::fs::write(dir.join("42/comm"), "reused\n").unwrap();
        std::fs::write(
            dir.join("42/stat"),
            "42 (reused) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 999999 0\n",
        )
        .unwrap();
        assert_eq!(cache.key(42), old, "the same process until told otherwise");
        cache.forget(42);
        let new = cache.key(42);
        assert_eq!((new.pid, new.start_ticks), (42, 999999));
        assert_eq!(cache.get(42), "reused", "a reused pid is a new process");
        assert_eq!(cache.name(old), "worker", "the old process keeps its name");
        std::fs::write(dir.join("42/comm"), "execd\n").unwrap();
        cache.refresh(42);
        assert_eq!(cache.key(42), new, "exec keeps the process");
        assert_eq!(cache.get(42), "execd", "exec renames it");
        // Events read late: pid 42's /proc entry (start 999999) is a later
        // process than an event at tick 1000's; its fork time stands in.
        let tick = cache.tick_ns;
        let before = (1000 * tick).saturating_sub(cache.boot_offset_ns);
        cache.forked(42, before);
        let late = cache.key_at(42, before + tick);
        assert_eq!(late.start_ticks, cache.ticks_at(before));
        assert_ne!(late, new);
        assert_eq!(
            cache.name(late),
            "?",
            "a name read from /proc would be the later one's"
        );
        cache.refresh(43);
        cache.learn(43, b"after-exec\0");
        assert_eq!(
            cache.get(43),
            "after-exec",
            "exec then exit: the exit names it"
        );
        cache.end_interval();
        // A fork event a tick after the kernel's start stamp (999999):
        // the child's stat, read at the event, has the exact tick, which
        // stays once the child is gone.
        cache.forked(42, (1_000_000 * tick).saturating_sub(cache.boot_offset_ns));
        std::fs::remove_dir_all(dir.join("42")).unwrap();
        assert_eq!(
            cache.key_at(42, 1_000_000 * tick).start_ticks,
            999999,
            "the start tick of /proc, not the event's"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
