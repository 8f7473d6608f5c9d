//! Huge pages over time: the per-node hugetlb pools (nr, free, surplus per
//! page size, from sysfs) and each VMA's THP coverage (pages mapped by a
//! PMD, as smaps AnonHugePages/FilePmdMapped count them), reported when
//! they change from one interval to the next. Which process holds hugetlb
//! pages on which node is in [`super::ProcessCounters`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::snapshot::{columns::PageTable, sysfs::HugetlbPool};

/// A per-node hugetlb pool as read at one interval's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PoolSample {
    /// CLOCK_MONOTONIC ns of the read.
    pub ts_ns: u64,
    #[serde(flatten)]
    pub pool: HugetlbPool,
}

impl PoolSample {
    /// One line: `hugetlb pool 2048 kB node 0: nr 4 free 3 surplus 0`.
    pub fn describe(&self) -> String {
        let p = &self.pool;
        let node = p.node.map_or_else(|| "all".to_owned(), |n| n.to_string());
        format!(
            "hugetlb pool {} kB node {node}: nr {} free {} surplus {}",
            p.size_kb, p.nr, p.free, p.surplus
        )
    }
}

/// The THP coverage of one VMA at one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VmaThp {
    /// CLOCK_MONOTONIC ns of the snapshot.
    pub ts_ns: u64,
    pub pid: u32,
    pub vma_start: u64,
    /// The VMA's name as maps shows it (empty for anonymous memory).
    pub vma: String,
    /// The VMA's size in 4 KiB pages (0: it is gone).
    pub vma_pages: u64,
    /// Pages of it mapped by a PMD.
    pub thp_pages: u64,
}

impl VmaThp {
    /// The VMA as maps shows it, `[anon]` for anonymous memory.
    pub fn vma_label(&self) -> &str {
        crate::transition::vma_label(&self.vma)
    }

    /// One line: `pid 4711 (app) [anon] 0x7f..: 4096 of 8192 kB PMD-mapped (50%)`.
    pub fn describe(&self, comm: &str) -> String {
        let vma = self.vma_label();
        if self.vma_pages == 0 {
            return format!(
                "pid {} ({comm}) {vma} {:#x}: gone",
                self.pid, self.vma_start
            );
        }
        format!(
            "pid {} ({comm}) {vma} {:#x}: {} of {} kB PMD-mapped ({:.0}%)",
            self.pid,
            self.vma_start,
            self.thp_pages * 4,
            self.vma_pages * 4,
            self.thp_pages as f64 * 100.0 / self.vma_pages as f64
        )
    }
}

/// What was last reported, to report only changes.
#[derive(Debug, Default)]
pub struct HugepageTracker {
    pools: BTreeMap<(u64, Option<u32>), HugetlbPool>,
    /// (pid, VMA start) -> (name, VMA pages, PMD-mapped pages), for VMAs
    /// with PMD-mapped pages at the last snapshot.
    thp: BTreeMap<(u32, u64), (String, u64, u64)>,
}

impl HugepageTracker {
    /// The per-node pools of `now` (as [`crate::snapshot::sysfs::hugetlb_pools`]
    /// reads them) that are new or changed since the last call.
    pub fn pools(&mut self, now: Vec<HugetlbPool>, ts_ns: u64) -> Vec<PoolSample> {
        now.into_iter()
            .filter(|p| p.node.is_some())
            .filter_map(|pool| {
                let key = (pool.size_kb, pool.node);
                (self.pools.get(&key) != Some(&pool)).then(|| {
                    self.pools.insert(key, pool.clone());
                    PoolSample { ts_ns, pool }
                })
            })
            .collect()
    }

