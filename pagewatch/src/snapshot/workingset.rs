//! Working set over an interval (`--working-set DUR`): clear the accessed
//! bits with `echo 1 > /proc/PID/clear_refs` (and soft-dirty with `4` where
//! CONFIG_MEM_SOFT_DIRTY exists), wait, then report per VMA what was
//! referenced (smaps `Referenced:`, the kernel's own count of young PTEs
//! and referenced folios) and soft-dirtied (pagemap bit 55). Where
//! /sys/kernel/mm/page_idle/bitmap exists (CONFIG_IDLE_PAGE_TRACKING) the
//! process's PFNs are also marked idle and read back, which sees accesses
//! through any mapping. Missing mechanisms are reported, not guessed.

use std::{collections::BTreeMap, fs::OpenOptions, os::unix::fs::FileExt, time::Duration};

use serde::Serialize;

use super::{
    error::{Result, SnapshotError},
    scan::{KpageFiles, ProcessPages, ScanOptions, scan_process},
    source::ProcRoot,
};

/// One VMA's working set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmaWorkingSet {
    /// Start address (hex).
    pub start: String,
    /// Mapping name.
    pub name: String,
    /// Resident kB at the end.
    pub rss_kb: u64,
    /// Referenced kB (smaps) at the end of the interval.
    pub referenced_kb: u64,
    /// Soft-dirty kB, when soft-dirty tracking exists.
    pub soft_dirty_kb: Option<u64>,
    /// kB whose idle bit was cleared, when the page_idle bitmap exists.
    pub accessed_idle_kb: Option<u64>,
}

/// Working set of one process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkingSet {
    /// Process id.
    pub pid: u32,
    /// Interval in seconds.
    pub seconds: f64,
    /// Per VMA, only those with resident pages.
    pub vmas: Vec<VmaWorkingSet>,
    /// Mechanisms that were missing and why.
    pub notes: Vec<String>,
}

/// `Referenced:` kB per VMA start from the text of /proc/PID/smaps.
pub fn smaps_referenced(text: &str) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    let mut cur = None;
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Referenced:") {
            if let (Some(start), Some(v)) = (cur, kb.trim().strip_suffix("kB")) {
                out.insert(start, v.trim().parse().unwrap_or(0));
            }
        } else if let Some((range, _)) = line.split_once(' ')
            && let Some((a, _)) = range.split_once('-')
            && let Ok(start) = u64::from_str_radix(a, 16)
        {
            cur = Some(start);
        }
    }
    out
}

