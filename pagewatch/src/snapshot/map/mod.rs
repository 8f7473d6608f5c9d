//! The physical memory map: every pageblock of every zone, classified from
//! its pages' /proc/kpageflags, with a verdict (free huge page, huge page in
//! use, could be compacted, blocked) and the free blocks per order checked
//! against /proc/buddyinfo.
//!
//! kpageflags sets BUDDY on every page of a free buddy block (since 4.x
//! through `is_free_buddy_page`), not only on its head, and carries no
//! order: a run of free pages is split into the largest naturally aligned
//! power-of-two blocks, capped at the highest free list order, which is the
//! buddy allocator's own invariant (two free buddies of one order always
//! merge, except across isolated pageblocks). Runs are cut at zone edges.
//! The reading is split into ranges aligned to the largest free block so
//! no block straddles two readers.

pub mod classify;
pub mod owners;
pub mod procfs;
pub mod svg;

use std::collections::BTreeMap;

use serde::Serialize;

use self::{
    classify::{CLASSES, NCLASS, PageClass, VERDICTS, Verdict, classify, verdict},
    procfs::{BuddyZone, PagetypeInfo, Zone, parse_buddyinfo, parse_pagetypeinfo, parse_zoneinfo},
};
use super::{
    census::read_parallel,
    error::{Result, SnapshotError},
    flags::{has, kpf},
    source::{BATCH_ENTRIES, ProcRoot, U64Table, read_text},
};

/// One pageblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// First PFN (aligned to the pageblock size).
    pub pfn: u64,
    /// Index of its zone in [`PhysMap::zones`].
    pub zone: usize,
    /// Pages per class, indexed by [`PageClass`].
    pub counts: [u32; NCLASS],
    /// Compound head pages among them.
    pub heads: u32,
    /// Pages whose flags word is 0.
    pub zeroed: u32,
    /// The verdict.
    pub verdict: Verdict,
    /// The class of most unmovable pages, when blocked.
    pub blocker: Option<PageClass>,
}

impl Block {
    /// Pages of class `k`.
    pub fn count(&self, k: PageClass) -> u32 {
        self.counts[k as usize]
    }
    /// `PFN 0x… verdict[ by blocker]: class n, …`.
    pub fn describe(&self) -> String {
        format!(
            "PFN {:#x} {}{}: {}",
            self.pfn,
            self.verdict.name(),
            self.blocker
                .map_or_else(String::new, |k| format!(" by {}", k.name())),
            nonzero(&self.class_pages())
        )
    }
    /// Non-zero class counts by name.
    pub fn class_pages(&self) -> BTreeMap<&'static str, u32> {
        CLASSES
            .iter()
            .filter(|k| self.count(**k) > 0)
            .map(|k| (k.name(), self.count(*k)))
            .collect()
    }
}

/// One zone's totals.
#[derive(Debug, Clone, Serialize)]
pub struct ZoneMap {
    /// The zone's range.
    #[serde(flatten)]
    pub zone: Zone,
    /// Pageblocks with memory (what /proc/pagetypeinfo counts).
    pub blocks: u64,
    /// /proc/pagetypeinfo's pageblock count (None: zone not listed).
    pub pagetypeinfo_blocks: Option<u64>,
    /// Blocks per verdict.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Pages per class.
    pub pages: BTreeMap<&'static str, u64>,
    /// Free blocks per order found in kpageflags.
    pub free_by_order: Vec<u64>,
    /// /proc/buddyinfo's free blocks per order, read just before the PFNs.
    pub buddyinfo_before: Option<Vec<u64>>,
    /// And just after.
    pub buddyinfo_after: Option<Vec<u64>>,
    /// Free pages on the zone's per-CPU lists by /proc/zoneinfo read just
    /// after the PFNs (`pcp_free` is the read before): they are among the
    /// `kernel` pages.
    pub pcp_free_after: Option<u64>,
}