    /// The VMAs of `table` whose PMD-mapped page count changed since the
    /// last call (one that lost them all, or is gone, with 0). The counts
    /// come from each process table's totals: no page is walked here.
    pub fn thp(&mut self, table: &PageTable, ts_ns: u64) -> Vec<VmaThp> {
        let mut now: BTreeMap<(u32, u64), (String, u64, u64)> = BTreeMap::new();
        for p in table.processes() {
            for &(vi, pages) in &p.totals().pmd_thp {
                let meta = &p.vmas[vi as usize];
                now.insert(
                    (p.pid, meta.start),
                    (meta.name.clone(), (meta.end - meta.start) / 4096, pages),
                );
            }
        }
        let mut out = Vec::new();
        for (&(pid, vma_start), (vma, vma_pages, thp_pages)) in &now {
            if self.thp.get(&(pid, vma_start)).map(|t| t.2) != Some(*thp_pages) {
                out.push(VmaThp {
                    ts_ns,
                    pid,
                    vma_start,
                    vma: vma.clone(),
                    vma_pages: *vma_pages,
                    thp_pages: *thp_pages,
                });
            }
        }
        for (&(pid, vma_start), (vma, _, _)) in &self.thp {
            if !now.contains_key(&(pid, vma_start)) {
                out.push(VmaThp {
                    ts_ns,
                    pid,
                    vma_start,
                    vma: vma.clone(),
                    vma_pages: table
                        .vma(pid, vma_start)
                        .map_or(0, |v| (v.end - v.start) / 4096),
                    thp_pages: 0,
                });
            }
        }
        out.sort_by_key(|t| (t.pid, t.vma_start));
        self.thp = now;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::flags::{PM_PRESENT, kpf};

    fn pool(node: Option<u32>, nr: u64, free: u64) -> HugetlbPool {
        HugetlbPool {
            size_kb: 2048,
            node,
            nr,
            free,
            surplus: 0,
            resv: None,
        }
    }

    #[test]
    fn per_node_pools_are_reported_when_they_change() {
        let mut t = HugepageTracker::default();
        let first = t.pools(vec![pool(None, 2, 2), pool(Some(0), 2, 2)], 1);
        assert_eq!(first.len(), 1, "global pools are left out: {first:?}");
        assert!(t.pools(vec![pool(Some(0), 2, 2)], 2).is_empty());
        let changed = t.pools(vec![pool(Some(0), 2, 1), pool(Some(1), 0, 0)], 3);
        assert_eq!(
            changed[0].describe(),
            "hugetlb pool 2048 kB node 0: nr 2 free 1 surplus 0"
        );
        assert_eq!(
            changed,
            vec![
                PoolSample {
                    ts_ns: 3,
                    pool: pool(Some(0), 2, 1)
                },
                PoolSample {
                    ts_ns: 3,
                    pool: pool(Some(1), 0, 0)
                }
            ]
        );
    }

    fn table(pmd_pages: usize) -> PageTable {
        table_with(pmd_pages, 0)
    }

    fn table_with(pmd_pages: usize, kflags: u64) -> PageTable {
        let n = 1024;
        crate::snapshot::columns::test_table(
            9,
            0x4000_0000,
            (0..n as u32).collect(),
            (0..n as u64).map(|i| PM_PRESENT | (0x1000 + i)).collect(),
            vec![kflags; n],
            (0..n).map(|i| i < pmd_pages).collect(),
        )
    }

    #[test]
    fn thp_coverage_is_reported_per_vma_when_it_changes() {
        let mut t = HugepageTracker::default();
        assert!(t.thp(&table(0), 1).is_empty());
        let up = t.thp(&table(1024), 2);
        assert_eq!(
            (up.len(), up[0].thp_pages, up[0].vma_pages),
            (1, 1024, 1024)
        );
        assert_eq!(
            up[0].describe("x"),
            "pid 9 (x) [anon] 0x40000000: 4096 of 4096 kB PMD-mapped (100%)"
        );
        assert!(t.thp(&table(1024), 3).is_empty());
        assert_eq!(t.thp(&table(512), 4)[0].thp_pages, 512);
        let gone = t.thp(&table(0), 5);
        assert_eq!((gone[0].thp_pages, gone[0].vma_pages), (0, 1024));
        assert!(t.thp(&PageTable::default(), 6).is_empty());
        assert!(
            t.thp(&table_with(1024, 1 << kpf::HUGE), 7).is_empty(),
            "hugetlb is not THP"
        );
    }
}
