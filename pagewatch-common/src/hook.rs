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
    /// `huge_memory/mm_khugepaged_scan_pmd` (khugepaged and MADV_COLLAPSE):
    /// mm, pfn, referenced, none_or_zero, status, unmapped.
    ScanPmd = 9,
    /// `huge_memory/mm_collapse_huge_page`: mm, isolated, status.
    CollapseHugePage = 10,
    /// `huge_memory/mm_collapse_huge_page_isolate`: pfn, none_or_zero, referenced, status.
    CollapseIsolate = 11,
    /// `huge_memory/mm_collapse_huge_page_swapin`: mm, swapped_in, referenced, ret.
    CollapseSwapin = 12,
    /// `huge_memory/mm_khugepaged_scan_file`: mm, pfn, present, swap, result.
    ScanFile = 13,
    /// `huge_memory/mm_khugepaged_collapse_file`: mm, hpfn, index, addr, nr, result.
    CollapseFile = 14,
    /// `compaction/mm_compaction_begin`: zone_start, migrate_pfn, free_pfn, zone_end.
    CompactionBegin = 15,
    /// `compaction/mm_compaction_end`: zone_start, migrate_pfn, free_pfn, zone_end, status.
    CompactionEnd = 16,
    /// `compaction/mm_compaction_migratepages`: nr_migrated, nr_failed.
    CompactionMigrate = 17,
    /// `migrate/mm_migrate_pages`: succeeded, failed, thp_succeeded, thp_failed, mode, reason.
    MigratePages = 18,
    /// `migrate/set_migration_pte`: addr, pte, order.
    SetMigrationPte = 19,
    /// `migrate/remove_migration_pte`: addr, pte, order.
    RemoveMigrationPte = 20,
    /// `ksm/ksm_merge_one_page`: pfn, mm, err.
    KsmMergeOne = 21,
    /// `ksm/ksm_merge_with_ksm_page`: pfn, mm, err.
    KsmMergeWithKsm = 22,
    /// `ksm/ksm_remove_ksm_page`: pfn.
    KsmRemove = 23,
    /// `oom/mark_victim`: pid, anon_rss, file_rss, shmem_rss (pages).
    OomVictim = 24,
    /// `sched/sched_process_fork`: parent_pid, child_pid.
    ProcessFork = 25,
    /// `sched/sched_process_exec`: pid, old_pid.
    ProcessExec = 26,
    /// `sched/sched_process_exit`: pid, group_dead (6.10+; 0 before), comm.
    ProcessExit = 27,
    /// `kmem/mm_page_alloc`: pfn, order, gfp_flags, migratetype (opt-in: high volume).
    PageAlloc = 28,
    /// `kmem/mm_page_free`: pfn, order (opt-in: high volume).
    PageFree = 29,
    /// fentry on `balloon_page_enqueue`: a page went into the balloon: pfn, struct page *.
    BalloonInflate = 30,
    /// fexit on `balloon_page_dequeue`: a page came back out: pfn, struct page *.
    BalloonDeflate = 31,
    /// fentry on `__split_huge_pmd`: a PMD mapping of a THP is being split
    /// into PTEs: pfn (of the PMD's folio, 0 if not a present huge PMD), address.
    SplitPmd = 32,
    /// fentry on the folio split function (`__folio_split`, else
    /// `split_huge_page_to_list_to_order`, else `split_huge_page_to_list`):
    /// a large folio is being split: pfn, struct page *.
    SplitFolio = 33,
    /// `task/task_newtask`: pid (the new task's), clone_flags. Fires in the
    /// parent's context before the child runs; CLONE_THREAD in clone_flags
    /// makes the child a thread of the parent's process, else a process.
    TaskNewtask = 34,
    /// `syscalls/sys_enter_munmap`: addr, len.
    SysMunmap = 35,
    /// `syscalls/sys_enter_madvise`: start, len_in, behavior.
    SysMadvise = 36,
    /// `syscalls/sys_enter_mremap`: addr, old_len, new_len, flags, new_addr.
    SysMremap = 37,
    /// `syscalls/sys_enter_mmap`: addr, len, prot, flags.
    SysMmap = 38,
    /// `syscalls/sys_exit_mmap`: ret (the mapping's address, or -errno).
    SysMmapExit = 39,
    /// `thp/set_migration_pmd`: addr, pmd (a PMD migration entry naming
    /// the THP's old PFN).
    SetMigrationPmd = 40,
    /// `thp/remove_migration_pmd`: addr, pmd (the new PMD, naming the new PFN).
    RemoveMigrationPmd = 41,
    /// `migrate/mm_migrate_pages_start`: mode, reason (a migrate_pages()
    /// call begins; `MigratePages` marks its end).
    MigratePagesStart = 42,
    /// `syscalls/sys_enter_process_madvise`: pidfd, behavior. Not
    /// filtered: the caller advises another process's memory.
    SysProcessMadvise = 43,
    /// `syscalls/sys_enter_brk`: brk (the program break asked for; 0
    /// asks for the current one).
    SysBrk = 44,
}

