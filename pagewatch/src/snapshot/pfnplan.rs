//! Planning reads of /proc/kpage* for a set of PFNs without sorting them:
//! PFNs are bucketed into 64-PFN chunks (one pass for the bounds, one for
//! the chunks' lowest and highest wanted offsets), and the chunks' spans
//! are merged into preads when closer than [`GAP`] entries. The values land
//! in one array; [`PfnPlan::get`] finds a PFN's value in O(1).
//!
//! This is O(n) in the PFNs plus O(span / 64) in the address range, and
//! reads each needed entry once (the kernel charges ~50 ns per entry, so
//! reading a few unneeded ones is cheaper than another syscall).

use std::io;

use super::source::{BATCH_ENTRIES, U64Table};

const CHUNK: u64 = 64;
/// Merge spans closer than this many entries.
pub const GAP: u64 = 16;

/// One pread: `len` entries from `start`, stored at `off` in the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    len: u64,
    off: usize,
}

/// Where each wanted PFN's entry is read from and stored.
#[derive(Debug, Default)]
pub struct PfnPlan {
    base: u64,
    chunk_range: Vec<u32>,
    ranges: Vec<Range>,
    total: usize,
}

impl PfnPlan {
    /// Plan reads for the PFNs that `each` yields (it is called twice).
    pub fn new(each: impl Fn(&mut dyn FnMut(u64))) -> Self {
        let (mut min, mut max) = (u64::MAX, 0);
        each(&mut |p| {
            min = min.min(p);
            max = max.max(p);
        });
        if min > max {
            return PfnPlan::default();
        }
        let base = min - min % CHUNK;
        let chunks = ((max - base) / CHUNK + 1) as usize;
        let mut lo = vec![u8::MAX; chunks];
        let mut hi = vec![0u8; chunks];
        each(&mut |p| {
            let c = ((p - base) / CHUNK) as usize;
            let o = ((p - base) % CHUNK) as u8;
            lo[c] = lo[c].min(o);
            hi[c] = hi[c].max(o);
        });
        let mut plan = PfnPlan {
            base,
            chunk_range: vec![u32::MAX; chunks],
            ranges: Vec::new(),
            total: 0,
        };
        for c in 0..chunks {
            if lo[c] == u8::MAX {
                continue;
            }
            let s = base + c as u64 * CHUNK + u64::from(lo[c]);
            let e = base + c as u64 * CHUNK + u64::from(hi[c]) + 1;
            match plan.ranges.last_mut() {
                Some(r) if s <= r.start + r.len + GAP && e - r.start <= BATCH_ENTRIES as u64 => {
                    plan.total += (e - (r.start + r.len)) as usize;
                    r.len = e - r.start;
                }
                _ => {
                    plan.ranges.push(Range {
                        start: s,
                        len: e - s,
                        off: plan.total,
                    });
                    plan.total += (e - s) as usize;
                }
            }
            plan.chunk_range[c] = (plan.ranges.len() - 1) as u32;
        }
        plan
    }

    /// Number of entries the plan reads.
    pub fn entries(&self) -> usize {
        self.total
    }

    /// Number of preads the plan makes.
    pub fn preads(&self) -> usize {
        self.ranges.len()
    }

    /// Read the planned entries of `table` into `values`, reusing its
    /// memory (all zero without a table).
    pub fn read_into(&self, table: Option<&U64Table>, values: &mut Vec<u64>) -> io::Result<()> {
        values.clear();
        values.resize(self.total, 0);
        if let Some(t) = table {
            for r in &self.ranges {
                t.read_into(r.start, &mut values[r.off..r.off + r.len as usize])?;
            }
        }
        Ok(())
    }

    /// The value read for `pfn`, which must be one of the planned PFNs.
    pub fn get(&self, values: &[u64], pfn: u64) -> u64 {
        let c = ((pfn - self.base) / CHUNK) as usize;
        let r = self.ranges[self.chunk_range[c] as usize];
        values[r.off + (pfn - r.start) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_merge_near_pfns_and_find_values() {
        let pfns = [1000u64, 1001, 1003, 70, 5000, 5001, 1002, 1040];
        let plan = PfnPlan::new(|f| pfns.iter().for_each(|p| f(*p)));
        // 70; 1000..=1003 in one read; 1040 (more than GAP past 1003);
        // 5000..=5001.
        assert_eq!(plan.preads(), 4);
        let values: Vec<u64> = plan
            .ranges
            .iter()
            .flat_map(|r| r.start..r.start + r.len)
            .collect();
        assert_eq!(values.len(), plan.entries());
        for p in pfns {
            assert_eq!(plan.get(&values, p), p);
        }
        assert_eq!(PfnPlan::new(|_| {}).entries(), 0);
    }
}
