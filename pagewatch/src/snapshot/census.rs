//! Whole-system page census from /proc/kpageflags, like the kernel tree's
//! tools/mm/page-types: the distinct flag combinations with page counts,
//! filtered by a [`FlagExpr`], optionally with the matching PFN runs.
//!
//! The kernel spends ~50 ns per PFN building kpageflags whatever the read
//! size, so the PFN space is split into disjoint ranges read in parallel
//! (one thread per online CPU) with 512 KiB preads. The end of memory is
//! taken from /proc/zoneinfo (highest `start_pfn + spanned`); the last
//! range reads on until end of file, so every PFN the kernel exports is
//! counted.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    error::{Result, SnapshotError},
    flags::{FlagExpr, kpf_describe},
    source::{BATCH_ENTRIES, ProcRoot, U64Table},
};

/// One distinct kpageflags value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagCombo {
    /// Raw flags word.
    pub flags: u64,
    /// Flag names (`k:` marks kernel-hacking bits).
    pub names: String,
    /// Number of PFNs with exactly these flags.
    pub pages: u64,
    /// Their size in MiB.
    pub mib: f64,
}

/// A run of consecutive PFNs with equal flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PfnRun {
    /// First PFN.
    pub pfn: u64,
    /// Number of PFNs.
    pub count: u64,
    /// Their flags.
    pub flags: u64,
}

/// The census.
#[derive(Debug, Clone, Serialize)]
pub struct Census {
    /// PFNs read (0..pfns_read): every PFN up to the end of memory.
    pub pfns_read: u64,
    /// End of memory by /proc/zoneinfo.
    pub zoneinfo_end_pfn: u64,
    /// Pages matching the filter.
    pub matched_pages: u64,
    /// Distinct combinations among matching pages, most pages first.
    pub combos: Vec<FlagCombo>,
    /// Matching runs when listing was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<Vec<PfnRun>>,
}

/// End of memory (exclusive PFN) from the text of /proc/zoneinfo.
pub fn zoneinfo_end_pfn(text: &str) -> u64 {
    let mut end = 0;
    let mut spanned = 0;
    for line in text.lines() {
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("spanned"), Some(v)) => spanned = v.parse().unwrap_or(0),
            (Some("start_pfn:"), Some(v)) => {
                let start: u64 = v.parse().unwrap_or(0);
                if spanned > 0 {
                    end = end.max(start + spanned);
                }
            }
            _ => {}
        }
    }
    end
}

#[derive(Default)]
struct Part {
    counts: HashMap<u64, u64>,
    runs: Vec<PfnRun>,
}

/// Reads `table` over consecutive PFN ranges in parallel, one thread per
/// range: range `i` is `starts[i]..starts[i + 1]`, the last one ends at
/// `end` (`None`: end of file). Each thread builds its state with `init`
/// and hands it every batch with the batch's first PFN; returns the
/// states and how many entries each read.
pub(crate) fn read_parallel<S: Send>(
    table: &U64Table,
    starts: &[u64],
    end: Option<u64>,
    init: impl Fn() -> S + Sync,
    each: impl Fn(&mut S, u64, &[u64]) + Sync,
) -> std::io::Result<Vec<(S, u64)>> {
    let part = |from: u64, to: Option<u64>| -> std::io::Result<(S, u64)> {
        let mut state = init();
        let mut buf = vec![0u64; BATCH_ENTRIES];
        let mut pfn = from;
        loop {
            let want = match to {
                Some(end) if pfn >= end => break,
                Some(end) => (end - pfn).min(BATCH_ENTRIES as u64) as usize,
                None => BATCH_ENTRIES,
            };
            let got = table.read_into(pfn, &mut buf[..want])?;
            each(&mut state, pfn, &buf[..got]);
            pfn += got as u64;
            if got < want {
                break;
            }
        }
        Ok((state, pfn - from))
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = starts
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let to = starts.get(i + 1).copied().or(end);
                let part = &part;
                s.spawn(move || part(from, to))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("kpageflags reader"))
            .collect()
    })
}

