//! Which NUMA node a PFN belongs to, from sysfs memory blocks: each
//! `/sys/devices/system/node/nodeN/memoryM` link puts block M (of
//! `block_size_bytes`) on node N. Takes the sysfs root so it reads a
//! captured tree or a guest's files.

use std::path::Path;

/// PFN ranges per node, sorted by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMap {
    /// (first pfn, end pfn exclusive, node).
    ranges: Vec<(u64, u64, i32)>,
}

impl NodeMap {
    /// Reads the block-to-node layout under `sys` (normally `/sys`).
    /// Without memory-block information (no CONFIG_MEMORY_HOTPLUG) every
    /// PFN is on node 0 when the machine has one node, else unknown.
    pub fn read(sys: &Path) -> Self {
        let block_bytes =
            std::fs::read_to_string(sys.join("devices/system/memory/block_size_bytes"))
                .ok()
                .and_then(|t| u64::from_str_radix(t.trim(), 16).ok());
        let Some(block_pages) = block_bytes.map(|b| b / 4096).filter(|&p| p > 0) else {
            return Self::default();
        };
        let mut ranges = Vec::new();
        let Ok(nodes) = std::fs::read_dir(sys.join("devices/system/node")) else {
            return Self::default();
        };
        for node in nodes.flatten() {
            let name = node.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("node"))
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(node.path()) else {
                continue;
            };
            for e in entries.flatten() {
                if let Some(block) = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.strip_prefix("memory"))
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    ranges.push((block * block_pages, (block + 1) * block_pages, n));
                }
            }
        }
        ranges.sort_unstable();
        Self { ranges }
    }

    /// The node of `pfn`, or -1 when no block covers it.
    pub fn node_of(&self, pfn: u64) -> i32 {
        let i = self.ranges.partition_point(|r| r.0 <= pfn);
        match i.checked_sub(1).map(|i| self.ranges[i]) {
            Some((start, end, node)) if (start..end).contains(&pfn) => node,
            _ => -1,
        }
    }

    /// Whether any layout was found.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_map_pfns_to_nodes() {
        let root = std::env::temp_dir().join(format!("pw-numa-{}", std::process::id()));
        let mem = root.join("devices/system/memory");
        std::fs::create_dir_all(&mem).unwrap();
        std::fs::write(mem.join("block_size_bytes"), "8000000\n").unwrap();
        for (node, blocks) in [(0, [0, 1]), (1, [2, 3])] {
            let dir = root.join(format!("devices/system/node/node{node}"));
            for b in blocks {
                std::fs::create_dir_all(dir.join(format!("memory{b}"))).unwrap();
            }
            std::fs::create_dir_all(dir.join("cpu0")).unwrap();
        }
        let m = NodeMap::read(&root);
        assert_eq!(m.node_of(0), 0);
        assert_eq!(m.node_of(65535), 0);
        assert_eq!(m.node_of(65536), 1);
        assert_eq!(m.node_of(4 * 32768), -1);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(NodeMap::read(&root).is_empty());
    }
}
