//! Planning reads of /proc/kpage* for a set of PFNs: the runs of wanted
//! PFNs are merged into preads when closer than [`GAP`] entries, and the
//! values land in one array.
//!
//! Dense sets (many PFNs per 64-PFN chunk of their span, as 4 KiB pages
//! are) are planned without sorting: PFNs are bucketed into 64-PFN chunks
//! (one pass for the bounds, one setting a bit per wanted PFN), O(n) plus
//! O(span / 64), and [`PfnPlan::get`] finds a PFN's value in O(1). Sparse
//! sets (the heads of 2 MiB folios, 512 PFNs apart over all of memory)
//! are sorted instead, and `get` searches the reads. Either way each
//! needed entry is read once (the kernel charges ~50 ns per entry, so
//! reading a few unneeded ones is cheaper than another syscall).

use std::io;

use super::source::{BATCH_ENTRIES, U64Table};

const CHUNK: u64 = 64;
/// Merge spans closer than this many entries.
pub const GAP: u64 = 16;
/// Sets with fewer PFNs than one per this many chunks of their span are
/// planned by sorting (the bitmap would cost more than the sort).
const SPARSE: usize = 4;

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
        let (mut min, mut max, mut n) = (u64::MAX, 0, 0usize);
        each(&mut |p| {
            min = min.min(p);
            max = max.max(p);
            n += 1;
        });
        if min > max {
            return PfnPlan::default();
        }
        let base = min - min % CHUNK;
        let chunks = ((max - base) / CHUNK + 1) as usize;
        if n < chunks / SPARSE {
            return Self::sorted(each, n);
        }
        // One bit per PFN: only the wanted entries are read (the kernel
        // charges per entry), gaps of up to GAP entries are read through.
        let mut bits = vec![0u64; chunks];
        each(&mut |p| {
            let c = ((p - base) / CHUNK) as usize;
            bits[c] |= 1u64 << ((p - base) % CHUNK);
        });
        let mut plan = PfnPlan {
            base,
            chunk_range: vec![u32::MAX; chunks],
            ranges: Vec::new(),
            total: 0,
        };
        for (c, &word) in bits.iter().enumerate() {
            let mut m = word;
            let mut first = true;
            while m != 0 {
                let lo = m.trailing_zeros();
                let len = (!(m >> lo)).trailing_zeros();
                m = if lo + len >= 64 {
                    0
                } else {
                    m & !(((1u64 << len) - 1) << lo)
                };
                let s = base + c as u64 * CHUNK + u64::from(lo);
                plan.add_span(s, s + u64::from(len));
                if first {
                    plan.chunk_range[c] = (plan.ranges.len() - 1) as u32;
                    first = false;
                }
            }
        }
        plan
    }

    /// Plan a sparse set by sorting it; `get` then searches the ranges.
    fn sorted(each: impl Fn(&mut dyn FnMut(u64)), n: usize) -> Self {
        let mut pfns = Vec::with_capacity(n);
        each(&mut |p| pfns.push(p));
        pfns.sort_unstable();
        pfns.dedup();
        let mut plan = PfnPlan::default();
        for p in pfns {
            plan.add_span(p, p + 1);
        }
        plan
    }

    /// Add entries `s..e` (above every planned one) to the reads.
    fn add_span(&mut self, s: u64, e: u64) {
        match self.ranges.last_mut() {
            Some(r) if s <= r.start + r.len + GAP && e - r.start <= BATCH_ENTRIES as u64 => {
                self.total += (e - (r.start + r.len)) as usize;
                r.len = e - r.start;
            }
            _ => {
                self.ranges.push(Range {
                    start: s,
                    len: e - s,
                    off: self.total,
                });
                self.total += (e - s) as usize;
            }
        }
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

    /// Size `values` for the plan (zeroed) and split the reads into two
    /// parts of about equal entries, each with its share of `values`, so
    /// two threads can read one table.
    pub fn halves<'a>(&'a self, values: &'a mut Vec<u64>) -> [PlanPart<'a>; 2] {
        values.clear();
        values.resize(self.total, 0);
        let m = self
            .ranges
            .iter()
            .position(|r| r.off >= self.total / 2)
            .unwrap_or(self.ranges.len());
        let at = self.ranges.get(m).map_or(self.total, |r| r.off);
        let (a, b) = values.split_at_mut(at);
        let (ra, rb) = self.ranges.split_at(m);
        [
            PlanPart {
                ranges: ra,
                values: a,
                off: 0,
            },
            PlanPart {
                ranges: rb,
                values: b,
                off: at,
            },
        ]
    }

    /// The value read for `pfn`, which must be one of the planned PFNs.
    #[inline]
    pub fn get(&self, values: &[u64], pfn: u64) -> u64 {
        let mut i = if self.chunk_range.is_empty() {
            // Sorted plan: the last range starting at or below `pfn`.
            self.ranges.partition_point(|r| r.start <= pfn) - 1
        } else {
            // A chunk's PFNs can lie in a few ranges: start at its first one.
            self.chunk_range[((pfn - self.base) / CHUNK) as usize] as usize
        };
        while pfn >= self.ranges[i].start + self.ranges[i].len {
            i += 1;
        }
        let r = self.ranges[i];
        values[r.off + (pfn - r.start) as usize]
    }
}

/// Some of a plan's reads with the part of the values they fill (see
/// [`PfnPlan::halves`]).
#[derive(Debug)]
pub struct PlanPart<'a> {
    ranges: &'a [Range],
    values: &'a mut [u64],
    off: usize,
}

impl PlanPart<'_> {
    /// Read this part's entries of `table` (left zero without a table).
    pub fn read(self, table: Option<&U64Table>) -> io::Result<()> {
        if let Some(t) = table {
            for r in self.ranges {
                let o = r.off - self.off;
                t.read_into(r.start, &mut self.values[o..o + r.len as usize])?;
            }
        }
        Ok(())
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
        // Two halves cover every range once, each value at its offset.
        let mut v = vec![7u64; 3];
        let [a, b] = plan.halves(&mut v);
        assert_eq!(a.ranges.len() + b.ranges.len(), plan.preads());
        assert_eq!(a.values.len() + b.values.len(), plan.entries());
        assert_eq!(b.off, a.values.len());
        assert!(v.iter().all(|x| *x == 0));
    }

    #[test]
    fn sparse_plans_sort_and_find_values() {
        // Folio heads 512 apart, plus two neighbours merged into one read.
        let pfns: Vec<u64> = (0..100u64)
            .map(|i| 1_000_000 - i * 512)
            .chain([5, 6])
            .collect();
        let plan = PfnPlan::new(|f| pfns.iter().for_each(|p| f(*p)));
        assert!(plan.chunk_range.is_empty(), "planned as sparse");
        assert_eq!((plan.preads(), plan.entries()), (101, 102));
        let values: Vec<u64> = plan
            .ranges
            .iter()
            .flat_map(|r| r.start..r.start + r.len)
            .collect();
        for p in pfns {
            assert_eq!(plan.get(&values, p), p);
        }
    }
}
