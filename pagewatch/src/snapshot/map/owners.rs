//! Who maps the pages of the blocks that matter (`map --owners`): every
//! process's pagemap is read once, after the map, and its present PFNs
//! that fall into a compactable or blocked block are counted per pid.
//! Pages may have moved between the map and the scan; kernel pages (slab,
//! page tables, pipe buffers) have no owner here.

use std::collections::HashMap;

use serde::Serialize;

use super::{PhysMap, classify::Verdict};
use crate::snapshot::{
    ProcRoot,
    error::Result,
    scan::{KpageFiles, ScanOptions, scan_process_with},
    select::{Selection, resolve},
};

/// A process's pages in one block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// Process.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
    /// Pages of the block it maps.
    pub pages: u32,
}

/// Owners per block index of `map.blocks`.
pub type BlockOwners = HashMap<usize, Vec<Owner>>;

/// Owners per block index of `map.blocks` (only compactable and blocked
/// blocks), at most `keep` per block, most pages first; and notes.
pub fn owners(root: &ProcRoot, map: &PhysMap, keep: usize) -> Result<(BlockOwners, Vec<String>)> {
    let bp = map.block_pages();
    let index: HashMap<u64, usize> = map
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| matches!(b.verdict, Verdict::Compactable | Verdict::Blocked))
        .map(|(i, b)| (b.pfn / bp, i))
        .collect();
    let mut kp = KpageFiles::open(root);
    // Mapcounts and memcgs are not needed: skip their reads.
    kp.count = None;
    kp.cgroup = None;
    let mut notes: Vec<String> = kp.missing.iter().cloned().collect();
    let mut per_block: HashMap<usize, HashMap<u32, u32>> = HashMap::new();
    let mut comms: HashMap<u32, String> = HashMap::new();
    let opts = ScanOptions::default();
    let mut denied = 0;
    for pid in resolve(root, &Selection::All)? {
        let scanned = scan_process_with(root, &kp, pid, &opts, |_, batch, _| {
            batch.for_each_segment(|s| {
                let Some(pfn) = s.pfn() else { return };
                for p in pfn..pfn + u64::from(s.pages) {
                    if let Some(&b) = index.get(&(p / bp)) {
                        *per_block.entry(b).or_default().entry(pid).or_default() += 1;
                    }
                }
            })
        });
        match scanned {
            Ok(info) => {
                comms.insert(pid, info.comm);
            }
            Err(crate::snapshot::SnapshotError::ProcessAccessDenied(_)) => denied += 1,
            Err(_) => {} // exited meanwhile
        }
    }
    if denied > 0 {
        notes.push(format!(
            "{denied} processes could not be read: their pages have no owner here"
        ));
    }
    let out = per_block
        .into_iter()
        .map(|(b, pids)| {
            let mut v: Vec<Owner> = pids
                .into_iter()
                .map(|(pid, pages)| Owner {
                    pid,
                    comm: comms.get(&pid).cloned().unwrap_or_default(),
                    pages,
                })
                .collect();
            v.sort_by(|a, b| b.pages.cmp(&a.pages).then(a.pid.cmp(&b.pid)));
            v.truncate(keep);
            (b, v)
        })
        .collect();
    Ok((out, notes))
}
