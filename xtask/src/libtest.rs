//! Reading what libtest and the VM scenarios print, line by line: the
//! passed and failed counts, the failing tests, and why each step failed
//! (a test's panic message, a scenario's FAIL checks), and what passed
//! only on a second try or as a known issue. The closing
//! summaries of `cargo xtask test` repeat the reasons, since a CI log may
//! keep only its tail.

/// At most this many [`Reader::why`] lines.
const WHY_LINES: usize = 40;

/// At most this many characters of one [`Reader::why`] line.
const WHY_CHARS: usize = 400;

/// What a stream of test output has said so far.
#[derive(Debug, Default)]
pub struct Reader {
    pub passed: u64,
    pub failed: u64,
    /// `STEP TEST` of every test libtest reported as FAILED.
    pub failed_tests: Vec<String>,
    /// `STEP[ TEST]: LINE` for each line that says why something failed.
    pub why: Vec<String>,
    /// `STEP: LINE` for each `FLAKY:` or `KNOWN ISSUE:` line: not failures,
    /// but not passes to keep quiet about either.
    pub flaky: Vec<String>,
    /// The test whose captured output libtest is printing.
    test: Option<String>,
    /// The previous line said a thread panicked: this one is the message.
    after_panic: bool,
}

impl Reader {
    /// A new step (a test binary, a scenario) begins.
    pub fn step(&mut self) {
        self.test = None;
        self.after_panic = false;
    }

    /// Reads one line of the step `step`.
    pub fn line(&mut self, step: &str, line: &str) {
        let line = line.trim();
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            self.test = Some(name.to_string());
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed_tests.push(format!("{step} {name}"));
        }
        if let Some((p, f)) = result(line) {
            self.passed += p;
            self.failed += f;
        }
        let says_why = self.after_panic || line.starts_with("FAIL ") || line.contains(": FAILED: ");
        self.after_panic = line.starts_with("thread '") && line.contains("panicked at");
        let cut = || -> String {
            let cut: String = line.chars().take(WHY_CHARS).collect();
            match &self.test {
                Some(test) => format!("{step} {test}: {cut}"),
                None => format!("{step}: {cut}"),
            }
        };
        if says_why && self.why.len() < WHY_LINES {
            self.why.push(cut());
        }
        let flaky = line.starts_with("FLAKY: ") || line.starts_with("KNOWN ISSUE: ");
        if flaky && self.flaky.len() < WHY_LINES {
            self.flaky.push(cut());
        }
    }
}

/// Reads libtest's `test result: ok. 6 passed; 0 failed; ...` line.
fn result(line: &str) -> Option<(u64, u64)> {
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
        assert_eq!(super::result(line), Some((6, 1)));
        let ok = "test result: ok. 27 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.23s";
        assert_eq!(super::result(ok), Some((27, 0)));
        assert_eq!(super::result("running 6 tests"), None);
    }

    #[test]
    fn keeps_the_failing_tests_and_why_they_failed() {
        let mut r = super::Reader::default();
        for line in [
            "test record_x ... FAILED",
            "failures:",
            "---- record_x stdout ----",
            "thread 'record_x' panicked at tests/tests/record.rs:1:2:",
            "collapsed 1202 of 2048 pages",
            "more detail nobody needs in the summary",
            "test result: FAILED. 6 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 4.16s",
        ] {
            r.line("test:record", line);
        }
        r.step();
        for line in [
            "  ok   census OFFLINE pages: 1 (expected 1)",
            "  FAIL map blocks hold at most its OFFLINE pages",
            "pw-vm-scenario balloon: FAILED: map blocks hold at most its OFFLINE pages",
            "  FLAKY: the first recorded run differed",
        ] {
            r.line("scenario balloon", line);
        }
        assert_eq!((r.passed, r.failed), (6, 1));
        assert_eq!(r.failed_tests, ["test:record record_x"]);
        assert_eq!(
            r.why,
            [
                "test:record record_x: collapsed 1202 of 2048 pages",
                "scenario balloon: FAIL map blocks hold at most its OFFLINE pages",
                "scenario balloon: pw-vm-scenario balloon: FAILED: map blocks hold at most its OFFLINE pages",
            ]
        );
        assert_eq!(
            r.flaky,
            ["scenario balloon: FLAKY: the first recorded run differed"]
        );
    }
}
