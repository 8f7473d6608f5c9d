//! The table of kernel hooks pagewatch attaches: for each, the eBPF program,
//! the tracepoints it can sit on (newest name first), the fields it records
//! and whether the per-process filter applies to it; and what a hook is
//! once attached or skipped (its field layout, why it was skipped), which
//! decoding a recording needs without the eBPF object.

use pagewatch_common::{event::MAX_ARGS, hook::Hook};

use crate::tracefs::EventFormat;

/// How to widen one hook's raw `args` back into the kernel's values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FieldLayout {
    pub sizes: [u8; MAX_ARGS],
    pub signed: [bool; MAX_ARGS],
}

/// A hook that is attached.
#[derive(Debug, Clone)]
pub struct AttachedHook {
    pub hook: Hook,
    /// `category/name` of the tracepoint it sits on.
    pub tracepoint: String,
    pub layout: FieldLayout,
    /// The kernel's format of that tracepoint (field layout, code names).
    pub format: EventFormat,
}

/// A hook that could not be attached, and why.
#[derive(Debug, Clone)]
pub struct SkippedHook {
    pub program: &'static str,
    pub reason: SkipReason,
}

/// Why a hook was not attached on this kernel: data, so front ends and
/// recordings can tell the cases apart (printed with [`Display`]).
///
/// [`Display`]: std::fmt::Display
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkipReason {
    /// The kernel has none of the tracepoints the hook can sit on
    /// (`category/name or name`).
    #[error("this kernel has no tracepoint {0}")]
    TracepointMissing(String),
    /// None of the syscall tracepoints exist: the kernel was built without
    /// CONFIG_FTRACE_SYSCALLS.
    #[error(
        "this kernel has no tracepoint {0} (no syscall tracepoints: built without CONFIG_FTRACE_SYSCALLS)"
    )]
    SyscallTracepointsAbsent(String),
    /// The tracepoint's format lacks a field the hook records.
    #[error("{tracepoint} has no field {field:?} on this kernel")]
    FieldMissing { tracepoint: String, field: String },
    /// The field exists but cannot be read as the hook needs.
    #[error("{tracepoint} field {field} {why}")]
    FieldUnusable {
        tracepoint: String,
        field: String,
        why: String,
    },
    /// The tracepoint's format file could not be read or parsed.
    #[error("{0}")]
    FormatUnreadable(String),
    /// An fentry/fexit hook needs the kernel's BTF, which is missing.
    #[error("no kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    BtfMissing(String),
    /// The function an fentry/fexit hook sits on is not in this kernel.
    #[error("this kernel has no function {0} (absent, or inlined)")]
    FunctionMissing(String),
    /// The kernel refused fentry/fexit (lockdown, ftrace disabled);
    /// `fallback` says what still covers what the hook would have seen.
    #[error(
        "the kernel refused fentry/fexit on {function} (EPERM: kernel lockdown or ftrace hooks disabled); {fallback}"
    )]
    FentryRefused {
        function: String,
        fallback: &'static str,
    },
    /// The kernel refused the tracepoint's perf event for lack of
    /// privilege (perf_event_paranoid).
    #[error("the kernel refused the tracepoint's perf event for {tracepoint}: {error}")]
    PerfRefused { tracepoint: String, error: String },
    /// Loading or attaching failed otherwise (the kernel's words).
    #[error("{0}")]
    Failed(String),
}

impl serde::Serialize for SkipReason {
    /// As its sentence.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A family of hooks, selectable as a group (`--events faults,thp,...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Family {
    /// User page faults.
    #[value(name = "faults")]
    Fault,
    /// vmscan reclaim: kswapd, direct and memcg reclaim, LRU shrinking, write-out.
    Reclaim,
    /// THP collapse by khugepaged and MADV_COLLAPSE (huge_memory/).
    Thp,
    /// Memory compaction (compaction/).
    Compaction,
    /// Page migration (migrate/): NUMA balancing, migrate_pages, compaction.
    Migration,
    /// KSM merging (ksm/).
    Ksm,
    /// OOM kills (oom/mark_victim).
    Oom,
    /// Process fork/exec/exit (sched/), to follow process trees.
    Process,
    /// Every page allocation and free (kmem/): high volume, opt-in.
    PageAlloc,
    /// Balloon inflation and deflation (fentry/fexit on the balloon core).
    Balloon,
    /// The syscalls that unmap, discard or populate memory (syscalls/:
    /// munmap, madvise, mremap, mmap), the evidence for `unmapped`,
    /// `refaulted` and `populate`.
    Syscalls,
}

/// How a hook's program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A classic tracepoint, configured from its tracefs format.
    Tracepoint,
    /// fentry on a kernel function (BTF); refused on locked-down kernels.
    FEntry,
    /// fexit on a kernel function (BTF); refused on locked-down kernels.
    FExit,
}

