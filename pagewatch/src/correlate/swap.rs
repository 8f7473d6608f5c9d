//! Swap round trips: a page seen swapped out in one snapshot and present
//! again in a later one is matched through the swap entry (type and offset)
//! pagemap showed for it, giving the time it spent in swap.
//!
//! Times have the snapshots' resolution: a page is taken as swapped out at
//! the first snapshot that shows it swapped and as back at the first that
//! shows it present, so each time is within one interval of the truth.
//! Pages already swapped when pagewatch started, and pages that went out
//! and came back between two snapshots, have no known time and are not
//! counted.

use std::collections::{BTreeMap, HashMap};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::PageState;
use crate::snapshot::flags::PM_PFN_MASK;

/// Pages of one process and VMA back from swap in one interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SwapReturns {
    /// CLOCK_MONOTONIC ns of the snapshot that showed them back.
    pub ts_ns: u64,
    pub pid: u32,
    /// Start of the VMA they are in now.
    pub vma_start: u64,
    /// 4 KiB pages back from swap.
    pub pages: u64,
    /// Their time in swap, summed, and the longest.
    pub time_in_swap_ns: u64,
    pub max_ns: u64,
}

impl SwapReturns {
    /// One line: `pid 4711 (app) 0x7f..: 512 pages back from swap after
    /// 1.20 s on average (longest 2.10 s)`.
    pub fn describe(&self, comm: &str) -> String {
        let avg = self.time_in_swap_ns as f64 / self.pages.max(1) as f64 / 1e9;
        format!(
            "pid {} ({comm}) {:#x}: {} pages back from swap after {avg:.2} s on average (longest {:.2} s)",
            self.pid,
            self.vma_start,
            self.pages,
            self.max_ns as f64 / 1e9
        )
    }
}

/// Where each swapped page of the followed processes went, and when.
#[derive(Debug, Default)]
pub struct SwapLedger {
    /// (pid, address) -> (swap entry, ts_ns of the snapshot that first
    /// showed it there).
    out: HashMap<(u32, u64), (u64, u64)>,
    /// Returns seen since the last [`SwapLedger::take`], by (pid, VMA start).
    returns: BTreeMap<(u32, u64), (u64, u64, u64)>,
}

/// The swap entry (type in bits 0-4, offset above) of a swapped page.
fn entry(s: Option<PageState>) -> Option<u64> {
    s.filter(|s| s.swapped()).map(|s| s.pagemap & PM_PFN_MASK)
}

impl SwapLedger {
    /// Takes page `va` of `pid` from its state in the previous snapshot
    /// to its state in the one taken at `ts_ns` (`None`: not mapped),
    /// `vma_start` being its VMA now.
    pub fn observe(
        &mut self,
        pid: u32,
        va: u64,
        vma_start: u64,
        before: Option<PageState>,
        after: Option<PageState>,
        ts_ns: u64,
    ) {
        let (b, a) = (entry(before), entry(after));
        match (b, a) {
            // Newly swapped, or in another slot (it came back and went out
            // again between the snapshots: the return is not seen).
            (_, Some(a)) if b != Some(a) => {
                self.out.insert((pid, va), (a, ts_ns));
            }
            (Some(b), None) => {
                let known = self.out.remove(&(pid, va));
                if let Some((slot, since)) = known
                    && slot == b
                    && after.is_some_and(|s| s.present())
                {
                    let ns = ts_ns.saturating_sub(since);
                    let r = self.returns.entry((pid, vma_start)).or_default();
                    r.0 += 1;
                    r.1 += ns;
                    r.2 = r.2.max(ns);
                }
            }
            _ => {}
        }
    }

    /// The returns seen since the last call, stamped `ts_ns`.
    pub fn take(&mut self, ts_ns: u64) -> Vec<SwapReturns> {
        std::mem::take(&mut self.returns)
            .into_iter()
            .map(
                |((pid, vma_start), (pages, time_in_swap_ns, max_ns))| SwapReturns {
                    ts_ns,
                    pid,
                    vma_start,
                    pages,
                    time_in_swap_ns,
                    max_ns,
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::flags::{PM_PRESENT, PM_SWAP};

    fn swapped(slot: u64) -> Option<PageState> {
        Some(PageState {
            pagemap: PM_SWAP | (slot << 5),
            kflags: 0,
            pmd: false,
        })
    }

    fn present(pfn: u64) -> Option<PageState> {
        Some(PageState {
            pagemap: PM_PRESENT | pfn,
            kflags: 0,
            pmd: false,
        })
    }

    #[test]
    fn a_page_back_from_its_swap_slot_is_a_round_trip_with_its_time() {
        let mut l = SwapLedger::default();
        l.observe(7, 0x1000, 0x1000, present(5), swapped(40), 1_000);
        l.observe(7, 0x2000, 0x1000, present(6), swapped(41), 1_000);
        l.observe(7, 0x1000, 0x1000, swapped(40), swapped(40), 2_000);
        assert!(l.take(2_000).is_empty());
        l.observe(7, 0x1000, 0x1000, swapped(40), present(9), 4_000);
        l.observe(7, 0x2000, 0x1000, swapped(41), present(10), 4_000);
        assert_eq!(
            l.take(4_000),
            vec![SwapReturns {
                ts_ns: 4_000,
                pid: 7,
                vma_start: 0x1000,
                pages: 2,
                time_in_swap_ns: 6_000,
                max_ns: 3_000,
            }]
        );
        assert_eq!(
            SwapReturns {
                ts_ns: 0,
                pid: 7,
                vma_start: 0x1000,
                pages: 2,
                time_in_swap_ns: 3_000_000_000,
                max_ns: 2_000_000_000
            }
            .describe("app"),
            "pid 7 (app) 0x1000: 2 pages back from swap after 1.50 s on average (longest 2.00 s)"
        );
        l.observe(7, 0x1000, 0x1000, present(9), present(9), 5_000);
        assert!(l.take(5_000).is_empty(), "counted once");
    }

    #[test]
    fn unknown_or_changed_slots_and_unmapped_pages_are_not_round_trips() {
        let mut l = SwapLedger::default();
        // Swapped before pagewatch saw it go: no known time.
        l.observe(7, 0x1000, 0x1000, swapped(40), present(9), 4_000);
        // Back and out again between snapshots: a new slot, a new time.
        l.observe(7, 0x2000, 0x1000, present(6), swapped(41), 1_000);
        l.observe(7, 0x2000, 0x1000, swapped(41), swapped(50), 2_000);
        // Unmapped while swapped.
        l.observe(7, 0x3000, 0x1000, present(6), swapped(42), 1_000);
        l.observe(7, 0x3000, 0x1000, swapped(42), None, 2_000);
        assert!(l.take(2_000).is_empty());
        l.observe(7, 0x2000, 0x1000, swapped(50), present(3), 3_000);
        assert_eq!(l.take(3_000)[0].time_in_swap_ns, 1_000);
        l.observe(7, 0x3000, 0x1000, None, present(3), 3_000);
        assert!(l.take(3_000).is_empty());
    }
}