/// The whole map.
#[derive(Debug, Clone)]
pub struct PhysMap {
    /// pageblock_order.
    pub pageblock_order: u32,
    /// Free list orders (0..orders).
    pub orders: u32,
    /// Zones with pages.
    pub zones: Vec<ZoneMap>,
    /// Every block overlapping a zone, in PFN order.
    pub blocks: Vec<Block>,
    /// Seconds spent reading kpageflags and classifying.
    pub seconds: f64,
    /// Caveats.
    pub notes: Vec<String>,
}

impl PhysMap {
    /// Pages per block.
    pub fn block_pages(&self) -> u64 {
        1 << self.pageblock_order
    }
}

/// Per-reader state.
struct Part {
    /// Blocks of this reader's range, indexed from its first block.
    blocks: Vec<Block>,
    first_block: u64,
    /// Free blocks per zone and order.
    free: Vec<Vec<u64>>,
}

/// What a reader needs to know.
struct Layout<'a> {
    /// Non-overlapping zone pieces (start, end, zone index), by start.
    pieces: &'a [(u64, u64, usize)],
    block_order: u32,
    max_order: u32,
    /// Alignment unit of the readers' work: the largest of a pageblock and
    /// a max-order free block.
    unit: u64,
}

impl Layout<'_> {
    /// Account one unit (`unit` pages from PFN `base`, missing flags
    /// beyond the end of the file count as holes).
    fn unit(&self, part: &mut Part, base: u64, flags: &[u64]) {
        let (a, b) = (base, base + self.unit);
        // Zone pieces intersecting the unit; the rest of it is hole.
        let first = self.pieces.partition_point(|p| p.1 <= a);
        let bp = 1u64 << self.block_order;
        let mut pfn = a;
        for &(ps, pe, z) in self.pieces[first..].iter().take_while(|p| p.0 < b) {
            let (s, e) = (ps.max(a), pe.min(b));
            self.holes(part, pfn, s);
            // Pages past a short read (end of file) are holes.
            let lim = a + flags.len() as u64;
            let (rs, re) = (s.min(lim), e.min(lim));
            let read = &flags[(rs - a) as usize..(re - a) as usize];
            for (i, &f) in read.iter().enumerate() {
                let p = rs + i as u64;
                let blk = &mut part.blocks[(p / bp - part.first_block) as usize];
                blk.counts[classify(f) as usize] += 1;
                blk.heads += u32::from(has(f, kpf::COMPOUND_HEAD));
                blk.zeroed += u32::from(f == 0);
            }
            self.holes(part, re.max(s), e);
            self.free_runs(part, z, rs, read);
            pfn = e;
        }
        self.holes(part, pfn, b);
    }

    /// Count `from..to` as holes in the blocks that exist.
    fn holes(&self, part: &mut Part, from: u64, to: u64) {
        let bp = 1u64 << self.block_order;
        let mut p = from;
        while p < to {
            let end = ((p / bp + 1) * bp).min(to);
            if let Some(blk) = (p / bp)
                .checked_sub(part.first_block)
                .and_then(|i| part.blocks.get_mut(i as usize))
            {
                blk.counts[PageClass::Hole as usize] += (end - p) as u32;
            }
            p = end;
        }
    }

    /// Split the runs of free pages of `flags` (PFNs from `s`, all in zone
    /// `z`) into naturally aligned blocks.
    fn free_runs(&self, part: &mut Part, z: usize, s: u64, flags: &[u64]) {
        let free = &mut part.free[z];
        let mut i = 0;
        while i < flags.len() {
            if !has(flags[i], kpf::BUDDY) || has(flags[i], kpf::NOPAGE) {
                i += 1;
                continue;
            }
            let r0 = i;
            while i < flags.len() && has(flags[i], kpf::BUDDY) {
                i += 1;
            }
            let (mut x, end) = (s + r0 as u64, s + i as u64);
            while x < end {
                let mut o = x.trailing_zeros().min(self.max_order);
                while x + (1 << o) > end {
                    o -= 1;
                }
                free[o as usize] += 1;
                x += 1 << o;
            }
        }
    }
}