fn write_file(path: &std::path::Path, what: &str) -> Result<()> {
    std::fs::write(path, what).map_err(|source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn present_pfns(p: &ProcessPages) -> Vec<u64> {
    let mut v: Vec<u64> = p
        .vmas
        .iter()
        .flat_map(|v| (0..v.pm.len()).filter_map(move |k| v.pfn(k)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Mark `pfns` idle in the page_idle bitmap (one u64 word per 64 PFNs).
fn idle_mark(bitmap: &std::fs::File, pfns: &[u64]) -> std::io::Result<()> {
    let mut i = 0;
    while i < pfns.len() {
        let word = pfns[i] / 64;
        let mut bits = 0u64;
        while i < pfns.len() && pfns[i] / 64 == word {
            bits |= 1 << (pfns[i] % 64);
            i += 1;
        }
        bitmap.write_at(&bits.to_ne_bytes(), word * 8)?;
    }
    Ok(())
}

/// PFNs among `pfns` that are no longer idle.
fn idle_accessed(bitmap: &std::fs::File, pfns: &[u64]) -> std::io::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8];
    let mut last_word = u64::MAX;
    let mut bits = 0;
    for &pfn in pfns {
        if pfn / 64 != last_word {
            last_word = pfn / 64;
            bitmap.read_exact_at(&mut buf, last_word * 8)?;
            bits = u64::from_ne_bytes(buf);
        }
        if bits & (1 << (pfn % 64)) == 0 {
            out.push(pfn);
        }
    }
    Ok(out)
}

/// Measure the working set of `pid` over `dur`.
pub fn working_set(
    root: &ProcRoot,
    kp: &KpageFiles,
    pid: u32,
    dur: Duration,
) -> Result<WorkingSet> {
    let mut notes = Vec::new();
    let before = scan_process(root, kp, pid, &ScanOptions::default())?;
    let present: u64 = before.vmas.iter().map(|v| v.pm.len() as u64).sum();
    let sd_before: usize = before
        .vmas
        .iter()
        .map(|v| {
            v.pm.iter()
                .filter(|e| super::flags::PagemapEntry(**e).soft_dirty())
                .count()
        })
        .sum();
    // With CONFIG_MEM_SOFT_DIRTY new mappings start soft-dirty, so a process
    // with resident pages and no soft-dirty bit at all has no such tracking.
    let soft_dirty = sd_before > 0 || present == 0;
    let clear = root.pid_file(pid, "clear_refs");
    write_file(&clear, "1")?;
    if soft_dirty {
        write_file(&clear, "4")?;
    } else {
        notes.push("soft-dirty tracking is missing (kernel built without CONFIG_MEM_SOFT_DIRTY: pagemap bit 55 is never set)".into());
    }
    let bitmap_path = root.sys_file("kernel/mm/page_idle/bitmap");
    let pfns = present_pfns(&before);
    let bitmap = match OpenOptions::new().read(true).write(true).open(&bitmap_path) {
        Ok(f) if !pfns.is_empty() => {
            idle_mark(&f, &pfns).map_err(|source| SnapshotError::Write {
                path: bitmap_path.clone(),
                source,
            })?;
            Some(f)
        }
        Ok(_) => {
            notes.push("page_idle bitmap not used: no PFNs visible (needs root)".into());
            None
        }
        Err(e) => {
            notes.push(format!(
                "idle page tracking is missing ({}: {e}; needs CONFIG_IDLE_PAGE_TRACKING): using accessed bits via clear_refs only",
                bitmap_path.display()
            ));
            None
        }
    };
    std::thread::sleep(dur);
    let accessed: Option<Vec<u64>> = match &bitmap {
        Some(f) => Some(idle_accessed(f, &pfns).map_err(|e| SnapshotError::read(&bitmap_path, e))?),
        None => None,
    };
    let after = scan_process(root, kp, pid, &ScanOptions::default())?;
    let smaps_path = root.pid_file(pid, "smaps");
    let referenced = smaps_referenced(&super::source::read_text(&smaps_path)?);
    let vmas = after
        .vmas
        .iter()
        .filter(|v| !v.pm.is_empty())
        .map(|v| {
            let sd =
                v.pm.iter()
                    .filter(|e| super::flags::PagemapEntry(**e).soft_dirty())
                    .count() as u64;
            let acc = accessed.as_ref().map(|a| {
                (0..v.pm.len())
                    .filter_map(|k| v.pfn(k))
                    .filter(|p| a.binary_search(p).is_ok())
                    .count() as u64
                    * 4
            });
            VmaWorkingSet {
                start: format!("{:x}", v.vma.start),
                name: v.vma.name.clone(),
                rss_kb: v
                    .pm
                    .iter()
                    .filter(|e| super::flags::PagemapEntry(**e).present())
                    .count() as u64
                    * 4,
                referenced_kb: referenced.get(&v.vma.start).copied().unwrap_or(0),
                soft_dirty_kb: soft_dirty.then_some(sd * 4),
                accessed_idle_kb: acc,
            }
        })
        .collect();
    notes.extend(after.info.notes);
    Ok(WorkingSet {
        pid,
        seconds: dur.as_secs_f64(),
        vmas,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_referenced_from_smaps() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/smaps"
        ))
        .unwrap();
        let r = smaps_referenced(&text);
        let headers = text
            .lines()
            .filter(|l| l.starts_with("Referenced:"))
            .count();
        assert_eq!(r.len(), headers);
        assert!(r.values().any(|v| *v > 0));
    }
}
