//! /proc/PID/maps: the mapped ranges whose pagemap entries are read, with
//! what kind of mapping each is. The parser takes text so it is tested on
//! captured files (test_data/snapshot/).

use std::path::Path;

use serde::Serialize;

use super::error::{Result, SnapshotError};

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions, e.g. `rw-p`.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// Device `major:minor`.
    pub dev: String,
    /// Inode of the mapped file (0 for anonymous).
    pub inode: u64,
    /// Path or pseudo name (`[heap]`), empty for anonymous.
    pub name: String,
}

impl Vma {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// Whether the VMA is empty (never for kernel output).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// MAP_SHARED mapping.
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    /// Whether the kernel page size can be larger than 4 KiB here (hugetlbfs
    /// files and MAP_HUGETLB mappings, which show as `/anon_hugepage`).
    pub fn maybe_hugetlb(&self) -> bool {
        self.name.starts_with("/anon_hugepage") || self.name.contains("/hugepages")
    }
}

/// Parse the text of /proc/PID/maps (`path` only names it in errors).
pub fn parse_maps(text: &str, path: &Path) -> Result<Vec<Vma>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            parse_line(line).ok_or_else(|| SnapshotError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<Vma> {
    let mut it = line.splitn(6, ' ');
    let (range, perms, offset, dev, inode) =
        (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    let name = it.next().unwrap_or("").trim_start().to_string();
    let (start, end) = range.split_once('-')?;
    Some(Vma {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: perms.to_string(),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_captured_maps() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/test_data/snapshot/maps"
        ));
        let text = std::fs::read_to_string(path).unwrap();
        let vmas = parse_maps(&text, path).unwrap();
        assert_eq!(vmas.len(), text.lines().count());
        assert!(vmas.iter().any(|v| v.name == "[stack]"));
        assert!(vmas.iter().all(|v| v.start < v.end && v.start % 4096 == 0));
        let anon = vmas.iter().find(|v| v.name.is_empty()).unwrap();
        assert_eq!(anon.inode, 0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_maps("zzz\n", Path::new("x")).is_err());
    }
}