/// Zones cut into non-overlapping pieces (a later zone loses the PFNs an
/// earlier one spans); notes when that happened.
fn zone_pieces(zones: &[Zone], notes: &mut Vec<String>) -> Vec<(u64, u64, usize)> {
    let mut order: Vec<usize> = (0..zones.len()).collect();
    order.sort_by_key(|&i| (zones[i].start_pfn, i));
    let mut out: Vec<(u64, u64, usize)> = Vec::new();
    for i in order {
        let (mut s, e) = (zones[i].start_pfn, zones[i].end_pfn());
        if let Some(last) = out.last()
            && last.1 > s
        {
            notes.push(format!(
                "zone {} of node {} overlaps the zone before it: the shared PFNs are counted once, in the earlier zone",
                zones[i].name, zones[i].node
            ));
            s = last.1;
        }
        if s < e {
            out.push((s, e, i));
        }
    }
    out
}

/// The non-zero entries of a count map as `name n, name n`.
pub fn nonzero<N: Copy + Default + PartialEq + std::fmt::Display>(
    counts: &BTreeMap<&str, N>,
) -> String {
    let v: Vec<String> = counts
        .iter()
        .filter(|(_, n)| **n != N::default())
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    v.join(", ")
}

/// Pages per memory block (/sys/devices/system/memory/block_size_bytes;
/// 128 MiB, the x86-64 section size, when unreadable), at least a block.
fn memory_block_pages(root: &ProcRoot, block_pages: u64) -> u64 {
    let path = root.sys_file("devices/system/memory/block_size_bytes");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| u64::from_str_radix(t.trim(), 16).ok())
        .map_or(32768, |b| b / 4096)
        .max(block_pages)
}

/// Struct pages that were never initialized (a memory hole with a memmap,
/// or memory deferred_init=lazy has not handed to the allocator yet) read
/// as flags 0 and are not counted by /proc/pagetypeinfo. Memory is
/// initialized a section at a time, so a memory block whose every page
/// reads 0 is taken as a hole; a single block of flagless pages inside
/// initialized memory is kernel memory.
fn uninitialized_holes(blocks: &mut [Block], window: u64, n: u32) {
    let mut i = 0;
    while i < blocks.len() {
        let w = blocks[i].pfn / window;
        let j = i + blocks[i..].partition_point(|b| b.pfn / window == w);
        if blocks[i..j].iter().all(|b| b.zeroed == n) {
            for b in &mut blocks[i..j] {
                b.counts = [0; NCLASS];
                b.counts[PageClass::Hole as usize] = n;
                b.heads = 0;
                (b.verdict, b.blocker) = (Verdict::Hole, None);
            }
        }
        i = j;
    }
}

/// /proc/buddyinfo, or None with a note.
fn buddyinfo(root: &ProcRoot, notes: &mut Vec<String>) -> Option<Vec<BuddyZone>> {
    let path = root.proc_file("buddyinfo");
    match read_text(&path).and_then(|t| parse_buddyinfo(&t, &path)) {
        Ok(b) => Some(b),
        Err(e) => {
            notes.push(format!("free blocks not checked: {e}"));
            None
        }
    }
}

