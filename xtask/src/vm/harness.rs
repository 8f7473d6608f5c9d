//! The host side of one guest boot of `cargo xtask test --vm`: reads the
//! console line by line, counts libtest's results and failing tests,
//! records the scenarios' exit codes, and is the scenarios' QMP proxy
//! (`@@pw-vm qmp SEQ REQUEST` on the console; the answer goes to
//! `qmp-SEQ.json` in the guest's `--rwdir`, written atomically).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::qmp::Qmp;

/// What the console has told us so far in one boot.
pub struct Harness {
    pub kernel: String,
    /// The guest size the balloon is reset to after each scenario.
    pub memory_mib: u64,
    pub finished: bool,
    pub rw: PathBuf,
    pub qmp_path: PathBuf,
    pub qmp: Option<Qmp>,
    pub binary: Option<String>,
    pub failures_before: usize,
    pub scenario_exits: Vec<(String, i32)>,
    pub passed: u64,
    pub failed: u64,
    pub failed_tests: Vec<String>,
    /// Seconds since the boot started when the guest's script began.
    pub booted_at: Option<f64>,
    /// The step (binary or scenario) running and when it started.
    pub current: Option<(String, f64)>,
    /// Every finished step and its seconds, in order.
    pub step_secs: Vec<(String, f64)>,
    /// Why steps failed, as the console said it (a scenario's FAIL checks,
    /// a test's panic message), each after its step: the summary repeats
    /// them, since a CI log may keep only its tail.
    pub why: Vec<String>,
    /// The test whose captured output libtest is printing.
    test: Option<String>,
    /// The previous line said a thread panicked: this one is the message.
    after_panic: bool,
}

/// At most this many [`Harness::why`] lines per boot.
const WHY_LINES: usize = 40;

impl Harness {
    pub fn new(kernel: String, memory_mib: u64, rw: PathBuf, qmp_path: PathBuf) -> Self {
        Self {
            kernel,
            memory_mib,
            finished: false,
            rw,
            qmp_path,
            qmp: None,
            binary: None,
            failures_before: 0,
            scenario_exits: Vec::new(),
            passed: 0,
            failed: 0,
            failed_tests: Vec::new(),
            booted_at: None,
            current: None,
            step_secs: Vec::new(),
            why: Vec::new(),
            test: None,
            after_panic: false,
        }
    }

