//! The JSON lines pagewatch writes, as types: [`TopLine`] for `pagewatch
//! top --json` and [`ReportLine`] for `pagewatch report --format json`. Both
//! programs build their lines from these types and nothing else, programs
//! that read the lines can parse them with the same types (the integration
//! tests do), and `pagewatch schema top|report` prints their JSON Schema
//! (also kept in `docs/schema/`, checked against these types by a test).
//!
//! Every line is one JSON object. Which kind it is shows in its keys: a
//! `summary` line, a line with an item key (`transition`, `thp_scans`,
//! `swap_returns`, `thp_coverage`, `hugetlb_pool`, `balloon_episode`,
//! `hugetlb_held`, `process`), `top`'s per-interval `system` line and its
//! per-process lines (fault and reclaim figures beside `pid`), and
//! `report`'s transition lines (a transition group's fields at the top
//! level). Times `t` are seconds since the session started, rounded to the
//! millisecond.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    aggregate::{ProcessStats, SystemStats},
    correlate::{
        balloon::BalloonEpisode,
        hugepages::{PoolSample, VmaThp},
        swap::SwapReturns,
    },
    transition::TransitionGroup,
};

pub use crate::session::{SnapshotWork, ThpScans};

/// Rounds seconds to the millisecond, as every `t` is written.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One line of `pagewatch top --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TopLine {
    /// The last line: totals of the whole run.
    Summary { summary: TopSummary },
    /// One item of an interval (a transition group, khugepaged scans, ...).
    Item(TopItem),
    /// The interval's system-wide figures, after its other lines.
    System(TopSystem),
    /// One process's figures in the interval (a process is a pid and its
    /// start time: a reused pid is another line).
    Process(TopProcess),
}

impl TopLine {
    /// The item of an item line.
    pub fn item(&self) -> Option<&Item> {
        match self {
            Self::Item(i) => Some(&i.item),
            _ => None,
        }
    }

    /// The totals of the summary line.
    pub fn summary(&self) -> Option<&TopSummary> {
        match self {
            Self::Summary { summary } => Some(summary),
            _ => None,
        }
    }

    /// A process line.
    pub fn process(&self) -> Option<&TopProcess> {
        match self {
            Self::Process(p) => Some(p),
            _ => None,
        }
    }

    /// An interval's system line.
    pub fn system(&self) -> Option<&TopSystem> {
        match self {
            Self::System(s) => Some(s),
            _ => None,
        }
    }
}

/// A process's line of `top --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopProcess {
    /// The interval's index, from 1.
    pub interval: u64,
    /// The interval's end, in seconds since the start.
    pub t: f64,
    pub pid: u32,
    /// /proc/PID/stat field 22, in clock ticks since boot: with `pid`, the
    /// process.
    pub start_ticks: u64,
    pub comm: String,
    #[serde(flatten)]
    pub stats: ProcessStats,
}

/// An item line of `top --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopItem {
    pub interval: u64,
    pub t: f64,
    /// The name of the item's process (absent for pool lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(flatten)]
    pub item: Item,
}

/// The per-interval system line of `top --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopSystem {
    pub interval: u64,
    pub t: f64,
    /// Events received in the interval.
    pub events: u64,
    /// Records the kernel could not reserve in the ring buffer, in the
    /// interval.
    pub dropped: u64,
    pub system: SystemStats,
    /// khugepaged/MADV_COLLAPSE scans by the kernel's name for their result.
    pub thp_scan_results: BTreeMap<String, u64>,
    /// Time the interval's snapshot took (null when following no process).
    pub snapshot_ms: Option<f64>,
    /// What the snapshot read again and carried over (null without one).
    pub snapshot: Option<SnapshotWork>,
}

/// The summary line of `top --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TopSummary {
    pub events: u64,
    pub dropped: u64,
    pub dropped_per_cpu: Vec<u64>,
    /// Drops by hook name (hooks without drops left out).
    pub dropped_per_hook: BTreeMap<String, u64>,
    /// Records too short or of unknown hooks.
    pub decode_errors: u64,
    pub intervals: u64,
    pub duration_s: f64,
    /// Faults of the processes shown.
    pub faults: u64,
    /// Processes shown (a reused pid counts twice).
    pub processes: u64,
    pub system: SystemStats,
    pub thp_scan_results: BTreeMap<String, u64>,
    /// Transition groups reported over the run.
    pub transitions: u64,
    /// Attached hooks, by tracepoint (or fentry function).
    pub hooks: Vec<String>,
    pub skipped_hooks: Vec<SkippedHook>,
}

