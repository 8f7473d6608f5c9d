//! What the guest asks of the host and of pagewatch: QMP requests through
//! the harness (a marker line on the console, the answer as a file in the
//! `--rwdir`), pagewatch snapshots as JSON, and small /proc and sysfs
//! readers, plus the [`Checks`] list every scenario reports.

use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use pagewatch_tests::{TopLine, TopSummary};
use serde_json::Value;

pub type Result<T = ()> = std::result::Result<T, String>;

/// Asks the host harness to run `request` against QEMU's QMP and returns
/// its JSON answer (`balloon BYTES`, `query-balloon`, `wait-balloon BYTES SECS`).
pub fn qmp(request: &str) -> Result<Value> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let rw = std::env::var("PW_VM_RWDIR")
        .map_err(|_| "PW_VM_RWDIR is not set: run this through `cargo xtask test --vm`")?;
    let seq = format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let reply = std::path::Path::new(&rw).join(format!("qmp-{seq}.json"));
    println!("@@pw-vm qmp {seq} {request}");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&reply)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {request}: {e}"));
            }
            return Ok(v);
        }
        if start.elapsed() > Duration::from_secs(240) {
            return Err(format!("no answer from the host to QMP {request}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The configured guest memory (`PW_VM_MEMORY_MIB`), in bytes.
pub fn guest_bytes() -> Result<u64> {
    std::env::var("PW_VM_MEMORY_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|m| m << 20)
        .ok_or_else(|| "PW_VM_MEMORY_MIB is not set".to_string())
}

/// Runs `pagewatch ARGS --format json` and parses its output.
pub fn snapshot(args: &[&str]) -> Result<Value> {
    let mut all = vec!["snapshot"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let (status, out, err) = pagewatch_tests::run_pagewatch(&all);
    if !status.success() {
        return Err(format!(
            "pagewatch {} failed: {}",
            all.join(" "),
            err.trim()
        ));
    }
    serde_json::from_str(&out).map_err(|e| format!("pagewatch {}: bad JSON: {e}", all.join(" ")))
}

/// OFFLINE pages in the whole-system census (balloon pages are PageOffline).
pub fn census_offline() -> Result<u64> {
    let v = snapshot(&["--system", "--flags", "offline"])?;
    v["system"]["census"]["matched_pages"]
        .as_u64()
        .ok_or_else(|| format!("no system.census.matched_pages in the snapshot: {v}"))
}

/// What `pagewatch map` says of ballooned-out (OFFLINE) memory.
pub struct MapOffline {
    /// OFFLINE pages, summed over zones.
    pub pages: u64,
    /// Blocks whose every page is OFFLINE, from the per-block page counts.
    pub whole_blocks: u64,
    /// Of those, the blocks whose verdict is not `offline`.
    pub whole_blocks_misjudged: u64,
    /// Blocks with the verdict `offline` (OFFLINE pages and nothing
    /// unmovable) that hold an unmovable page or no OFFLINE page.
    pub offline_verdicts_wrong: u64,
}

/// Reads `pagewatch map --format json` for its OFFLINE pages and checks
/// its verdicts against its own per-block page counts.
pub fn map_offline() -> Result<MapOffline> {
    let (status, out, err) = pagewatch_tests::run_pagewatch(&["map", "--format", "json"]);
    if !status.success() {
        return Err(format!("pagewatch map failed: {}", err.trim()));
    }
    let v: Value =
        serde_json::from_str(&out).map_err(|e| format!("pagewatch map: bad JSON: {e}"))?;
    let zones = v["zones"]
        .as_array()
        .ok_or_else(|| format!("no zones in pagewatch map's JSON: {}", one_line(&out, 300)))?;
    let blocks = v["blocks"]
        .as_array()
        .ok_or_else(|| format!("no blocks in pagewatch map's JSON: {}", one_line(&out, 300)))?;
    let per_block = v["pages_per_block"]
        .as_u64()
        .ok_or("no pages_per_block in pagewatch map's JSON")?;
    let mut m = MapOffline {
        pages: zones
            .iter()
            .filter_map(|z| z["pages"]["offline"].as_u64())
            .sum(),
        whole_blocks: 0,
        whole_blocks_misjudged: 0,
        offline_verdicts_wrong: 0,
    };
    // The classes that do not block compaction (PageClass::blocks is
    // false): an `offline` block holds only these.
    const MOVABLE: [&str; 7] = [
        "offline",
        "free",
        "thp",
        "hugetlb",
        "anon",
        "file",
        "reclaimable",
    ];
    for b in blocks {
        let pages = b["pages"].as_object().ok_or("a map block without pages")?;
        let offline = pages.get("offline").and_then(Value::as_u64).unwrap_or(0);
        let verdict = b["verdict"].as_str().unwrap_or("");
        if offline == per_block {
            m.whole_blocks += 1;
            m.whole_blocks_misjudged += u64::from(verdict != "offline");
        }
        if verdict == "offline"
            && (offline == 0 || pages.keys().any(|k| !MOVABLE.contains(&k.as_str())))
        {
            m.offline_verdicts_wrong += 1;
        }
    }
    Ok(m)
}

/// A `Name: N kB` field of a /proc file such as meminfo or smaps_rollup.
pub fn kb_field(path: &str, name: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .ok_or_else(|| format!("no {name} in {path}"))
}

/// Reads a number from a sysfs file.
pub fn read_num(path: &str) -> Result<u64> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("read {path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{path}: {e}"))
}

/// Writes a sysfs/proc file.
pub fn write(path: &str, value: &str) -> Result {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {path}: {e}"))
}

/// Polls `f` every 100 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Comparisons a scenario made: all are printed, any mismatch fails it.
#[derive(Default)]
pub struct Checks(Vec<String>);

impl Checks {
    /// Records `what`: `got` must equal `want`.
    pub fn eq(&mut self, what: &str, got: u64, want: u64) {
        let ok = got == want;
        println!(
            "  {} {what}: {got} (expected {want})",
            if ok { "ok  " } else { "FAIL" }
        );
        if !ok {
            self.0.push(format!("{what}: {got} != {want}"));
        }
    }

    /// Records a condition.
    pub fn that(&mut self, what: &str, ok: bool) {
        println!("  {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.0.push(what.to_string());
        }
    }

    pub fn result(self) -> Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0.join("; "))
        }
    }
}

