//! The table of kernel hooks pagewatch attaches: for each, the eBPF program,
//! the tracepoints it can sit on (newest name first), the fields it records
//! and whether the per-process filter applies to it.

use pagewatch_common::hook::Hook;

/// A family of hooks, selectable as a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// User page faults.
    Fault,
    /// vmscan reclaim: kswapd, direct and memcg reclaim, LRU shrinking, write-out.
    Reclaim,
}

/// One hook: an eBPF program and the tracepoint(s) it can attach to.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    pub hook: Hook,
    pub family: Family,
    /// Name of the `#[tracepoint]` function in pagewatch-ebpf.
    pub program: &'static str,
    /// Tracepoint category (tracefs `events/` subdirectory).
    pub category: &'static str,
    /// Tracepoint names to try, in order; the first the kernel has is used.
    pub names: &'static [&'static str],
    /// Record fields copied into the event's `args`, in order. Every one
    /// must exist in the kernel's format, or the hook is skipped.
    pub fields: &'static [&'static str],
    /// Whether the `--pid`/`--comm` filter applies (false for system-wide
    /// events such as kswapd's).
    pub per_process: bool,
}

/// Every hook pagewatch knows, in [`Hook`] order.
pub const HOOKS: &[HookSpec] = &[
    HookSpec {
        hook: Hook::PageFaultUser,
        family: Family::Fault,
        program: "page_fault_user",
        category: "exceptions",
        names: &["page_fault_user"],
        fields: &["address", "ip", "error_code"],
        per_process: true,
    },
    HookSpec {
        hook: Hook::KswapdWake,
        family: Family::Reclaim,
        program: "kswapd_wake",
        category: "vmscan",
        names: &["mm_vmscan_kswapd_wake"],
        fields: &["nid", "order"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::KswapdSleep,
        family: Family::Reclaim,
        program: "kswapd_sleep",
        category: "vmscan",
        names: &["mm_vmscan_kswapd_sleep"],
        fields: &["nid"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::DirectReclaimBegin,
        family: Family::Reclaim,
        program: "direct_reclaim_begin",
        category: "vmscan",
        names: &["mm_vmscan_direct_reclaim_begin"],
        fields: &["order", "gfp_flags"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::DirectReclaimEnd,
        family: Family::Reclaim,
        program: "direct_reclaim_end",
        category: "vmscan",
        names: &["mm_vmscan_direct_reclaim_end"],
        fields: &["nr_reclaimed"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::MemcgReclaimBegin,
        family: Family::Reclaim,
        program: "memcg_reclaim_begin",
        category: "vmscan",
        names: &["mm_vmscan_memcg_reclaim_begin"],
        fields: &["order", "gfp_flags"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::MemcgReclaimEnd,
        family: Family::Reclaim,
        program: "memcg_reclaim_end",
        category: "vmscan",
        names: &["mm_vmscan_memcg_reclaim_end"],
        fields: &["nr_reclaimed"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::LruShrinkInactive,
        family: Family::Reclaim,
        program: "lru_shrink_inactive",
        category: "vmscan",
        names: &["mm_vmscan_lru_shrink_inactive"],
        fields: &["nid", "nr_scanned", "nr_reclaimed", "priority"],
        per_process: false,
    },
    HookSpec {
        hook: Hook::WriteFolio,
        family: Family::Reclaim,
        program: "write_folio",
        category: "vmscan",
        // Renamed in 5.19 when reclaim write-out moved to folios.
        names: &["mm_vmscan_write_folio", "mm_vmscan_writepage"],
        fields: &["pfn", "reclaim_flags"],
        per_process: false,
    },
];

/// The spec of `hook`.
pub fn spec(hook: Hook) -> &'static HookSpec {
    &HOOKS[hook as usize]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagewatch_common::event::MAX_ARGS;

    #[test]
    fn table_is_in_hook_order_and_fits_a_record() {
        for (i, spec) in HOOKS.iter().enumerate() {
            assert_eq!(spec.hook as usize, i, "{} out of order", spec.program);
            assert!(
                spec.fields.len() <= MAX_ARGS,
                "{} has too many fields",
                spec.program
            );
            assert!(!spec.names.is_empty());
        }
    }
}
