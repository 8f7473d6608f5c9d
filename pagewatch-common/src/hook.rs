//! Hook identities and the per-hook configuration userspace hands to the
//! eBPF programs before attaching them.
//!
//! Tracepoint layouts differ between kernel versions, so the eBPF side never
//! hard-codes a field offset: userspace parses each event's tracefs `format`
//! file and writes the offsets and sizes of the fields it wants into the
//! `HOOKS` array map, indexed by [`Hook`].

use crate::event::MAX_ARGS;

/// Every hook pagewatch can attach. The discriminant is the record's
/// `EventHeader::hook` and the index into the `HOOKS` and `DROPS` maps.
/// New hooks are appended; existing values never change (recordings keep them).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `exceptions/page_fault_user`: address, ip, error_code.
    PageFaultUser = 0,
    /// `vmscan/mm_vmscan_kswapd_wake`: nid, zid, order.
    KswapdWake = 1,
    /// `vmscan/mm_vmscan_kswapd_sleep`: nid.
    KswapdSleep = 2,
    /// `vmscan/mm_vmscan_direct_reclaim_begin`: order, gfp_flags.
    DirectReclaimBegin = 3,
    /// `vmscan/mm_vmscan_direct_reclaim_end`: nr_reclaimed.
    DirectReclaimEnd = 4,
    /// `vmscan/mm_vmscan_memcg_reclaim_begin`: order, gfp_flags.
    MemcgReclaimBegin = 5,
    /// `vmscan/mm_vmscan_memcg_reclaim_end`: nr_reclaimed.
    MemcgReclaimEnd = 6,
    /// `vmscan/mm_vmscan_lru_shrink_inactive`: nid, nr_scanned, nr_reclaimed, priority.
    LruShrinkInactive = 7,
    /// `vmscan/mm_vmscan_write_folio` (`mm_vmscan_writepage` before 5.19): pfn, reclaim_flags.
    WriteFolio = 8,
}

impl Hook {
    /// Every hook, in discriminant order.
    pub const ALL: [Hook; 9] = [
        Hook::PageFaultUser,
        Hook::KswapdWake,
        Hook::KswapdSleep,
        Hook::DirectReclaimBegin,
        Hook::DirectReclaimEnd,
        Hook::MemcgReclaimBegin,
        Hook::MemcgReclaimEnd,
        Hook::LruShrinkInactive,
        Hook::WriteFolio,
    ];

    /// The hook with discriminant `value`, if there is one.
    pub fn from_u16(value: u16) -> Option<Hook> {
        Self::ALL.get(usize::from(value)).copied()
    }
}

/// Number of slots in the per-hook maps; room for hooks added later.
pub const MAX_HOOKS: u32 = 64;

/// Where one hook's fields live in its tracepoint record (16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookConfig {
    /// Byte offset of each wanted field in the tracepoint record.
    pub offsets: [u16; MAX_ARGS],
    /// Byte size of each field: 1, 2, 4 or 8; 0 leaves the slot unused.
    pub sizes: [u8; MAX_ARGS],
    /// 1: record only tasks whose tgid is in the `TGIDS` filter map (when
    /// filtering is on); 0: always record (system-wide events such as kswapd).
    pub per_process: u8,
    pub _pad: [u8; 3],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), Copy, no padding (asserted below).
    unsafe impl aya::Pod for super::HookConfig {}
    const _: () = assert!(core::mem::size_of::<super::HookConfig>() == 16);
}