/// `pagewatch top --json` (or `record`) running in the background while a
/// scenario acts; its JSON lines are read as they come.
pub struct Top {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<TopLine>,
    seen: Vec<TopLine>,
}

impl Top {
    /// Starts `pagewatch top --json ARGS` and waits until it traces; if it
    /// exits first, the error is what it printed.
    pub fn start(args: &[&str]) -> Result<Top> {
        Self::spawn(&[&["top", "--json"], args].concat())
    }

    /// Starts `pagewatch record -o FILE ARGS` the same way.
    pub fn record(file: &str, args: &[&str]) -> Result<Top> {
        Self::spawn(&[&["record", "-o", file], args].concat())
    }

    fn spawn(args: &[&str]) -> Result<Top> {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(pagewatch_tests::pagewatch_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn pagewatch {args:?}: {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(|l| l.ok())
            {
                if line.contains("tracing;") {
                    let _ = tx.send(Ok(()));
                }
                said.push(line);
            }
            let _ = tx.send(Err(said.join(" ")));
        });
        let stdout = child.stdout.take().expect("piped");
        let (line_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
            {
                // `record` prints no JSON lines; every line of `top --json`
                // is a TopLine, and one that is not ends the reading,
                // saying so (the scenario then waits in vain and fails).
                match serde_json::from_str::<TopLine>(&line) {
                    Ok(v) => {
                        if line_tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("pw-vm-scenario: not a pagewatch top line {line:?}: {e}");
                        break;
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(())) => Ok(Top {
                child,
                lines,
                seen: Vec::new(),
            }),
            Ok(Err(said)) => {
                let _ = child.wait();
                Err(said)
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err("pagewatch top did not start tracing within 120 s".into())
            }
        }
    }

    /// Stops it as Ctrl-C does and returns its summary.
    pub fn stop(self) -> Result<TopSummary> {
        self.stop_lines()?
            .into_iter()
            .find_map(|l| match l {
                TopLine::Summary { summary } => Some(summary),
                _ => None,
            })
            .ok_or_else(|| "pagewatch top exited without a summary".to_string())
    }

    /// Takes in the lines printed so far: what follows comes after now.
    pub fn mark(&mut self) {
        self.seen.extend(self.lines.try_iter());
    }

    /// After [`Top::mark`], waits until at least `min` intervals have ended
    /// and the last one printed no line `moving` matches: pagewatch has seen
    /// the state the scenario waited for and nothing more is changing. A
    /// squeezed TCG guest can take seconds per 1 s interval, so this counts
    /// intervals instead of sleeping. False if `secs` pass first.
    pub fn settle(&mut self, min: usize, secs: u64, moving: impl Fn(&TopLine) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let (mut ended, mut quiet) = (0, true);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(v) = self.lines.recv_timeout(left) else {
                return false;
            };
            quiet &= !moving(&v);
            // Every interval ends with its system line.
            if v.system().is_some() {
                ended += 1;
                if ended >= min && quiet {
                    self.seen.push(v);
                    return true;
                }
                quiet = true;
            }
            self.seen.push(v);
        }
        false
    }

    /// Stops it as Ctrl-C does and returns every JSON line it printed.
    pub fn stop_lines(mut self) -> Result<Vec<TopLine>> {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self
            .child
            .wait()
            .map_err(|e| format!("wait for pagewatch top: {e}"))?;
        if !status.success() {
            return Err(format!("pagewatch top exited {status}"));
        }
        // The reader ends at the pipe's end, after the last line.
        let mut seen = std::mem::take(&mut self.seen);
        seen.extend(self.lines.iter());
        Ok(seen)
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pagewatch report FILE --expect EXPR`: whether the expectation holds
/// (exit 0) or not (exit 1), its line printed; an error for anything else.
pub fn expect(file: &str, expr: &str) -> Result<bool> {
    let (status, out, err) = pagewatch_tests::run_pagewatch(&["report", file, "--expect", expr]);
    let ok = match status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => {
            return Err(format!(
                "pagewatch report --expect {expr:?}: {}",
                err.trim()
            ));
        }
    };
    println!("  report --expect: {}", format!("{out}{err}").trim());
    Ok(ok)
}

/// `s` on one line, at most `max` characters (for the skip log).
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    flat.chars().take(max).collect()
}
