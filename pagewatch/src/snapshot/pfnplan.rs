//! Planning reads of /proc/kpage* for the PFNs of a batch of pagemap
//! entries, and storing the values read back per entry.
//!
//! The wanted entries are taken in address order as runs of consecutive
//! PFNs, ascending or descending (4 KiB pages faulted in one after another
//! mostly get neighbouring PFNs, so a batch has far fewer runs than pages;
//! a folded PMD block is a run of one). The runs are sorted by PFN and merged into one pread
//! when they overlap or are at most [`GAP`] entries apart; each run then
//! knows where its values land, and storing them is one copy per run, with
//! no per-page lookup. The kernel charges per entry read (~50-90 ns for
//! kpageflags, a little less for kpagecgroup) plus ~0.4 us per pread, so a
//! gap is read through only when that is cheaper than another pread.
//! Plans keep their memory from batch to batch.

use std::io;

use super::source::U64Table;

/// Read through gaps of at most this many unwanted entries (about one
/// pread's fixed cost).
pub const GAP: u64 = 4;

/// Wanted entries `k..k + len` have PFNs `pfn..pfn + len`, in that order
/// or, when `down`, in the reverse one; their values are at
/// `off..off + len` once read.
#[derive(Debug, Clone, Copy)]
struct Run {
    pfn: u64,
    k: u32,
    len: u32,
    off: u32,
    down: bool,
}

/// One pread: `len` entries from `start`, stored at `off` in the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    start: u64,
    len: u64,
    off: usize,
}

/// Where each wanted entry's kpage* value is read from and stored.
#[derive(Debug, Default)]
pub struct PfnPlan {
    runs: Vec<Run>,
    ranges: Vec<Range>,
    total: usize,
}

impl PfnPlan {
    /// Plan reads for the wanted entries, given as `(entry index, PFN)` in
    /// increasing entry index order (indices below 2^32), replacing the
    /// previous plan.
    pub fn plan(&mut self, wanted: impl Iterator<Item = (usize, u64)>) {
        self.runs.clear();
        self.ranges.clear();
        self.total = 0;
        for (k, pfn) in wanted {
            let k = k as u32;
            match self.runs.last_mut() {
                Some(r) if r.k + r.len == k && !r.down && r.pfn + u64::from(r.len) == pfn => {
                    r.len += 1
                }
                Some(r) if r.k + r.len == k && (r.down || r.len == 1) && pfn + 1 == r.pfn => {
                    (r.pfn, r.down) = (pfn, true);
                    r.len += 1;
                }
                _ => self.runs.push(Run {
                    pfn,
                    k,
                    len: 1,
                    off: 0,
                    down: false,
                }),
            }
        }
        self.runs.sort_unstable_by_key(|r| r.pfn);
        for r in &mut self.runs {
            let end = r.pfn + u64::from(r.len);
            match self.ranges.last_mut() {
                // Sorted by start: the run begins in or shortly after the
                // current read, which grows to cover it.
                Some(g) if r.pfn <= g.start + g.len + GAP => {
                    let g_end = g.start + g.len;
                    if end > g_end {
                        self.total += (end - g_end) as usize;
                        g.len = end - g.start;
                    }
                    r.off = (g.off + (r.pfn - g.start) as usize) as u32;
                }
                _ => {
                    self.ranges.push(Range {
                        start: r.pfn,
                        len: u64::from(r.len),
                        off: self.total,
                    });
                    r.off = self.total as u32;
                    self.total += r.len as usize;
                }
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
    pub fn read(&self, table: Option<&U64Table>, values: &mut Vec<u64>) -> io::Result<()> {
        values.clear();
        values.resize(self.total, 0);
        if let Some(t) = table {
            for g in &self.ranges {
                t.read_into(g.start, &mut values[g.off..g.off + g.len as usize])?;
            }
        }
        Ok(())
    }

    /// Store each wanted entry's value, converted by `f`, at its index in
    /// `out`.
    pub fn store<T>(&self, values: &[u64], out: &mut [T], f: impl Fn(u64) -> T) {
        for r in &self.runs {
            let (k, off, n) = (r.k as usize, r.off as usize, r.len as usize);
            let (out, values) = (&mut out[k..k + n], &values[off..off + n]);
            if r.down {
                out.iter_mut()
                    .zip(values.iter().rev())
                    .for_each(|(o, v)| *o = f(*v));
            } else {
                out.iter_mut().zip(values).for_each(|(o, v)| *o = f(*v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What reading the plan would give if every entry held its own PFN.
    fn identity_values(plan: &PfnPlan) -> Vec<u64> {
        plan.ranges
            .iter()
            .flat_map(|g| g.start..g.start + g.len)
            .collect()
    }

    #[test]
    fn plans_merge_near_pfns_and_store_values_per_entry() {
        // Entry order: a run 1000..=1001, then 70, 5000, 5001, 1003 (one
        // entry after the gap of 1002), 1040, and 1001 again (a page mapped
        // twice).
        let pfns = [1000u64, 1001, 70, 5000, 5001, 1003, 1040, 1001];
        let mut plan = PfnPlan::default();
        plan.plan(pfns.iter().copied().enumerate());
        // 70; 1000..=1003 (1002 read through) in one read; 1040 (more than
        // GAP past 1003); 5000..=5001.
        assert_eq!(plan.preads(), 4);
        assert_eq!(plan.entries(), 1 + 4 + 1 + 2);
        let values = identity_values(&plan);
        assert_eq!(values.len(), plan.entries());
        let mut out = vec![0u64; pfns.len()];
        plan.store(&values, &mut out, |v| v);
        assert_eq!(out, pfns);
        // Only the wanted entries are written.
        let mut plan2 = PfnPlan::default();
        plan2.plan([(1, 7u64), (3, 8)].into_iter());
        let mut out = vec![u32::MAX; 4];
        plan2.store(&identity_values(&plan2), &mut out, |v| v as u32);
        assert_eq!(out, [u32::MAX, 7, u32::MAX, 8]);
        // Planning again forgets the previous plan.
        plan.plan(std::iter::empty());
        assert_eq!((plan.entries(), plan.preads()), (0, 0));
    }

    #[test]
    fn descending_runs_are_stored_in_address_order() {
        // 9, 8, 7 down, then 20, 21 up, 6 (down from 7 but not adjacent in
        // entry order to the first run: a new run), 5, 4.
        let pfns = [9u64, 8, 7, 20, 21, 6, 5, 4];
        let mut plan = PfnPlan::default();
        plan.plan(pfns.iter().copied().enumerate());
        assert_eq!(plan.runs.len(), 3);
        // 4..=9 in one read, 20..=21 in another.
        assert_eq!((plan.preads(), plan.entries()), (2, 8));
        let mut out = vec![0u64; pfns.len()];
        plan.store(&identity_values(&plan), &mut out, |v| v);
        assert_eq!(out, pfns);
    }

    #[test]
    fn sparse_pfns_are_read_one_by_one() {
        // Folio heads 512 apart, in descending order, plus two neighbours
        // merged into one read.
        let pfns: Vec<u64> = (0..100u64)
            .map(|i| 1_000_000 - i * 512)
            .chain([5, 6])
            .collect();
        let mut plan = PfnPlan::default();
        plan.plan(pfns.iter().copied().enumerate());
        assert_eq!((plan.preads(), plan.entries()), (101, 102));
        let mut out = vec![0u64; pfns.len()];
        plan.store(&identity_values(&plan), &mut out, |v| v);
        assert_eq!(out, pfns);
    }
}