impl Family {
    /// Families attached when the user does not choose (all but PageAlloc).
    pub const DEFAULT: [Family; 10] = [
        Family::Fault,
        Family::Reclaim,
        Family::Thp,
        Family::Compaction,
        Family::Migration,
        Family::Ksm,
        Family::Oom,
        Family::Process,
        Family::Balloon,
        Family::Syscalls,
    ];
}

/// One hook: an eBPF program and the tracepoint(s) it can attach to.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    pub hook: Hook,
    pub family: Family,
    /// Name of the `#[tracepoint]` function in pagewatch-ebpf.
    pub program: &'static str,
    /// Tracepoint category (tracefs `events/` subdirectory); empty for
    /// fentry/fexit hooks.
    pub category: &'static str,
    /// Tracepoint (or kernel function) names to try, in order; the first
    /// the kernel has is used.
    pub names: &'static [&'static str],
    /// Record fields copied into the event's `args`, in order. Each must
    /// exist in the kernel's format, or the hook is skipped; a name ending
    /// in `?` is optional (absent on some kernels, then read as 0), and
    /// `name+K` is the 8 bytes at byte K of an array field.
    pub fields: &'static [&'static str],
    /// Whether the `--pid`/`--comm` filter applies (false for system-wide
    /// events such as kswapd's).
    pub per_process: bool,
    pub attach: Attach,
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
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::KswapdWake,
        family: Family::Reclaim,
        program: "kswapd_wake",
        category: "vmscan",
        names: &["mm_vmscan_kswapd_wake"],
        fields: &["nid", "order"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::KswapdSleep,
        family: Family::Reclaim,
        program: "kswapd_sleep",
        category: "vmscan",
        names: &["mm_vmscan_kswapd_sleep"],
        fields: &["nid"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::DirectReclaimBegin,
        family: Family::Reclaim,
        program: "direct_reclaim_begin",
        category: "vmscan",
        names: &["mm_vmscan_direct_reclaim_begin"],
        fields: &["order", "gfp_flags"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::DirectReclaimEnd,
        family: Family::Reclaim,
        program: "direct_reclaim_end",
        category: "vmscan",
        names: &["mm_vmscan_direct_reclaim_end"],
        fields: &["nr_reclaimed"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::MemcgReclaimBegin,
        family: Family::Reclaim,
        program: "memcg_reclaim_begin",
        category: "vmscan",
        names: &["mm_vmscan_memcg_reclaim_begin"],
        fields: &["order", "gfp_flags"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::MemcgReclaimEnd,
        family: Family::Reclaim,
        program: "memcg_reclaim_end",
        category: "vmscan",
        names: &["mm_vmscan_memcg_reclaim_end"],
        fields: &["nr_reclaimed"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::LruShrinkInactive,
        family: Family::Reclaim,
        program: "lru_shrink_inactive",
        category: "vmscan",
        names: &["mm_vmscan_lru_shrink_inactive"],
        fields: &["nid", "nr_scanned", "nr_reclaimed", "priority"],
        per_process: false,
        attach: Attach::Tracepoint,
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
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::ScanPmd,
        family: Family::Thp,
        program: "scan_pmd",
        category: "huge_memory",
        names: &["mm_khugepaged_scan_pmd"],
        fields: &[
            "mm",
            "pfn",
            "referenced",
            "none_or_zero",
            "status",
            "unmapped",
        ],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CollapseHugePage,
        family: Family::Thp,
        program: "collapse_huge_page",
        category: "huge_memory",
        names: &["mm_collapse_huge_page"],
        fields: &["mm", "isolated", "status"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CollapseIsolate,
        family: Family::Thp,
        program: "collapse_isolate",
        category: "huge_memory",
        names: &["mm_collapse_huge_page_isolate"],
        fields: &["pfn", "none_or_zero", "referenced", "status"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CollapseSwapin,
        family: Family::Thp,
        program: "collapse_swapin",
        category: "huge_memory",
        names: &["mm_collapse_huge_page_swapin"],
        fields: &["mm", "swapped_in", "referenced", "ret"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::ScanFile,
        family: Family::Thp,
        program: "scan_file",
        category: "huge_memory",
        names: &["mm_khugepaged_scan_file"],
        fields: &["mm", "pfn", "present", "swap", "result"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CollapseFile,
        family: Family::Thp,
        program: "collapse_file",
        category: "huge_memory",
        names: &["mm_khugepaged_collapse_file"],
        fields: &["mm", "hpfn", "index", "addr", "nr", "result"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CompactionBegin,
        family: Family::Compaction,
        program: "compaction_begin",
        category: "compaction",
        names: &["mm_compaction_begin"],
        fields: &["zone_start", "migrate_pfn", "free_pfn", "zone_end"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CompactionEnd,
        family: Family::Compaction,
        program: "compaction_end",
        category: "compaction",
        names: &["mm_compaction_end"],
        fields: &[
            "zone_start",
            "migrate_pfn",
            "free_pfn",
            "zone_end",
            "status",
        ],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::CompactionMigrate,
        family: Family::Compaction,
        program: "compaction_migrate",
        category: "compaction",
        names: &["mm_compaction_migratepages"],
        fields: &["nr_migrated", "nr_failed"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::MigratePages,
        family: Family::Migration,
        program: "migrate_pages",
        category: "migrate",
        names: &["mm_migrate_pages"],
        fields: &[
            "succeeded",
            "failed",
            "thp_succeeded",
            "thp_failed",
            "mode",
            "reason",
        ],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    // Not filtered per process: compaction (kcompactd) and another
    // process's migrate_pages(2) move a followed process's pages from
    // outside it; the PFNs in the entries tie them to it.
    HookSpec {
        hook: Hook::SetMigrationPte,
        family: Family::Migration,
        program: "set_migration_pte",
        category: "migrate",
        names: &["set_migration_pte"],
        fields: &["addr", "pte", "order"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::RemoveMigrationPte,
        family: Family::Migration,
        program: "remove_migration_pte",
        category: "migrate",
        names: &["remove_migration_pte"],
        fields: &["addr", "pte", "order"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::KsmMergeOne,
        family: Family::Ksm,
        program: "ksm_merge_one",
        category: "ksm",
        names: &["ksm_merge_one_page"],
        fields: &["pfn", "mm", "err"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::KsmMergeWithKsm,
        family: Family::Ksm,
        program: "ksm_merge_with_ksm",
        category: "ksm",
        names: &["ksm_merge_with_ksm_page"],
        fields: &["pfn", "mm", "err"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::KsmRemove,
        family: Family::Ksm,
        program: "ksm_remove",
        category: "ksm",
        names: &["ksm_remove_ksm_page"],
        fields: &["pfn"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::OomVictim,
        family: Family::Oom,
        program: "oom_victim",
        category: "oom",
        names: &["mark_victim"],
        // Before 6.2 mark_victim carried only the pid.
        fields: &["pid", "anon_rss?", "file_rss?", "shmem_rss?"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::ProcessFork,
        family: Family::Process,
        program: "process_fork",
        category: "sched",
        names: &["sched_process_fork"],
        fields: &["parent_pid", "child_pid"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::ProcessExec,
        family: Family::Process,
        program: "process_exec",
        category: "sched",
        names: &["sched_process_exec"],
        fields: &["pid", "old_pid"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::ProcessExit,
        family: Family::Process,
        program: "process_exit",
        category: "sched",
        names: &["sched_process_exit"],
        // comm[16] as two 8-byte slices: the name of a process that
        // exits before /proc/PID/comm could be read.
        fields: &["pid", "group_dead?", "comm+0", "comm+8"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::PageAlloc,
        family: Family::PageAlloc,
        program: "page_alloc",
        category: "kmem",
        names: &["mm_page_alloc"],
        fields: &["pfn", "order", "gfp_flags", "migratetype"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::PageFree,
        family: Family::PageAlloc,
        program: "page_free",
        category: "kmem",
        names: &["mm_page_free"],
        fields: &["pfn", "order"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    // No tracepoint marks balloon inflation: fentry/fexit on the balloon
    // core (mm/balloon_compaction.c), which virtio-balloon, vmw_balloon and
    // hv_balloon's page migration use. The program turns the struct page
    // pointer into a PFN (see VMEMMAP_* in pagewatch-ebpf).
    HookSpec {
        hook: Hook::BalloonInflate,
        family: Family::Balloon,
        program: "balloon_inflate",
        category: "",
        names: &["balloon_page_enqueue"],
        fields: &[],
        per_process: false,
        attach: Attach::FEntry,
    },
    HookSpec {
        hook: Hook::BalloonDeflate,
        family: Family::Balloon,
        program: "balloon_deflate",
        category: "",
        names: &["balloon_page_dequeue"],
        fields: &[],
        per_process: false,
        attach: Attach::FExit,
    },
    // No tracepoint marks THP splits on x86: fentry on the functions that
    // split a PMD mapping and a folio. The PMD program reads the PMD entry
    // for its PFN; the folio program turns the folio (= head page) pointer
    // into a PFN.
    HookSpec {
        hook: Hook::SplitPmd,
        family: Family::Thp,
        program: "thp_split_pmd",
        category: "",
        names: &["__split_huge_pmd"],
        fields: &[],
        per_process: false,
        attach: Attach::FEntry,
    },
    HookSpec {
        hook: Hook::SplitFolio,
        family: Family::Thp,
        program: "thp_split_folio",
        category: "",
        names: &[
            "__folio_split",
            "split_huge_page_to_list_to_order",
            "split_huge_page_to_list",
        ],
        fields: &[],
        per_process: false,
        attach: Attach::FEntry,
    },
    HookSpec {
        hook: Hook::TaskNewtask,
        family: Family::Process,
        program: "task_newtask",
        category: "task",
        names: &["task_newtask"],
        // pid first, clone_flags second: the eBPF program reads them by
        // these slots to let new processes (not threads) into the filter.
        fields: &["pid", "clone_flags"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    // The syscalls' own tracepoints (CONFIG_FTRACE_SYSCALLS): they fire only
    // for their syscall, so the cost is per call, not per syscall. Entry
    // arguments are enough for ranges given by the caller; mmap's address
    // is its return value.
    HookSpec {
        hook: Hook::SysMunmap,
        family: Family::Syscalls,
        program: "sys_munmap",
        category: "syscalls",
        names: &["sys_enter_munmap"],
        fields: &["addr", "len"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::SysMadvise,
        family: Family::Syscalls,
        program: "sys_madvise",
        category: "syscalls",
        names: &["sys_enter_madvise"],
        fields: &["start", "len_in", "behavior"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::SysMremap,
        family: Family::Syscalls,
        program: "sys_mremap",
        category: "syscalls",
        names: &["sys_enter_mremap"],
        fields: &["addr", "old_len", "new_len", "flags", "new_addr"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::SysMmap,
        family: Family::Syscalls,
        program: "sys_mmap",
        category: "syscalls",
        names: &["sys_enter_mmap"],
        fields: &["addr", "len", "prot", "flags"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::SysMmapExit,
        family: Family::Syscalls,
        program: "sys_mmap_exit",
        category: "syscalls",
        names: &["sys_exit_mmap"],
        fields: &["ret"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
    // THP migration entries: the PMD counterparts of set/remove_migration_pte.
    // Not filtered per process: compaction and another process's
    // migrate_pages(2) run outside the process; the PFNs tie them to it.
    HookSpec {
        hook: Hook::SetMigrationPmd,
        family: Family::Migration,
        program: "set_migration_pmd",
        category: "thp",
        names: &["set_migration_pmd"],
        fields: &["addr", "pmd"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    HookSpec {
        hook: Hook::RemoveMigrationPmd,
        family: Family::Migration,
        program: "remove_migration_pmd",
        category: "thp",
        names: &["remove_migration_pmd"],
        fields: &["addr", "pmd"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    // A migrate_pages() call's reason before its first move: moves seen
    // while a long call runs have their reason before mm_migrate_pages.
    HookSpec {
        hook: Hook::MigratePagesStart,
        family: Family::Migration,
        program: "migrate_pages_start",
        category: "migrate",
        names: &["mm_migrate_pages_start"],
        fields: &["mode", "reason"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    // process_madvise(2) works on another process's memory (a pidfd's):
    // the caller is not the process whose pages go, so it is not
    // filtered. MADV_PAGEOUT's write-outs run in the caller's thread.
    HookSpec {
        hook: Hook::SysProcessMadvise,
        family: Family::Syscalls,
        program: "sys_process_madvise",
        category: "syscalls",
        names: &["sys_enter_process_madvise"],
        fields: &["pidfd", "behavior"],
        per_process: false,
        attach: Attach::Tracepoint,
    },
    // malloc gives the top of its heap back by lowering the program break.
    HookSpec {
        hook: Hook::SysBrk,
        family: Family::Syscalls,
        program: "sys_brk",
        category: "syscalls",
        names: &["sys_enter_brk"],
        fields: &["brk"],
        per_process: true,
        attach: Attach::Tracepoint,
    },
];

/// The spec of `hook`.
pub fn spec(hook: Hook) -> &'static HookSpec {
    HOOKS
        .iter()
        .find(|s| s.hook == hook)
        .expect("every hook has a spec (tested)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagewatch_common::event::MAX_ARGS;

    #[test]
    fn table_is_in_hook_order_and_fits_a_record() {
        assert_eq!(HOOKS.len(), Hook::ALL.len());
        for (spec, hook) in HOOKS.iter().zip(Hook::ALL) {
            assert_eq!(spec.hook, hook, "{} out of order", spec.program);
            assert!(
                spec.fields.len() <= MAX_ARGS,
                "{} has too many fields",
                spec.program
            );
            assert!(!spec.names.is_empty());
        }
    }
}