/// Counts a batch's flag words into `part` (runs of equal words at once).
fn count_batch(part: &mut Part, base: u64, batch: &[u64], expr: FlagExpr, list: bool) {
    let (mut cur, mut cur_n) = (u64::MAX, 0u64);
    for &f in batch {
        if f == cur {
            cur_n += 1;
            continue;
        }
        if cur_n > 0 {
            *part.counts.entry(cur).or_default() += cur_n;
        }
        cur = f;
        cur_n = 1;
    }
    if cur_n > 0 {
        *part.counts.entry(cur).or_default() += cur_n;
    }
    if list {
        extend_runs(&mut part.runs, batch, base, expr);
    }
}

/// Append the matching runs of a batch starting at PFN `base` (only with
/// `--list`).
fn extend_runs(runs: &mut Vec<PfnRun>, batch: &[u64], base: u64, expr: FlagExpr) {
    for (i, &f) in batch.iter().enumerate() {
        if !expr.matches(f) {
            continue;
        }
        let p = base + i as u64;
        match runs.last_mut() {
            Some(r) if r.flags == f && r.pfn + r.count == p => r.count += 1,
            _ => runs.push(PfnRun {
                pfn: p,
                count: 1,
                flags: f,
            }),
        }
    }
}

/// Count every PFN's flags. `threads` disjoint ranges are read in parallel.
pub fn census(root: &ProcRoot, expr: FlagExpr, list: bool, threads: usize) -> Result<Census> {
    let path = root.proc_file("kpageflags");
    let table = U64Table::open(&path).map_err(|e| SnapshotError::read(&path, e))?;
    let zi = root.proc_file("zoneinfo");
    let end = zoneinfo_end_pfn(&super::source::read_text(&zi)?);
    let threads = threads.max(1) as u64;
    let step = end.div_ceil(threads).max(1);
    let starts: Vec<u64> = (0..threads).map(|i| i * step).collect();
    let parts = read_parallel(&table, &starts, None, Part::default, |part, base, batch| {
        count_batch(part, base, batch, expr, list)
    })
    .map_err(|e| SnapshotError::read(&path, e))?;
    let mut counts: HashMap<u64, u64> = HashMap::new();
    let mut runs: Vec<PfnRun> = Vec::new();
    let mut read = 0;
    for (p, n) in parts {
        read += n;
        for (k, v) in p.counts {
            *counts.entry(k).or_default() += v;
        }
        for r in p.runs {
            match runs.last_mut() {
                Some(l) if l.flags == r.flags && l.pfn + l.count == r.pfn => l.count += r.count,
                _ => runs.push(r),
            }
        }
    }
    let mut combos: Vec<FlagCombo> = counts
        .into_iter()
        .filter(|(f, _)| expr.matches(*f))
        .map(|(flags, pages)| FlagCombo {
            flags,
            names: kpf_describe(flags),
            pages,
            mib: pages as f64 * 4096.0 / (1 << 20) as f64,
        })
        .collect();
    combos.sort_by(|a, b| b.pages.cmp(&a.pages).then(a.flags.cmp(&b.flags)));
    Ok(Census {
        pfns_read: read,
        zoneinfo_end_pfn: end,
        matched_pages: combos.iter().map(|c| c.pages).sum(),
        combos,
        runs: list.then_some(runs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoneinfo_gives_end_of_memory() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/zoneinfo"
        ))
        .unwrap();
        // Captured on a 24 GiB guest: Normal starts at 1048576 and spans 5505024.
        assert_eq!(zoneinfo_end_pfn(&text), 1048576 + 5505024);
    }

    #[test]
    fn extend_runs_rebuilds_batch() {
        let all = FlagExpr::default();
        let mut runs = Vec::new();
        extend_runs(&mut runs, &[1, 1, 2, 2, 2, 1], 100, all);
        assert_eq!(
            runs,
            vec![
                PfnRun {
                    pfn: 100,
                    count: 2,
                    flags: 1
                },
                PfnRun {
                    pfn: 102,
                    count: 3,
                    flags: 2
                },
                PfnRun {
                    pfn: 105,
                    count: 1,
                    flags: 1
                },
            ]
        );
    }
}
