//! The kernel's own totals the map is built on and checked against:
//! zone ranges (/proc/zoneinfo `start_pfn`, `spanned`), the pageblock
//! order and pageblocks per zone (/proc/pagetypeinfo), free blocks per
//! order and zone (/proc/buddyinfo).

use std::path::Path;

use serde::Serialize;

use crate::snapshot::error::{Result, SnapshotError};

/// One zone with pages: `start..start + spanned` on `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Zone {
    /// NUMA node.
    pub node: u32,
    /// Zone name (DMA, DMA32, Normal, Movable, ...).
    pub name: String,
    /// First PFN (zone_start_pfn).
    pub start_pfn: u64,
    /// PFNs spanned, holes included.
    pub spanned: u64,
    /// Free pages waiting on the zone's per-CPU lists (the `count:` of
    /// every CPU's pageset): flagless in kpageflags, like kernel pages.
    pub pcp_free: u64,
}

impl Zone {
    /// One past the last PFN.
    pub fn end_pfn(&self) -> u64 {
        self.start_pfn + self.spanned
    }
}

/// `Node 0, zone   Normal` → (0, "Normal").
fn node_zone(line: &str) -> Option<(u32, &str)> {
    let rest = line.strip_prefix("Node")?;
    let (node, rest) = rest.split_once(',')?;
    let name = rest
        .trim()
        .strip_prefix("zone")?
        .split_whitespace()
        .next()?;
    Some((node.trim().parse().ok()?, name))
}

/// Zones that span PFNs, in /proc/zoneinfo order (node by node, low zones
/// first).
pub fn parse_zoneinfo(text: &str, path: &Path) -> Result<Vec<Zone>> {
    let mut zones: Vec<Zone> = Vec::new();
    let mut spanned: Option<u64> = None;
    for (i, line) in text.lines().enumerate() {
        let bad = || SnapshotError::Parse {
            path: path.into(),
            line: i + 1,
            text: line.into(),
        };
        if let Some((node, name)) = node_zone(line) {
            zones.push(Zone {
                node,
                name: name.into(),
                start_pfn: 0,
                spanned: 0,
                pcp_free: 0,
            });
            spanned = None;
            continue;
        }
        let mut it = line.split_whitespace();
        match (it.next(), it.next()) {
            (Some("spanned"), Some(v)) => spanned = Some(v.parse().map_err(|_| bad())?),
            (Some("start_pfn:"), Some(v)) => {
                let z = zones.last_mut().ok_or_else(bad)?;
                z.start_pfn = v.parse().map_err(|_| bad())?;
                z.spanned = spanned.ok_or_else(bad)?;
            }
            // One `count:` per CPU in the zone's pagesets.
            (Some("count:"), Some(v)) => {
                let z = zones.last_mut().ok_or_else(bad)?;
                z.pcp_free += v.parse::<u64>().map_err(|_| bad())?;
            }
            _ => {}
        }
    }
    zones.retain(|z| z.spanned > 0);
    Ok(zones)
}

/// What /proc/pagetypeinfo says: the pageblock order, the number of free
/// list orders and the pageblocks per zone (summed over migrate types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PagetypeInfo {
    /// pageblock_order (9 on x86-64: 2 MiB blocks).
    pub pageblock_order: u32,
    /// Free list orders (NR_PAGE_ORDERS: 11 on x86-64, orders 0-10).
    pub orders: u32,
    /// (node, zone, pageblocks) from "Number of blocks type".
    pub blocks: Vec<(u32, String, u64)>,
}

/// Parse /proc/pagetypeinfo.
pub fn parse_pagetypeinfo(text: &str, path: &Path) -> Result<PagetypeInfo> {
    let mut order = None;
    let mut orders = None;
    let mut blocks = Vec::new();
    let mut in_counts = false;
    for (i, line) in text.lines().enumerate() {
        let bad = || SnapshotError::Parse {
            path: path.into(),
            line: i + 1,
            text: line.into(),
        };
        // Each node has its own three tables (free pages, block counts,
        // mixed blocks), each under its own header.
        if let Some(v) = line.strip_prefix("Page block order:") {
            order = Some(v.trim().parse().map_err(|_| bad())?);
            in_counts = false;
        } else if let Some(v) = line.strip_prefix("Free pages count per migrate type at order") {
            orders = Some(v.split_whitespace().count() as u32);
            in_counts = false;
        } else if line.starts_with("Number of blocks type") {
            in_counts = true;
        } else if in_counts {
            // The block counts end where the per-order table of
            // CONFIG_PAGE_OWNER's mixed blocks (or nothing) starts: a zone
            // line seen twice.
            let Some((node, name)) = node_zone(line) else {
                continue;
            };
            if blocks
                .iter()
                .any(|(n, z, _): &(u32, String, u64)| *n == node && z == name)
            {
                in_counts = false;
                continue;
            }
            let rest = line.split_once(name).map_or("", |(_, r)| r);
            let sum = rest
                .split_whitespace()
                .map(|v| v.parse::<u64>().map_err(|_| bad()))
                .sum::<Result<u64>>()?;
            blocks.push((node, name.to_string(), sum));
        }
    }
    let missing = |what: &str| SnapshotError::Parse {
        path: path.into(),
        line: 0,
        text: format!("no {what}"),
    };
    Ok(PagetypeInfo {
        pageblock_order: order.ok_or_else(|| missing("'Page block order:' line"))?,
        orders: orders.ok_or_else(|| missing("free pages header"))?,
        blocks,
    })
}

