//! `pagewatch report FILE --expect EXPR`: conditions on a recording that a
//! test script asserts, one line each (grammar in docs/report.md):
//!
//! ```text
//! collapsed_to_thp{cause=khugepaged,comm=app} >= 512
//! swapped_out{cause=unexplained} <= 1%
//! unexplained <= 1%
//! dropped == 0
//! ```
//!
//! A metric is a transition kind (pages), `transitions` (pages of every
//! kind), `unexplained` (`transitions{cause=unexplained}`), `faults`,
//! `events` or `dropped`; labels narrow it to a cause, a command name or a
//! pid. A percentage compares a share: of the pages with the other labels
//! that have the named cause, of the events that were dropped.

use std::collections::HashMap;

use pagewatch::transition::{Cause, TransitionGroup, TransitionKind};

/// What a recording says, as much as the expectations read.
pub struct Facts<'a> {
    pub transitions: &'a [TransitionGroup],
    /// Command name per pid.
    pub comms: HashMap<u32, &'a str>,
    /// User page faults per pid.
    pub faults: HashMap<u32, u64>,
    /// Events recorded (every event, whichever process).
    pub events: u64,
    /// Events the kernel dropped.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Metric {
    Kind(TransitionKind),
    /// Pages of every kind.
    Transitions,
    Faults,
    Events,
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

const OPS: [(&str, Op); 6] = [
    ("==", Op::Eq),
    ("!=", Op::Ne),
    ("<=", Op::Le),
    (">=", Op::Ge),
    ("<", Op::Lt),
    (">", Op::Gt),
];

impl Op {
    fn holds(self, got: f64, want: f64) -> bool {
        match self {
            Op::Eq => got == want,
            Op::Ne => got != want,
            Op::Lt => got < want,
            Op::Le => got <= want,
            Op::Gt => got > want,
            Op::Ge => got >= want,
        }
    }
}

/// One `--expect` expression, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    text: String,
    metric: Metric,
    cause: Option<Cause>,
    comm: Option<String>,
    pid: Option<u32>,
    op: Op,
    value: f64,
    percent: bool,
}

const METRICS: &str = "a transition kind (faulted_in, collapsed_to_thp, ...), transitions, unexplained, faults, events or dropped";

fn kind_named(name: &str) -> Option<TransitionKind> {
    TransitionKind::ALL
        .into_iter()
        .find(|k| k.to_string() == name)
}

fn cause_named(name: &str) -> Option<Cause> {
    Cause::ALL.into_iter().find(|c| c.to_string() == name)
}

fn names<T: ToString>(all: impl IntoIterator<Item = T>) -> String {
    all.into_iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A label's key and value.
type Label = (String, String);

/// Splits `{a=b,c="d e"}` (after the metric) into key/value pairs; returns
/// them and the text after the `}`.
fn labels(text: &str) -> Result<(Vec<Label>, &str), String> {
    let mut rest = text;
    let mut out = Vec::new();
    loop {
        let (key, after) = rest
            .split_once('=')
            .ok_or("a label needs key=value, and the labels a closing '}'")?;
        let key = key.trim();
        let after = after.trim_start();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let (v, a) = quoted
                .split_once('"')
                .ok_or("a quoted label value has no closing '\"'")?;
            (v.to_owned(), a.trim_start())
        } else {
            let end = after
                .find([',', '}'])
                .ok_or("the labels have no closing '}'")?;
            (after[..end].trim().to_owned(), &after[end..])
        };
        if key.is_empty() || value.is_empty() {
            return Err(format!("empty label key or value in {{{text}"));
        }
        out.push((key.to_owned(), value));
        if let Some(a) = after.strip_prefix(',') {
            rest = a;
        } else if let Some(a) = after.strip_prefix('}') {
            return Ok((out, a));
        } else {
            return Err(format!(
                "expected ',' or '}}' after label {key}, found {:?}",
                after
            ));
        }
    }
}

