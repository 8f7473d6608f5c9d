//! System memory state beyond kpageflags: hugetlb pools (global and per
//! NUMA node), THP / mTHP settings and per-size stats (6.10+), and the
//! /proc/vmstat counters for THP, balloon, swap and zswap.

use std::{collections::BTreeMap, path::Path};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::source::ProcRoot;

/// One hugetlb pool (a page size, globally or on one node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HugetlbPool {
    /// Huge page size in kB.
    pub size_kb: u64,
    /// NUMA node, None for the global pool.
    pub node: Option<u32>,
    /// nr_hugepages.
    pub nr: u64,
    /// free_hugepages.
    pub free: u64,
    /// surplus_hugepages.
    pub surplus: u64,
    /// resv_hugepages (global pools only).
    pub resv: Option<u64>,
}

/// THP state and per-size counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ThpState {
    /// transparent_hugepage/enabled (selected value).
    pub enabled: String,
    /// transparent_hugepage/defrag (selected value).
    pub defrag: String,
    /// Per mTHP size (kB): its `enabled` mode and its stats counters.
    pub sizes: BTreeMap<u64, (String, BTreeMap<String, u64>)>,
}

/// Everything in the `--system` section besides the census.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SystemState {
    /// Hugetlb pools, global first then per node.
    pub hugetlb: Vec<HugetlbPool>,
    /// THP state.
    pub thp: ThpState,
    /// vmstat thp_*, balloon_*, pswp*, zswp* counters.
    pub vmstat: BTreeMap<String, u64>,
}

/// A sysfs or procfs file holding one number.
pub(crate) fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The bracketed choice of a sysfs mode file (`always [madvise] never`).
pub fn selected(text: &str) -> String {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(text.trim())
        .to_string()
}

fn size_of_dir(name: &str) -> Option<u64> {
    name.strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()
}

fn pools_in(dir: &Path, node: Option<u32>, out: &mut Vec<HugetlbPool>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut v: Vec<HugetlbPool> = rd
        .flatten()
        .filter_map(|e| {
            let size_kb = size_of_dir(&e.file_name().to_string_lossy())?;
            let p = e.path();
            Some(HugetlbPool {
                size_kb,
                node,
                nr: read_u64(&p.join("nr_hugepages"))?,
                free: read_u64(&p.join("free_hugepages")).unwrap_or(0),
                surplus: read_u64(&p.join("surplus_hugepages")).unwrap_or(0),
                resv: node
                    .is_none()
                    .then(|| read_u64(&p.join("resv_hugepages")).unwrap_or(0)),
            })
        })
        .collect();
    v.sort_by_key(|p| p.size_kb);
    out.extend(v);
}

/// Hugetlb pools under `root`.
pub fn hugetlb_pools(root: &ProcRoot) -> Vec<HugetlbPool> {
    let mut out = Vec::new();
    pools_in(&root.sys_file("kernel/mm/hugepages"), None, &mut out);
    let mut nodes: Vec<u32> = std::fs::read_dir(root.sys_file("devices/system/node"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    for n in nodes {
        pools_in(
            &root.sys_file(&format!("devices/system/node/node{n}/hugepages")),
            Some(n),
            &mut out,
        );
    }
    out
}

/// THP settings and mTHP stats under `root`.
pub fn thp_state(root: &ProcRoot) -> ThpState {
    let base = root.sys_file("kernel/mm/transparent_hugepage");
    let mode = |n: &str| {
        std::fs::read_to_string(base.join(n))
            .map(|t| selected(&t))
            .unwrap_or_default()
    };
    let mut st = ThpState {
        enabled: mode("enabled"),
        defrag: mode("defrag"),
        sizes: BTreeMap::new(),
    };
    if let Ok(rd) = std::fs::read_dir(&base) {
        for e in rd.flatten() {
            let Some(kb) = size_of_dir(&e.file_name().to_string_lossy()) else {
                continue;
            };
            let enabled = std::fs::read_to_string(e.path().join("enabled"))
                .map(|t| selected(&t))
                .unwrap_or_default();
            let mut stats = BTreeMap::new();
            if let Ok(sd) = std::fs::read_dir(e.path().join("stats")) {
                for s in sd.flatten() {
                    if let Some(v) = read_u64(&s.path()) {
                        stats.insert(s.file_name().to_string_lossy().into_owned(), v);
                    }
                }
            }
            st.sizes.insert(kb, (enabled, stats));
        }
    }
    st
}

/// The vmstat counters the snapshot reports, from the text of /proc/vmstat.
pub fn vmstat_counters(text: &str) -> BTreeMap<String, u64> {
    vmstat_where(text, |k| {
        ["thp_", "balloon_", "pswp", "zswp"]
            .iter()
            .any(|p| k.starts_with(p))
    })
}

/// The counters of /proc/vmstat's text whose names `keep` accepts.
pub(crate) fn vmstat_where(text: &str, keep: impl Fn(&str) -> bool) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            keep(k).then(|| Some((k.to_string(), v.trim().parse().ok()?)))?
        })
        .collect()
}

/// The /proc/vmstat counters a tracing session follows (0 where absent): balloon
/// pages, and THP splits, which no x86 tracepoint marks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vmstat {
    pub balloon_inflate: u64,
    pub balloon_deflate: u64,
    pub thp_split_pmd: u64,
    pub thp_split_page: u64,
}

impl Vmstat {
    /// Reads `root`'s /proc/vmstat.
    pub fn read(root: &ProcRoot) -> Self {
        let counters = std::fs::read_to_string(root.proc_file("vmstat"))
            .map(|t| vmstat_counters(&t))
            .unwrap_or_default();
        let get = |k: &str| counters.get(k).copied().unwrap_or(0);
        Self {
            balloon_inflate: get("balloon_inflate"),
            balloon_deflate: get("balloon_deflate"),
            thp_split_pmd: get("thp_split_pmd"),
            thp_split_page: get("thp_split_page"),
        }
    }

    /// Counts since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            balloon_inflate: self.balloon_inflate.saturating_sub(earlier.balloon_inflate),
            balloon_deflate: self.balloon_deflate.saturating_sub(earlier.balloon_deflate),
            thp_split_pmd: self.thp_split_pmd.saturating_sub(earlier.thp_split_pmd),
            thp_split_page: self.thp_split_page.saturating_sub(earlier.thp_split_page),
        }
    }
}

/// Read the whole `--system` state.
pub fn system_state(root: &ProcRoot) -> SystemState {
    SystemState {
        hugetlb: hugetlb_pools(root),
        thp: thp_state(root),
        vmstat: vmstat_counters(
            &std::fs::read_to_string(root.proc_file("vmstat")).unwrap_or_default(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmstat_keeps_thp_balloon_and_swap_counters() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/vmstat"
        ))
        .unwrap();
        let c = vmstat_counters(&text);
        assert!(c.contains_key("thp_fault_alloc"));
        assert!(c.contains_key("balloon_inflate"));
        assert!(c.contains_key("pswpin"));
        assert!(!c.contains_key("nr_free_pages"));
        assert_eq!(selected("always [madvise] never\n"), "madvise");
    }
}
