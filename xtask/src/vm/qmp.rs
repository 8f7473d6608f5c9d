//! A minimal QMP (QEMU Machine Protocol) client over QEMU's unix socket:
//! the greeting and `qmp_capabilities`, commands with their `return`, and
//! the asynchronous events (BALLOON_CHANGE) that arrive in between, kept
//! for the caller.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received while waiting for replies, oldest first.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path`, waiting up to `wait` for QEMU to create it.
    pub fn connect(path: &Path, wait: Duration) -> anyhow::Result<Self> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < wait => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("cannot connect to QMP socket {}", path.display())
                    });
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .context("cannot set a QMP read timeout")?;
        let writer = stream.try_clone().context("cannot clone the QMP socket")?;
        let mut qmp = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            bail!(
                "{}: expected a QMP greeting, got {greeting}",
                path.display()
            );
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .with_context(|| format!("reading QMP socket {}", self.path.display()))?;
        if n == 0 {
            bail!("QMP socket {} closed (QEMU exited?)", self.path.display());
        }
        serde_json::from_str(&line)
            .with_context(|| format!("bad QMP message from {}: {line:?}", self.path.display()))
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> anyhow::Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(self.writer, "{msg}")
            .with_context(|| format!("sending {command} to QMP {}", self.path.display()))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {command} failed: {e}");
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Asks the balloon driver for a guest size of `bytes`.
    pub fn set_balloon(&mut self, bytes: u64) -> anyhow::Result<()> {
        self.execute("balloon", Some(json!({ "value": bytes })))
            .map(|_| ())
    }

    /// The guest size the balloon reports now (`query-balloon` `actual`).
    pub fn balloon_actual(&mut self) -> anyhow::Result<u64> {
        let r = self.execute("query-balloon", None)?;
        r.get("actual")
            .and_then(Value::as_u64)
            .with_context(|| format!("query-balloon returned no actual: {r}"))
    }

    /// Waits until `query-balloon` reports `bytes`, up to `timeout`; returns
    /// the last value seen.
    pub fn wait_balloon(&mut self, bytes: u64, timeout: Duration) -> anyhow::Result<u64> {
        let start = Instant::now();
        loop {
            let actual = self.balloon_actual()?;
            if actual == bytes || start.elapsed() > timeout {
                return Ok(actual);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