impl Expectation {
    /// Parses `METRIC[{LABEL=VALUE,...}] OP NUMBER[%]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let name_end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(text.len());
        let (name, mut rest) = text.split_at(name_end);
        if name.is_empty() {
            return Err(format!("{text:?}: no metric: expected {METRICS}"));
        }
        let (metric, mut cause) = match name {
            "transitions" => (Metric::Transitions, None),
            "unexplained" => (Metric::Transitions, Some(Cause::Unexplained)),
            "faults" => (Metric::Faults, None),
            "events" => (Metric::Events, None),
            "dropped" => (Metric::Dropped, None),
            _ => match kind_named(name) {
                Some(k) => (Metric::Kind(k), None),
                None => {
                    return Err(format!(
                        "{text:?}: unknown metric {name:?}: expected {METRICS}; kinds: {}",
                        names(TransitionKind::ALL)
                    ));
                }
            },
        };
        let (mut comm, mut pid) = (None, None);
        rest = rest.trim_start();
        if let Some(inner) = rest.strip_prefix('{') {
            let (pairs, after) = labels(inner).map_err(|e| format!("{text:?}: {e}"))?;
            rest = after;
            let allowed: &[&str] = match metric {
                // `unexplained` names its cause.
                Metric::Kind(_) | Metric::Transitions if cause.is_none() => {
                    &["cause", "comm", "pid"]
                }
                Metric::Kind(_) | Metric::Transitions | Metric::Faults => &["comm", "pid"],
                Metric::Events | Metric::Dropped => &[],
            };
            for (key, value) in pairs {
                if !allowed.contains(&key.as_str()) {
                    let takes = if allowed.is_empty() {
                        "takes no labels".to_owned()
                    } else {
                        format!("takes {}", allowed.join(", "))
                    };
                    return Err(format!("{text:?}: unknown label {key:?}: {name} {takes}"));
                }
                let dup =
                    match key.as_str() {
                        "cause" => cause
                            .replace(cause_named(&value).ok_or_else(|| {
                                format!(
                                    "{text:?}: unknown cause {value:?}; causes: {}",
                                    names(Cause::ALL)
                                )
                            })?)
                            .is_some(),
                        "comm" => comm.replace(value).is_some(),
                        _ => pid
                            .replace(value.parse::<u32>().map_err(|_| {
                                format!("{text:?}: pid {value:?} is not a process id")
                            })?)
                            .is_some(),
                    };
                if dup {
                    return Err(format!("{text:?}: label {key} given twice"));
                }
            }
        }
        rest = rest.trim_start();
        let op_end = rest
            .find(|c: char| !"=!<>".contains(c))
            .unwrap_or(rest.len());
        let (op_text, number) = rest.split_at(op_end);
        let op = OPS
            .iter()
            .find(|(s, _)| *s == op_text)
            .map(|(_, op)| *op)
            .ok_or_else(|| {
                let found = if op_text.is_empty() {
                    format!("found {:?}", rest.chars().take(12).collect::<String>())
                } else {
                    format!("{op_text:?} is not one")
                };
                format!(
                    "{text:?}: expected an operator (== != < <= > >=) after the metric: {found}"
                )
            })?;
        let number = number.trim();
        let (number, percent) = match number.strip_suffix('%') {
            Some(n) => (n.trim_end(), true),
            None => (number, false),
        };
        let value: f64 = number
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{text:?}: {number:?} is not a number like 512, 0.5 or 1%"))?;
        if percent && cause.is_none() && metric != Metric::Dropped {
            return Err(format!(
                "{text:?}: a percentage is a share: of {name}'s pages with a cause (give {{cause=...}}), or of the events dropped (dropped)"
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            metric,
            cause,
            comm,
            pid,
            op,
            value,
            percent,
        })
    }

    /// Whether the process of `pid` passes the comm and pid labels.
    fn process_wanted(&self, f: &Facts<'_>, pid: u32) -> bool {
        self.pid.is_none_or(|p| p == pid)
            && self
                .comm
                .as_deref()
                .is_none_or(|c| f.comms.get(&pid).copied() == Some(c))
    }