/// Free blocks per order of one zone, as /proc/buddyinfo lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuddyZone {
    /// NUMA node.
    pub node: u32,
    /// Zone name.
    pub zone: String,
    /// Free blocks of order 0, 1, ...
    pub free: Vec<u64>,
}

impl BuddyZone {
    /// Free pages: the sum of 2^order over the free blocks.
    pub fn pages(&self) -> u64 {
        self.free.iter().enumerate().map(|(o, n)| n << o).sum()
    }
}

/// Parse /proc/buddyinfo.
pub fn parse_buddyinfo(text: &str, path: &Path) -> Result<Vec<BuddyZone>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let bad = || SnapshotError::Parse {
                path: path.into(),
                line: i + 1,
                text: line.into(),
            };
            let (node, zone) = node_zone(line).ok_or_else(bad)?;
            let rest = line.split_once(zone).map_or("", |(_, r)| r);
            let free = rest
                .split_whitespace()
                .map(|v| v.parse().map_err(|_| bad()))
                .collect::<Result<Vec<u64>>>()?;
            Ok(BuddyZone {
                node,
                zone: zone.into(),
                free,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zoneinfo_lists_spanning_zones() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/zoneinfo"
        ))
        .unwrap();
        let z = parse_zoneinfo(&text, Path::new("zoneinfo")).unwrap();
        let got: Vec<(&str, u64, u64, u64)> = z
            .iter()
            .map(|z| (z.name.as_str(), z.start_pfn, z.spanned, z.pcp_free))
            .collect();
        assert_eq!(
            got,
            vec![
                ("DMA", 1, 4095, 0),
                ("DMA32", 4096, 1044480, 0),
                ("Normal", 1048576, 5505024, 16576 + 5035)
            ]
        );
        assert!(parse_zoneinfo("Node 0, zone DMA\n  start_pfn: x\n", Path::new("z")).is_err());
    }

    #[test]
    fn pagetypeinfo_and_buddyinfo_parse() {
        let pti = "Page block order: 9\nPages per block:  512\n\n\
Free pages count per migrate type at order       0      1      2\n\
Node    0, zone      DMA, type    Unmovable      0      0      0\n\n\
Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate\n\
Node 0, zone      DMA            1            7            0            0            0\n\
Node 0, zone   Normal          169         3333          210            0            0\n\
Node 0, zone      DMA      0      0      0\n\
Page block order: 9\nPages per block:  512\n\n\
Free pages count per migrate type at order       0      1      2\n\
Node    1, zone    DMA32, type    Unmovable     52     48     50\n\n\
Number of blocks type     Unmovable      Movable  Reclaimable   HighAtomic      Isolate\n\
Node 1, zone    DMA32            2          500            10            0            0\n";
        let p = parse_pagetypeinfo(pti, Path::new("p")).unwrap();
        assert_eq!(p.pageblock_order, 9);
        assert_eq!(p.orders, 3);
        // Two nodes (a 2-node 6.1 guest): each has its own tables.
        assert_eq!(
            p.blocks,
            vec![
                (0, "DMA".into(), 8),
                (0, "Normal".into(), 3712),
                (1, "DMA32".into(), 512)
            ]
        );
        let b = parse_buddyinfo(
            "Node 0, zone      DMA      0      1      3\nNode 1, zone   Normal 4 0 0\n",
            Path::new("b"),
        )
        .unwrap();
        assert_eq!(b[0].pages(), 2 + 12);
        assert_eq!(
            (b[1].node, b[1].zone.as_str(), b[1].pages()),
            (1, "Normal", 4)
        );
        assert!(parse_buddyinfo("Node 0, zone DMA 1 x\n", Path::new("b")).is_err());
    }
}
