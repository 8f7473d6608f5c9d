//! Bit layouts of /proc/PID/pagemap entries and /proc/kpageflags words,
//! with their names: kernel ABI facts, read by the snapshots and by the
//! kernel quirk probes.
//!
//! Sources: Documentation/admin-guide/mm/pagemap.rst and
//! include/uapi/linux/kernel-page-flags.h. Bits 0-26 of kpageflags are a
//! stable ABI; bits 32 and up are kernel-internal flags exported "for kernel
//! hacking" and are labelled as such ([`KPF_HACKING_FIRST`]).

/// pagemap: the PFN (present) or swap type/offset (swapped) field, bits 0-54.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;
/// pagemap bit 55: PTE is soft-dirty (CONFIG_MEM_SOFT_DIRTY, since 3.11).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// pagemap bit 56: page exclusively mapped (since 4.2).
pub const PM_EXCLUSIVE: u64 = 1 << 56;
/// pagemap bit 57: PTE is uffd-wp write-protected (since 5.13).
pub const PM_UFFD_WP: u64 = 1 << 57;
/// pagemap bit 58: PTE is a guard region (MADV_GUARD_INSTALL, since 6.14).
pub const PM_GUARD: u64 = 1 << 58;
/// pagemap bit 61: file page or shared anon (since 3.5).
pub const PM_FILE: u64 = 1 << 61;
/// pagemap bit 62: page swapped.
pub const PM_SWAP: u64 = 1 << 62;
/// pagemap bit 63: page present.
pub const PM_PRESENT: u64 = 1 << 63;

/// Names of the documented pagemap bits, for display.
pub const PAGEMAP_BITS: [(u64, &str); 7] = [
    (PM_SOFT_DIRTY, "soft_dirty"),
    (PM_EXCLUSIVE, "exclusive"),
    (PM_UFFD_WP, "uffd_wp"),
    (PM_GUARD, "guard"),
    (PM_FILE, "file"),
    (PM_SWAP, "swapped"),
    (PM_PRESENT, "present"),
];

/// The first swap type that is no swap file: the kernel's non-swap entries
/// take the top of the 5-bit type space, below 32 by 8 types when every
/// kind is built in (so MAX_SWAPFILES is at least 24 on every kernel):
/// hwpoison, migration and device-private entries, whose offset is a PFN,
/// and, last (31), PTE markers (uffd-wp, poison, guard regions), which name
/// no page. pagemap reports all of them as swapped (bit 62).
pub const FIRST_NON_SWAP_TYPE: u8 = 24;
/// The swap type of PTE markers.
pub const PTE_MARKER_TYPE: u8 = 31;

/// One decoded pagemap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry(pub u64);