    /// Pages of the transitions the metric and labels select, with any
    /// cause (`with_cause` false) or with the named one.
    fn pages(&self, f: &Facts<'_>, with_cause: bool) -> u64 {
        f.transitions
            .iter()
            .filter(|t| match self.metric {
                Metric::Kind(k) => t.kind == k,
                _ => true,
            })
            .filter(|t| !with_cause || self.cause.is_none_or(|c| c == t.cause))
            .filter(|t| self.process_wanted(f, t.pid))
            .map(|t| t.pages)
            .sum()
    }

    /// Whether it holds, with one line saying what was found.
    pub fn check(&self, f: &Facts<'_>) -> Result<String, String> {
        let (got, shown) = match self.metric {
            Metric::Kind(_) | Metric::Transitions if self.percent => {
                let (part, whole) = (self.pages(f, true), self.pages(f, false));
                share(part, whole, "pages")
            }
            Metric::Kind(_) | Metric::Transitions => {
                let n = self.pages(f, true);
                (n as f64, format!("{n} pages"))
            }
            Metric::Faults => {
                let n: u64 = f
                    .faults
                    .iter()
                    .filter(|(pid, _)| self.process_wanted(f, **pid))
                    .map(|(_, n)| n)
                    .sum();
                (n as f64, format!("{n} faults"))
            }
            Metric::Events => (f.events as f64, format!("{} events", f.events)),
            Metric::Dropped if self.percent => share(f.dropped, f.dropped + f.events, "events"),
            Metric::Dropped => (f.dropped as f64, format!("{} events dropped", f.dropped)),
        };
        let line = format!("{}: got {shown}", self.text);
        if self.op.holds(got, self.value) {
            Ok(line)
        } else {
            Err(line)
        }
    }
}