    /// Reads one console line, `secs` seconds after the boot started.
    pub fn line(&mut self, line: &str, secs: f64) {
        if let Some(at) = line.find("@@pw-vm ") {
            let words: Vec<&str> = line[at + 8..].split_whitespace().collect();
            if let ["binary" | "binary-exit" | "scenario" | "scenario-exit", ..] | ["end"] =
                words.as_slice()
                && let Some((name, from)) = self.current.take()
            {
                self.step_secs.push((name, secs - from));
            }
            match words.as_slice() {
                ["begin", ..] => {
                    // A retried boot starts over.
                    *self = Harness::new(
                        self.kernel.clone(),
                        self.memory_mib,
                        self.rw.clone(),
                        self.qmp_path.clone(),
                    );
                    self.booted_at = Some(secs);
                    self.current = Some(("guest setup".into(), secs));
                }
                ["binary", label] => {
                    self.binary = Some(label.to_string());
                    self.test = None;
                    self.failures_before = self.failed_tests.len();
                    self.current = Some((label.to_string(), secs));
                }
                ["scenario", name] => self.current = Some((format!("scenario {name}"), secs)),
                ["binary-exit", label, code]
                    if *code != "0" && self.failed_tests.len() == self.failures_before =>
                {
                    // A binary that died without a failing test line (a crash, a panic in setup).
                    self.failed_tests.push(format!("{label} exited {code}"));
                    self.failed += 1;
                }
                ["scenario-exit", name, code] => {
                    self.scenario_exits
                        .push((name.to_string(), code.parse().unwrap_or(-1)));
                    // Whatever the scenario did, the next one starts from a full guest.
                    let _ = self.qmp_request(&["balloon", &(self.memory_mib << 20).to_string()]);
                }
                ["qmp", seq, request @ ..] => {
                    let reply = match self.qmp_request(request) {
                        Ok(v) => v,
                        Err(e) => json!({ "error": format!("{e:#}") }),
                    };
                    eprintln!("[{}] qmp {seq} {request:?} -> {reply}", self.kernel);
                    let tmp = self.rw.join(format!(".qmp-{seq}.json"));
                    let dst = self.rw.join(format!("qmp-{seq}.json"));
                    if std::fs::write(&tmp, reply.to_string()).is_ok() {
                        let _ = std::fs::rename(&tmp, &dst);
                    }
                }
                ["end"] => self.finished = true,
                _ => {}
            }
            return;
        }
        self.note_why(line.trim());
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed_tests
                .push(format!("{} {name}", self.binary.as_deref().unwrap_or("?")));
        }
        if let Some((p, f)) = test_result(line.trim()) {
            self.passed += p;
            self.failed += f;
        }
    }

    /// Keeps `line` in [`Harness::why`] if it says why a step failed.
    fn note_why(&mut self, line: &str) {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.test = Some(name.to_string());
        }
        let failed = self.after_panic || line.starts_with("FAIL ") || line.contains(": FAILED: ");
        self.after_panic = line.starts_with("thread '") && line.contains("panicked at");
        if !failed || self.why.len() >= WHY_LINES {
            return;
        }
        let step = match (&self.current, &self.test) {
            (Some((step, _)), Some(test)) if self.binary.as_deref() == Some(step) => {
                format!("{step} {test}")
            }
            (Some((step, _)), _) => step.clone(),
            (None, _) => "?".into(),
        };
        let cut: String = line.chars().take(400).collect();
        self.why.push(format!("{step}: {cut}"));
    }

    fn qmp_request(&mut self, request: &[&str]) -> anyhow::Result<Value> {
        if self.qmp.is_none() {
            self.qmp = Some(Qmp::connect(&self.qmp_path, Duration::from_secs(5))?);
        }
        let qmp = self.qmp.as_mut().expect("connected above");
        let bytes = |s: &str| -> anyhow::Result<u64> {
            s.parse()
                .with_context(|| format!("bad byte count {s:?} in a QMP request"))
        };
        match request {
            ["balloon", b] => {
                qmp.set_balloon(bytes(b)?)?;
                Ok(json!({ "ok": true }))
            }
            ["query-balloon"] => Ok(json!({ "actual": qmp.balloon_actual()? })),
            ["wait-balloon", b, secs] => {
                let actual = qmp.wait_balloon(bytes(b)?, Duration::from_secs(bytes(secs)?))?;
                let changes = qmp
                    .events
                    .iter()
                    .filter(|e| e["event"] == "BALLOON_CHANGE")
                    .count();
                Ok(json!({ "actual": actual, "balloon_change_events": changes }))
            }
            other => bail!("unknown QMP request {other:?}"),
        }
    }
}

/// Reads libtest's `test result: ok. 6 passed; 1 failed; ...` line.
fn test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let num = |word: &str| {
        rest.split([';', '.'])
            .find_map(|part| part.trim().strip_suffix(word)?.trim().parse().ok())
    };
    Some((num("passed")?, num("failed")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libtest_result_lines() {
        let line = "test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.16s";
        assert_eq!(super::test_result(line), Some((6, 1)));
        let ok = "test result: ok. 27 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.23s";
        assert_eq!(super::test_result(ok), Some((27, 0)));
        assert_eq!(super::test_result("running 6 tests"), None);
    }

    #[test]
    fn keeps_why_steps_failed() {
        let mut h = super::Harness::new("k".into(), 2048, "/nonexistent".into(), "/q".into());
        for (i, line) in [
            "@@pw-vm begin 6.1",
            "@@pw-vm binary test:record",
            "---- record_x stdout ----",
            "thread 'record_x' panicked at tests/tests/record.rs:1:2:",
            "collapsed 1202 of 2048 pages",
            "more detail nobody needs in the summary",
            "@@pw-vm binary-exit test:record 101",
            "@@pw-vm scenario balloon",
            "  ok   census OFFLINE pages: 1 (expected 1)",
            "  FAIL map blocks hold at most its OFFLINE pages",
            "pw-vm-scenario balloon: FAILED: map blocks hold at most its OFFLINE pages",
        ]
        .iter()
        .enumerate()
        {
            h.line(line, i as f64);
        }
        assert_eq!(
            h.why,
            [
                "test:record record_x: collapsed 1202 of 2048 pages",
                "scenario balloon: FAIL map blocks hold at most its OFFLINE pages",
                "scenario balloon: pw-vm-scenario balloon: FAILED: map blocks hold at most its OFFLINE pages",
            ]
        );
    }
}
