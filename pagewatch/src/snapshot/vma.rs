//! One mapped range of a process, as /proc/PID/maps lists it; read by
//! [`super::maps`] from the text or through [`super::procmap_query`].

use serde::Serialize;

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