/// Builds the map, reading kpageflags on `threads` threads.
pub fn build(root: &ProcRoot, threads: usize) -> Result<PhysMap> {
    let mut notes = Vec::new();
    let zi = root.proc_file("zoneinfo");
    let zones = parse_zoneinfo(&read_text(&zi)?, &zi)?;
    let pti = root.proc_file("pagetypeinfo");
    let PagetypeInfo {
        pageblock_order,
        orders,
        blocks: pt_blocks,
    } = parse_pagetypeinfo(&read_text(&pti)?, &pti)?;
    if zones.is_empty() || orders == 0 {
        return Err(SnapshotError::Parse {
            path: zi,
            line: 0,
            text: "no zone spans any PFN".into(),
        });
    }
    let pieces = zone_pieces(&zones, &mut notes);
    let max_order = orders - 1;
    let unit = 1u64 << pageblock_order.max(max_order);
    if !(BATCH_ENTRIES as u64).is_multiple_of(unit) {
        return Err(SnapshotError::Parse {
            path: pti,
            line: 0,
            text: format!("pageblock order {pageblock_order} or {orders} orders are too large"),
        });
    }
    let layout = Layout {
        pieces: &pieces,
        block_order: pageblock_order,
        max_order,
        unit,
    };
    let lo = pieces[0].0 / unit * unit;
    let hi = pieces.iter().map(|p| p.1).max().unwrap_or(0).div_ceil(unit) * unit;
    let units = (hi - lo) / unit;
    let threads = (threads.max(1) as u64).min(units.max(1));
    let per = units.div_ceil(threads);
    let starts: Vec<u64> = (0..threads)
        .map(|i| lo + i * per * unit)
        .filter(|s| *s < hi)
        .collect();
    let bp = 1u64 << pageblock_order;
    let new_part = |from: u64, to: u64| -> Part {
        let blocks = (from / bp..to / bp)
            .map(|b| Block {
                pfn: b * bp,
                zone: usize::MAX,
                counts: [0; NCLASS],
                heads: 0,
                zeroed: 0,
                verdict: Verdict::Hole,
                blocker: None,
            })
            .collect();
        Part {
            blocks,
            first_block: from / bp,
            free: vec![vec![0; orders as usize]; zones.len()],
        }
    };
    let path = root.proc_file("kpageflags");
    let table = U64Table::open(&path).map_err(|e| SnapshotError::read(&path, e))?;
    let before = buddyinfo(root, &mut notes);
    let t0 = std::time::Instant::now();
    // Each reader's state is made lazily on its first batch (read_parallel
    // gives no range to `init`).
    let parts = read_parallel(
        &table,
        &starts,
        Some(hi),
        || None::<Part>,
        |state, base, batch| {
            let part = state.get_or_insert_with(|| {
                let i = starts.partition_point(|s| *s <= base) - 1;
                new_part(starts[i], starts.get(i + 1).copied().unwrap_or(hi))
            });
            for (k, chunk) in batch.chunks(unit as usize).enumerate() {
                layout.unit(part, base + k as u64 * unit, chunk);
            }
        },
    )
    .map_err(|e| SnapshotError::read(&path, e))?;
    let seconds = t0.elapsed().as_secs_f64();
    let after = buddyinfo(root, &mut notes);
    let zones_after = read_text(&zi).and_then(|t| parse_zoneinfo(&t, &zi));
    let mut blocks = Vec::new();
    let mut free = vec![vec![0u64; orders as usize]; zones.len()];
    let mut read_end = lo;
    for (i, (part, n)) in parts.into_iter().enumerate() {
        let part = part.unwrap_or_else(|| new_part(starts[i], starts[i] + n));
        read_end = read_end.max(starts[i] + n);
        for (z, f) in part.free.iter().enumerate() {
            for (o, v) in f.iter().enumerate() {
                free[z][o] += v;
            }
        }
        blocks.extend(part.blocks);
    }
    if read_end < hi {
        notes.push(format!(
            "kpageflags ends at PFN {read_end:#x}, before the zones' end {hi:#x}: the rest is counted as holes"
        ));
    }
    // Blocks past the end of kpageflags were never read: all holes.
    let n = bp as u32;
    blocks.retain_mut(|b| {
        let seen: u32 = b.counts.iter().sum();
        b.counts[PageClass::Hole as usize] += n - seen;
        let first_in_zone = pieces
            .iter()
            .find(|p| p.1 > b.pfn && p.0 < b.pfn + bp)
            .map(|p| p.2);
        match first_in_zone {
            Some(z) => {
                b.zone = z;
                (b.verdict, b.blocker) = verdict(&b.counts, b.heads, n);
                true
            }
            None => false,
        }
    });
    uninitialized_holes(&mut blocks, memory_block_pages(root, bp), n);
    let zone_maps = zones
        .iter()
        .enumerate()
        .map(|(z, zone)| {
            let mut verdicts: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut pages = [0u64; NCLASS];
            let mut with_memory = 0;
            for b in blocks.iter().filter(|b| b.zone == z) {
                *verdicts.entry(b.verdict.name()).or_default() += 1;
                for (i, c) in b.counts.iter().enumerate() {
                    pages[i] += u64::from(*c);
                }
                with_memory += u64::from(b.count(PageClass::Hole) < n);
            }
            let find = |b: &Option<Vec<BuddyZone>>| {
                b.as_ref()?
                    .iter()
                    .find(|x| x.node == zone.node && x.zone == zone.name)
                    .map(|x| x.free.clone())
            };
            ZoneMap {
                zone: zone.clone(),
                blocks: with_memory,
                pagetypeinfo_blocks: pt_blocks
                    .iter()
                    .find(|(nd, zn, _)| *nd == zone.node && *zn == zone.name)
                    .map(|x| x.2),
                verdicts: VERDICTS
                    .iter()
                    .map(|v| (v.name(), verdicts.get(v.name()).copied().unwrap_or(0)))
                    .collect(),
                pages: CLASSES
                    .iter()
                    .map(|k| (k.name(), pages[*k as usize]))
                    .collect(),
                free_by_order: free[z].clone(),
                buddyinfo_before: find(&before),
                buddyinfo_after: find(&after),
                pcp_free_after: zones_after.as_ref().ok().and_then(|a| {
                    a.iter()
                        .find(|x| x.node == zone.node && x.name == zone.name)
                        .map(|x| x.pcp_free)
                }),
            }
        })
        .collect();
    notes.push(
        "a page with no flags ('kernel') is a kernel allocation without a page type or a free page on a per-CPU list (each zone's pcp_free, from /proc/zoneinfo, says how many of those there were); a whole memory block without flags is counted as a hole (struct pages never initialized); slab pages of reclaimable caches count as slab".into(),
    );
    Ok(PhysMap {
        pageblock_order,
        orders,
        zones: zone_maps,
        blocks,
        seconds,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout_part(pieces: &[(u64, u64, usize)], from: u64, to: u64) -> (Layout<'_>, Part) {
        let l = Layout {
            pieces,
            block_order: 2,
            max_order: 3,
            unit: 8,
        };
        let p = Part {
            blocks: (from / 4..to / 4)
                .map(|b| Block {
                    pfn: b * 4,
                    zone: 0,
                    counts: [0; NCLASS],
                    heads: 0,
                    zeroed: 0,
                    verdict: Verdict::Hole,
                    blocker: None,
                })
                .collect(),
            first_block: from / 4,
            free: vec![vec![0; 4]; 2],
        };
        (l, p)
    }

    #[test]
    fn free_runs_split_into_aligned_blocks_per_zone() {
        let bud = 1u64 << kpf::BUDDY;
        // Zone 0 spans PFNs 1..12, zone 1 12..16.
        let pieces = [(1, 12, 0), (12, 16, 1)];
        let (l, mut p) = layout_part(&pieces, 0, 16);
        // PFN 0 is outside every zone; 1..8 free (orders 0,1,2), 8 used,
        // 9..16 free: 9 (0), 10..12 (1) in zone 0, 12..16 (2) in zone 1.
        let mut f = [bud; 16];
        f[0] = 0;
        f[8] = 1 << kpf::SLAB;
        l.unit(&mut p, 0, &f[..8]);
        l.unit(&mut p, 8, &f[8..]);
        assert_eq!(p.free[0], vec![2, 2, 1, 0]);
        assert_eq!(p.free[1], vec![0, 0, 1, 0]);
        assert_eq!(p.blocks[0].count(PageClass::Hole), 1);
        assert_eq!(p.blocks[0].count(PageClass::Free), 3);
        assert_eq!(p.blocks[2].count(PageClass::Slab), 1);
        // A short read (end of file) leaves the rest for the caller.
        let (l, mut p) = layout_part(&pieces, 0, 16);
        l.unit(&mut p, 8, &f[8..10]);
        assert_eq!(p.free[0], vec![1, 0, 0, 0]);
        let seen: u32 = p.blocks[2..].iter().flat_map(|b| b.counts).sum();
        assert_eq!(seen, 8);
    }

    #[test]
    fn max_order_caps_free_blocks() {
        let pieces = [(0, 16, 0)];
        let (l, mut p) = layout_part(&pieces, 0, 16);
        let f = vec![1u64 << kpf::BUDDY; 8];
        l.unit(&mut p, 0, &f);
        l.unit(&mut p, 8, &f);
        assert_eq!(p.free[0], vec![0, 0, 0, 2]);
    }
}
