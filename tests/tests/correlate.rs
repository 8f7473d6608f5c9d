//! Integration tests of the correlator against the running kernel: page
//! state transitions seen in snapshots, attributed through the events of
//! the interval, checked against the kernel's own smaps accounting. These
//! tests change global state (swap devices, memory cgroups, KSM knobs) and
//! restore it on drop; they run one at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use pagewatch_tests::{pagewatch_bin, skip, skip_unless_root};
use serde_json::Value;

/// `pagewatch top --json` in the background, stopped with SIGINT.
struct Tracer(Child);

impl Tracer {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(pagewatch_bin())
            .args(["top", "--json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pagewatch");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[pagewatch] {line}");
                if line.contains("tracing;") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("pagewatch did not start tracing");
        Self(child)
    }

    fn stop(mut self) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().expect("true"));
        let out = child.wait_with_output().expect("wait pagewatch");
        assert!(out.status.success(), "pagewatch exited with {}", out.status);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn transitions<'a>(lines: &'a [Value], pid: u32, kind: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter_map(|l| l.get("transition"))
        .filter(|t| t["pid"].as_u64() == Some(u64::from(pid)) && t["kind"] == kind)
        .collect()
}

fn pages(ts: &[&Value]) -> u64 {
    ts.iter().map(|t| t["pages"].as_u64().unwrap()).sum()
}

/// A kB field of /proc/PID/smaps_rollup.
fn rollup_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps_rollup");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup"))
}

/// zram0 as a swap device for the test; swapped off and reset on drop.
struct ZramSwap;

impl ZramSwap {
    fn setup(size: &str) -> Result<Self, String> {
        let dev = Path::new("/sys/block/zram0");
        if !dev.exists() {
            let _ = Command::new("modprobe").arg("zram").status();
        }
        let disksize = std::fs::read_to_string(dev.join("disksize"))
            .map_err(|e| format!("no zram device: {e}"))?;
        if disksize.trim() != "0" {
            return Err("zram0 is already in use; not touching it".into());
        }
        std::fs::write(dev.join("disksize"), size).map_err(|e| format!("zram disksize: {e}"))?;
        let guard = ZramSwap;
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        if !ok(Command::new("mkswap")
            .arg("/dev/zram0")
            .stdout(Stdio::null()))
        {
            return Err("mkswap /dev/zram0 failed".into());
        }
        if !ok(Command::new("swapon").arg("/dev/zram0")) {
            return Err("swapon /dev/zram0 failed".into());
        }
        Ok(guard)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg("/dev/zram0").status();
        let _ = std::fs::write("/sys/block/zram0/reset", "1");
    }
}

/// A v1 memory cgroup (these hosts) with a limit; removed on drop.
struct MemCgroup(PathBuf);

impl MemCgroup {
    fn create(limit: u64) -> Option<Self> {
        let base = Path::new("/sys/fs/cgroup/memory");
        if !base.join("memory.limit_in_bytes").exists() {
            return None;
        }
        let dir = base.join(format!("pagewatch-swap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let cg = Self(dir);
        std::fs::write(cg.0.join("memory.limit_in_bytes"), limit.to_string()).ok()?;
        Some(cg)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Anonymous memory pushed to swap by a memory cgroup limit: the swapped-out
/// transitions name the process and memcg reclaim, and their net total
/// equals the Swap the kernel reports for the process in smaps_rollup.
#[test]
fn swap_out_under_a_memcg_limit_is_attributed_and_matches_smaps() {
    let name = "swap_out_under_a_memcg_limit_is_attributed_and_matches_smaps";
    if skip_unless_root(name) {
        return;
    }
    let _swap = match ZramSwap::setup("1G") {
        Ok(s) => s,
        Err(why) => return skip(name, &why),
    };
    let Some(cg) = MemCgroup::create(64 << 20) else {
        return skip(name, "no cgroup v1 memory controller");
    };
    let mut wl = Command::new(env!("CARGO_BIN_EXE_pw-faults"))
        .args(["window", "192"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn pw-faults");
    let mut stdin = wl.stdin.take().unwrap();
    let mut out = BufReader::new(wl.stdout.take().unwrap()).lines();
    let pid: u32 = out.next().unwrap().unwrap()[4..].parse().unwrap();
    assert_eq!(out.next().unwrap().unwrap(), "ready");
    cg.add(pid);
    let tracer = Tracer::start(&["--pid", &pid.to_string(), "--interval", "300ms"]);
    writeln!(stdin, "go").unwrap();
    let result = out.next().unwrap().unwrap();
    assert!(result.starts_with("delta "), "{result}");
    // Let two more snapshots see the final state.
    std::thread::sleep(Duration::from_millis(900));
    let swap_kb = rollup_kb(pid, "Swap");
    let lines = tracer.stop();
    drop(stdin);
    let _ = wl.wait();
    assert!(
        swap_kb > 100 << 10,
        "192 MiB through a 64 MiB limit swaps >100 MiB, smaps says {swap_kb} kB"
    );
    let out_t = transitions(&lines, pid, "swapped_out");
    let in_t = transitions(&lines, pid, "swapped_in");
    let net = pages(&out_t) as i64 - pages(&in_t) as i64;
    assert_eq!(
        net,
        (swap_kb / 4) as i64,
        "net swapped-out pages vs smaps Swap"
    );
    let causes: Vec<&Value> = out_t.iter().map(|t| &t["cause"]).collect();
    assert!(
        causes.iter().all(|c| *c == "memcg_reclaim"),
        "swap-outs under the cgroup limit are memcg reclaim: {causes:?}"
    );
}