/// A hook that was not attached, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SkippedHook {
    pub hook: String,
    pub reason: String,
}

/// An item line's item, under a key naming its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    /// Pages of one process and VMA that went through one transition for
    /// one cause (`top` only: `report` writes transition groups flat).
    Transition(TransitionGroup),
    /// khugepaged scans of one VMA that ended with one result (`top`).
    ThpScans(ThpScans),
    /// Pages of one process and VMA back from swap in one interval.
    SwapReturns(SwapReturns),
    /// A VMA's PMD-mapped pages, when they changed.
    ThpCoverage(VmaThp),
    /// A hugetlb pool, when it changed.
    HugetlbPool(PoolSample),
    /// One balloon inflation or deflation (`report`).
    BalloonEpisode(BalloonEpisode),
    /// The most hugetlb memory a process held on a node at one snapshot
    /// (`report`).
    HugetlbHeld(HugetlbHeld),
    /// One process of the recording (`report`).
    Process(ProcessSummary),
}

/// Hugetlb memory a process held on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HugetlbHeld {
    pub pid: u32,
    pub node: u64,
    pub max_kb: u64,
}

/// One process of a recording: what its events counted and what its
/// snapshots saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessSummary {
    pub pid: u32,
    pub comm: String,
    pub faults: u64,
    /// Threads seen acting in its events (distinct tids).
    pub threads_seen: u64,
    pub threads_started: u64,
    pub processes_started: u64,
    /// Snapshots that saw it (0: it lived between two and no first
    /// snapshot caught it).
    pub snapshots: u64,
    /// Most pages resident at one snapshot.
    pub max_rss_pages: u64,
}

impl ProcessSummary {
    /// One line: `pid 4711 (app): 12 faults, 1 threads seen (0 started), 0
    /// processes started; 3 snapshots, rss at most 40 pages`.
    pub fn describe(&self) -> String {
        let seen = if self.snapshots == 0 {
            "no snapshot".to_owned()
        } else {
            format!(
                "{} snapshots, rss at most {} pages",
                self.snapshots, self.max_rss_pages
            )
        };
        format!(
            "pid {} ({}): {} faults, {} threads seen ({} started), {} processes started; {seen}",
            self.pid,
            self.comm,
            self.faults,
            self.threads_seen,
            self.threads_started,
            self.processes_started
        )
    }
}

/// One line of `pagewatch report --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ReportLine {
    /// The last line.
    Summary { summary: ReportSummary },
    /// Swap round trips, THP coverage, pools, balloon episodes, hugetlb
    /// held, processes.
    Item(ReportItem),
    /// One transition group, its fields at the top level.
    Transition(ReportTransition),
}

impl ReportLine {
    /// The item of an item line.
    pub fn item(&self) -> Option<&Item> {
        match self {
            Self::Item(i) => Some(&i.item),
            _ => None,
        }
    }

    /// The summary line's fields.
    pub fn summary(&self) -> Option<&ReportSummary> {
        match self {
            Self::Summary { summary } => Some(summary),
            _ => None,
        }
    }

    /// A transition line.
    pub fn transition(&self) -> Option<&ReportTransition> {
        match self {
            Self::Transition(t) => Some(t),
            _ => None,
        }
    }
}

/// An item line of `report --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportItem {
    /// Seconds since the recording started (absent for `hugetlb_held` and
    /// `process` lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<f64>,
    /// The item's process name, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(flatten)]
    pub item: Item,
}

/// A transition line of `report --format json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReportTransition {
    #[serde(flatten)]
    pub transition: TransitionGroup,
    pub t: f64,
    pub comm: String,
}

/// The summary line of `report --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReportSummary {
    /// What was traced, as the user asked for it (`--pid 42`, `-- make`).
    pub target: String,
    /// `uname -r` of the traced machine.
    pub kernel: String,
    pub intervals: u64,
    pub events: u64,
    pub dropped: u64,
    pub transitions: u64,
    /// The snapshots' cost and work, in one sentence (null without
    /// snapshots).
    pub snapshots: Option<String>,
    /// The recording ended with its End record and was read to the end.
    pub complete: bool,
    /// Where and why the recording stops early (null when it does not).
    pub cut: Option<String>,
    /// Records of kinds (or values) this pagewatch does not know, skipped.
    pub skipped_records: u64,
}

