//! The host side of one guest boot of `cargo xtask test --vm`: reads the
//! console line by line, counts libtest's results and failing tests,
//! records the scenarios' exit codes and why steps failed, and is the scenarios' QMP proxy
//! (`@@pw-vm qmp SEQ REQUEST` on the console; the answer goes to
//! `qmp-SEQ.json` in the guest's `--rwdir`, written atomically).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::qmp::Qmp;
use crate::libtest::Reader;

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
    /// The tests' counts, failures and why steps failed.
    pub tests: Reader,
    /// Seconds since the boot started when the guest's script began.
    pub booted_at: Option<f64>,
    /// The step (binary or scenario) running and when it started.
    pub current: Option<(String, f64)>,
    /// Every finished step and its seconds, in order.
    pub step_secs: Vec<(String, f64)>,
}

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
            tests: Reader::default(),
            booted_at: None,
            current: None,
            step_secs: Vec::new(),
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
                    self.tests.step();
                    self.failures_before = self.tests.failed_tests.len();
                    self.current = Some((label.to_string(), secs));
                }
                ["scenario", name] => {
                    self.tests.step();
                    self.current = Some((format!("scenario {name}"), secs));
                }
                ["binary-exit", label, code]
                    if *code != "0" && self.tests.failed_tests.len() == self.failures_before =>
                {
                    // A binary that died without a failing test line (a crash, a panic in setup).
                    self.tests
                        .failed_tests
                        .push(format!("{label} exited {code}"));
                    self.tests.failed += 1;
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
        let step = self.current.as_ref().map_or("?", |(step, _)| step.as_str());
        self.tests.line(step, line);
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