/// Checks every expectation: a line each, `ok` on stdout, failures on
/// stderr; exit status 1 if any failed.
pub fn report(expectations: &[Expectation], f: &Facts<'_>) -> std::process::ExitCode {
    let mut failed = false;
    for e in expectations {
        match e.check(f) {
            Ok(line) => println!("ok: {line}"),
            Err(line) => {
                eprintln!("pagewatch: expectation failed: {line}");
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// `part` as a percentage of `whole` (0% of nothing), and how to show it.
fn share(part: u64, whole: u64, unit: &str) -> (f64, String) {
    let pct = if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    };
    (pct, format!("{pct:.2}% ({part} of {whole} {unit})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(pid: u32, kind: TransitionKind, cause: Cause, pages: u64) -> TransitionGroup {
        TransitionGroup {
            ts_ns: 0,
            pid,
            vma_start: 0,
            vma: String::new(),
            kind,
            cause,
            pages,
            from_node: -1,
            to_node: -1,
        }
    }

    fn facts(t: &[TransitionGroup]) -> Facts<'_> {
        Facts {
            transitions: t,
            comms: HashMap::from([(10, "app"), (20, "other")]),
            faults: HashMap::from([(10, 700), (20, 30)]),
            events: 990,
            dropped: 10,
        }
    }

    fn holds(expr: &str, f: &Facts<'_>) -> bool {
        Expectation::parse(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .check(f)
            .is_ok()
    }

    fn error(expr: &str) -> String {
        Expectation::parse(expr).expect_err(expr)
    }

    fn recording() -> Vec<TransitionGroup> {
        use Cause::*;
        use TransitionKind::*;
        vec![
            group(10, CollapsedToThp, Khugepaged, 512),
            group(10, CollapsedToThp, MadvCollapse, 512),
            group(20, CollapsedToThp, Khugepaged, 512),
            group(10, FaultedIn, Fault, 990),
            group(10, FaultedIn, Unexplained, 10),
        ]
    }

    #[test]
    fn every_operator_compares() {
        let t = recording();
        let f = facts(&t);
        let e = "collapsed_to_thp{cause=khugepaged,comm=app}";
        for (op, at_512, at_511, at_513) in [
            ("==", true, false, false),
            ("!=", false, true, true),
            ("<", false, false, true),
            ("<=", true, false, true),
            (">", false, true, false),
            (">=", true, true, false),
        ] {
            assert_eq!(holds(&format!("{e} {op} 512"), &f), at_512, "{op} 512");
            assert_eq!(holds(&format!("{e} {op} 511"), &f), at_511, "{op} 511");
            assert_eq!(holds(&format!("{e}{op}513"), &f), at_513, "{op}513");
        }
    }

    #[test]
    fn labels_select_kind_cause_process() {
        let t = recording();
        let f = facts(&t);
        assert!(holds("collapsed_to_thp == 1536", &f));
        assert!(holds("collapsed_to_thp{cause=khugepaged} == 1024", &f));
        assert!(holds("collapsed_to_thp{comm=app} == 1024", &f));
        assert!(holds("collapsed_to_thp{pid=20} == 512", &f));
        assert!(holds(r#"collapsed_to_thp{ comm = "other" } == 512"#, &f));
        assert!(holds("collapsed_to_thp{comm=nobody} == 0", &f));
        assert!(holds("transitions == 2536", &f));
        assert!(holds("transitions{comm=app} == 2024", &f));
        assert!(holds("faults{comm=app} == 700", &f));
        assert!(holds("faults == 730", &f));
        assert!(holds("events == 990", &f));
        assert!(holds("dropped == 10", &f));
        assert!(holds("dropped <= 1%", &f));
        assert!(!holds("dropped < 1%", &f));
    }

    #[test]
    fn percentages_are_shares_of_the_cause() {
        let t = recording();
        let f = facts(&t);
        // 10 of 2,536 pages.
        assert!(holds("unexplained <= 0.4%", &f));
        assert!(!holds("unexplained <= 0.3%", &f));
        // 10 of the 1,000 faulted_in pages.
        assert!(holds("faulted_in{cause=unexplained} == 1%", &f));
        assert!(holds("unexplained{comm=other} == 0%", &f));
        let e = Expectation::parse("unexplained <= 0.1%").unwrap();
        assert_eq!(
            e.check(&f).unwrap_err(),
            "unexplained <= 0.1%: got 0.39% (10 of 2536 pages)"
        );
        // Nothing changed: nothing is unexplained.
        assert!(holds("unexplained == 0%", &facts(&[])));
    }

    #[test]
    fn bad_expressions_are_one_clear_error() {
        for (expr, says) in [
            ("colapsed_to_thp >= 1", "unknown metric \"colapsed_to_thp\""),
            ("", "no metric"),
            (">= 5", "no metric"),
            (
                "collapsed_to_thp{cause=kswapd} > 0",
                "unknown cause \"kswapd\"",
            ),
            ("collapsed_to_thp{proc=app} > 0", "unknown label \"proc\""),
            (
                "faults{cause=fault} > 0",
                "unknown label \"cause\": faults takes comm, pid",
            ),
            ("dropped{comm=x} == 0", "dropped takes no labels"),
            (
                "unexplained{cause=fault} > 0",
                "unknown label \"cause\": unexplained takes comm, pid",
            ),
            ("faulted_in{pid=abc} > 0", "pid \"abc\" is not a process id"),
            ("faulted_in{pid=1,pid=2} > 0", "label pid given twice"),
            ("faulted_in{comm=app > 0", "no closing '}'"),
            ("faulted_in{comm} > 0", "key=value"),
            ("faulted_in{comm=\"app} > 0", "closing '\"'"),
            ("faulted_in{comm=\"app\" pid=1} > 0", "expected ',' or '}'"),
            ("faulted_in => 5", "\"=>\" is not one"),
            ("faulted_in = 5", "\"=\" is not one"),
            ("faulted_in <> 5", "\"<>\" is not one"),
            ("faulted_in 5", "expected an operator"),
            ("faulted_in", "expected an operator"),
            ("faulted_in >= 12x", "\"12x\" is not a number"),
            ("faulted_in >= ", "\"\" is not a number"),
            ("faulted_in >= -1", "\"-1\" is not a number"),
            ("faulted_in >= nan", "\"nan\" is not a number"),
            ("faulted_in >= 1%%", "\"1%\" is not a number"),
            ("faulted_in >= 5%", "a percentage is a share"),
            ("events <= 1%", "a percentage is a share"),
        ] {
            let e = error(expr);
            assert!(e.contains(says), "{expr:?}: {e:?} lacks {says:?}");
            assert!(e.starts_with(&format!("{:?}", expr.trim())), "{e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}