impl Hook {
    /// Every hook, in discriminant order.
    pub const ALL: [Hook; 45] = [
        Hook::PageFaultUser,
        Hook::KswapdWake,
        Hook::KswapdSleep,
        Hook::DirectReclaimBegin,
        Hook::DirectReclaimEnd,
        Hook::MemcgReclaimBegin,
        Hook::MemcgReclaimEnd,
        Hook::LruShrinkInactive,
        Hook::WriteFolio,
        Hook::ScanPmd,
        Hook::CollapseHugePage,
        Hook::CollapseIsolate,
        Hook::CollapseSwapin,
        Hook::ScanFile,
        Hook::CollapseFile,
        Hook::CompactionBegin,
        Hook::CompactionEnd,
        Hook::CompactionMigrate,
        Hook::MigratePages,
        Hook::SetMigrationPte,
        Hook::RemoveMigrationPte,
        Hook::KsmMergeOne,
        Hook::KsmMergeWithKsm,
        Hook::KsmRemove,
        Hook::OomVictim,
        Hook::ProcessFork,
        Hook::ProcessExec,
        Hook::ProcessExit,
        Hook::PageAlloc,
        Hook::PageFree,
        Hook::BalloonInflate,
        Hook::BalloonDeflate,
        Hook::SplitPmd,
        Hook::SplitFolio,
        Hook::TaskNewtask,
        Hook::SysMunmap,
        Hook::SysMadvise,
        Hook::SysMremap,
        Hook::SysMmap,
        Hook::SysMmapExit,
        Hook::SetMigrationPmd,
        Hook::RemoveMigrationPmd,
        Hook::MigratePagesStart,
        Hook::SysProcessMadvise,
        Hook::SysBrk,
    ];

    /// The hook with discriminant `value`, if there is one.
    pub fn from_u16(value: u16) -> Option<Hook> {
        Self::ALL.get(usize::from(value)).copied()
    }
}

/// Number of slots in the per-hook maps; room for hooks added later.
pub const MAX_HOOKS: u32 = 64;

/// Where one hook's fields live in its tracepoint record (22 bytes).
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
    /// 1: the hook uses more than [`crate::event::NARROW_ARGS`] fields and
    /// writes a [`crate::event::WideEvent`]; 0: a [`crate::event::NarrowEvent`].
    pub wide: u8,
    /// 1: a narrow hook whose fields are 8-byte values at consecutive
    /// offsets from `offsets[0]`, fetched with one read instead of one per
    /// field (page faults: address, ip, error_code).
    pub contiguous: u8,
    pub _pad: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: repr(C), Copy, no padding (asserted below).
    unsafe impl aya::Pod for super::HookConfig {}
    const _: () = assert!(core::mem::size_of::<super::HookConfig>() == 22);
}