/// Which program's lines a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaOf {
    /// `pagewatch top --json`.
    Top,
    /// `pagewatch report --format json`.
    Report,
}

/// The JSON Schema of one program's lines, pretty-printed with a final
/// newline (as `docs/schema/` keeps it).
pub fn schema(of: SchemaOf) -> String {
    let schema = match of {
        SchemaOf::Top => schemars::schema_for!(TopLine),
        SchemaOf::Report => schemars::schema_for!(ReportLine),
    };
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published schemas are the types' own: regenerate them with
    /// `cargo run --release -p pagewatch -- schema top > docs/schema/top.schema.json`
    /// (and `report`) when the types change.
    #[test]
    fn published_schemas_match_the_types() {
        for (of, published, file) in [
            (
                SchemaOf::Top,
                include_str!("../../docs/schema/top.schema.json"),
                "top",
            ),
            (
                SchemaOf::Report,
                include_str!("../../docs/schema/report.schema.json"),
                "report",
            ),
        ] {
            assert!(
                schema(of) == published,
                "docs/schema/{file}.schema.json is not the schema of the types: \
                 regenerate it with `pagewatch schema {file}`"
            );
        }
    }

    #[test]
    fn each_line_parses_back_as_its_kind() {
        let top = [
            r#"{"summary":{"decode_errors":0,"dropped":0,"dropped_per_cpu":[0,0],"dropped_per_hook":{},"duration_s":1.001,"events":5,"faults":5,"hooks":["exceptions/page_fault_user"],"intervals":1,"processes":1,"skipped_hooks":[{"hook":"balloon_inflate","reason":"refused"}],"system":{"direct_reclaim_ns":0,"direct_reclaimed":0,"direct_reclaims":0,"kswapd_ns":0,"kswapd_wakes":0,"memcg_reclaim_ns":0,"memcg_reclaimed":0,"memcg_reclaims":0,"pages_reclaimed":0,"pages_scanned":0,"pages_written":0,"thp_scans":0,"thp_scans_without_page":0,"thp_collapses":0,"thp_collapse_failed":0,"thp_pmd_splits":0,"thp_folio_splits":0,"compactions":0,"compaction_migrated":0,"compaction_failed":0,"pages_migrated":0,"migrate_failed":0,"ksm_merges":0,"oom_kills":0,"forks":0,"new_threads":0,"execs":0,"exits":0,"pages_allocated":0,"pages_freed":0,"balloon_inflated":0,"balloon_deflated":0,"balloon_vmstat_inflated":0,"balloon_vmstat_deflated":0},"thp_scan_results":{},"transitions":0}}"#,
            r#"{"interval":1,"t":1.0,"comm":"pw-thp","transition":{"ts_ns":5,"pid":7,"vma_start":4096,"vma":"","kind":"collapsed_to_thp","cause":"khugepaged","pages":512,"from_node":-1,"to_node":-1}}"#,
            r#"{"interval":1,"t":1.0,"hugetlb_pool":{"ts_ns":5,"size_kb":2048,"node":0,"nr":2,"free":1,"surplus":0,"resv":null}}"#,
        ];
        let kinds: Vec<&str> = top
            .iter()
            .map(|l| match serde_json::from_str::<TopLine>(l).unwrap() {
                TopLine::Summary { .. } => "summary",
                TopLine::Item(TopItem {
                    item: Item::Transition(t),
                    ..
                }) if t.pages == 512 => "transition",
                TopLine::Item(TopItem {
                    item: Item::HugetlbPool(_),
                    comm: None,
                    ..
                }) => "pool",
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["summary", "transition", "pool"]);
        let flat = r#"{"ts_ns":5,"pid":7,"vma_start":4096,"vma":"","kind":"faulted_in","cause":"fault","pages":3,"from_node":-1,"to_node":-1,"t":0.5,"comm":"x"}"#;
        let line: ReportLine = serde_json::from_str(flat).unwrap();
        assert!(
            matches!(line, ReportLine::Transition(ReportTransition { ref comm, .. }) if comm == "x")
        );
        // And a line written is read back as the same value.
        assert_eq!(
            serde_json::from_str::<ReportLine>(&serde_json::to_string(&line).unwrap()).unwrap(),
            line
        );
    }
}