impl PagemapEntry {
    /// Page is resident.
    pub fn present(self) -> bool {
        self.0 & PM_PRESENT != 0
    }
    /// Page is in swap (bit 62; also set for the kernel's non-swap entries,
    /// see [`PagemapEntry::in_swap_file`]).
    pub fn swapped(self) -> bool {
        self.0 & PM_SWAP != 0
    }
    /// Page is in a swap file or device: swapped, with a swap file's type.
    pub fn in_swap_file(self) -> bool {
        self.swap_type().is_some_and(|t| t < FIRST_NON_SWAP_TYPE)
    }
    /// PFN of a page the entry names without mapping it: a page being
    /// migrated (the migration entry names the page being copied), or a
    /// device-private or hwpoisoned page.
    pub fn moving_pfn(self) -> Option<u64> {
        self.swap_type()
            .filter(|t| (FIRST_NON_SWAP_TYPE..PTE_MARKER_TYPE).contains(t))
            .and(self.swap_offset())
            .filter(|&pfn| pfn != 0)
    }
    /// File-backed or shared anonymous page.
    pub fn file(self) -> bool {
        self.0 & PM_FILE != 0
    }
    /// Mapped only once.
    pub fn exclusive(self) -> bool {
        self.0 & PM_EXCLUSIVE != 0
    }
    /// Soft-dirty PTE.
    pub fn soft_dirty(self) -> bool {
        self.0 & PM_SOFT_DIRTY != 0
    }
    /// PFN of a present page (0 when the reader lacks CAP_SYS_ADMIN).
    pub fn pfn(self) -> Option<u64> {
        self.present().then_some(self.0 & PM_PFN_MASK)
    }
    /// Swap type (bits 0-4) of a swapped page.
    pub fn swap_type(self) -> Option<u8> {
        (self.swapped() && !self.present()).then_some((self.0 & 0x1f) as u8)
    }
    /// Swap offset (bits 5-54) of a swapped page.
    pub fn swap_offset(self) -> Option<u64> {
        (self.swapped() && !self.present()).then_some((self.0 & PM_PFN_MASK) >> 5)
    }
    /// Names of the set flag bits.
    pub fn names(self) -> Vec<&'static str> {
        PAGEMAP_BITS
            .iter()
            .filter(|(b, _)| self.0 & b != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// First kpageflags bit that is kernel-internal ("kernel hacking assistance").
pub const KPF_HACKING_FIRST: u32 = 32;

/// kpageflags bit numbers used by the accounting code.
pub mod kpf {
    pub const REFERENCED: u32 = 2;
    pub const DIRTY: u32 = 4;
    pub const LRU: u32 = 5;
    pub const SLAB: u32 = 7;
    pub const BUDDY: u32 = 10;
    pub const MMAP: u32 = 11;
    pub const ANON: u32 = 12;
    pub const SWAPCACHE: u32 = 13;
    pub const SWAPBACKED: u32 = 14;
    pub const COMPOUND_HEAD: u32 = 15;
    pub const COMPOUND_TAIL: u32 = 16;
    pub const HUGE: u32 = 17;
    pub const NOPAGE: u32 = 20;
    pub const KSM: u32 = 21;
    pub const THP: u32 = 22;
    pub const OFFLINE: u32 = 23;
    pub const ZERO_PAGE: u32 = 24;
    pub const IDLE: u32 = 25;
}

/// Names of kpageflags bits, indexed by bit number (None: undocumented).
/// Bits 0-26 are stable; 32-41 are kernel hacking bits.
pub const KPF_NAMES: [(u32, &str); 37] = [
    (0, "locked"),
    (1, "error"),
    (2, "referenced"),
    (3, "uptodate"),
    (4, "dirty"),
    (5, "lru"),
    (6, "active"),
    (7, "slab"),
    (8, "writeback"),
    (9, "reclaim"),
    (10, "buddy"),
    (11, "mmap"),
    (12, "anon"),
    (13, "swapcache"),
    (14, "swapbacked"),
    (15, "compound_head"),
    (16, "compound_tail"),
    (17, "huge"),
    (18, "unevictable"),
    (19, "hwpoison"),
    (20, "nopage"),
    (21, "ksm"),
    (22, "thp"),
    // 4.20+: was "balloon" before (commit ca215086b1, PG_balloon -> PG_offline).
    (23, "offline"),
    (24, "zero_page"),
    (25, "idle"),
    (26, "pgtable"),
    // Kernel hacking assistances: subject to change, never rely on them.
    (32, "reserved"),
    (33, "mlocked"),
    (34, "mappedtodisk"),
    (35, "private"),
    (36, "private_2"),
    (37, "owner_private"),
    (38, "arch"),
    (39, "uncached"),
    (40, "softdirty"),
    (41, "arch_2"),
];

/// Name of one kpageflags bit (`bit42` for undocumented ones).
pub fn kpf_name(bit: u32) -> String {
    KPF_NAMES
        .iter()
        .find(|(b, _)| *b == bit)
        .map(|(_, n)| n.to_string())
        .unwrap_or_else(|| format!("bit{bit}"))
}

/// Whether a kpageflags word has `bit` set.
pub fn has(flags: u64, bit: u32) -> bool {
    flags & (1 << bit) != 0
}

/// Comma-separated flag names of a kpageflags word; kernel-hacking bits are
/// prefixed with `k:` so nobody mistakes them for stable ABI.
pub fn kpf_describe(flags: u64) -> String {
    let mut out = Vec::new();
    for bit in 0..64 {
        if has(flags, bit) {
            let name = kpf_name(bit);
            if bit >= KPF_HACKING_FIRST {
                out.push(format!("k:{name}"));
            } else {
                out.push(name);
            }
        }
    }
    if out.is_empty() {
        "(none)".into()
    } else {
        out.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pagemap_entry_decodes_swap_fields() {
        let e = PagemapEntry(PM_SWAP | (1234 << 5) | 3);
        assert_eq!(e.swap_type(), Some(3));
        assert_eq!(e.swap_offset(), Some(1234));
        assert_eq!(e.pfn(), None);
        let p = PagemapEntry(PM_PRESENT | PM_EXCLUSIVE | 42);
        assert_eq!(p.pfn(), Some(42));
        assert_eq!(p.names(), vec!["exclusive", "present"]);
        assert_eq!(kpf_describe((1 << 12) | (1 << 33)), "anon,k:mlocked");
    }
}
