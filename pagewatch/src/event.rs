//! Decoding ring-buffer records into typed events.
//!
//! The eBPF side copies raw field values; the layout of each hook (sizes and
//! signedness, read from the kernel's format files at attach time) tells the
//! decoder how to widen them back.

use pagewatch_common::{
    event::{EventHeader, HEADER_SIZE, MAX_ARGS},
    hook::{Hook, MAX_HOOKS},
};

use crate::{
    hooks::{AttachedHook, FieldLayout},
    tracefs::EventFormat,
};

/// x86 page fault error code bits (arch/x86/include/asm/trap_pf.h).
pub mod fault_bits {
    /// The fault was a protection violation (the page was present).
    pub const PROTECTION: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access was an instruction fetch.
    pub const INSTRUCTION: u64 = 1 << 4;
}

/// One decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub cpu: u32,
    pub tgid: u32,
    pub tid: u32,
    pub kind: EventKind,
}

/// What happened, with the hook's own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    PageFault {
        address: u64,
        ip: u64,
        error_code: u64,
    },
    KswapdWake {
        nid: i64,
        order: i64,
    },
    KswapdSleep {
        nid: i64,
    },
    DirectReclaimBegin {
        order: i64,
        gfp_flags: u64,
    },
    DirectReclaimEnd {
        nr_reclaimed: u64,
    },
    MemcgReclaimBegin {
        order: i64,
        gfp_flags: u64,
    },
    MemcgReclaimEnd {
        nr_reclaimed: u64,
    },
    LruShrinkInactive {
        nid: i64,
        nr_scanned: u64,
        nr_reclaimed: u64,
        priority: i64,
    },
    WriteFolio {
        pfn: u64,
        reclaim_flags: i64,
    },
    /// A PMD range scanned for collapse (khugepaged or MADV_COLLAPSE);
    /// `status` is the kernel's `scan_result` code ([`Decoder::symbol`] names it).
    ScanPmd {
        mm: u64,
        pfn: u64,
        referenced: i64,
        none_or_zero: i64,
        status: i64,
        unmapped: i64,
    },
    /// An anonymous collapse attempt finished; status 1 is success.
    CollapseHugePage {
        mm: u64,
        isolated: i64,
        status: i64,
    },
    CollapseIsolate {
        pfn: u64,
        none_or_zero: i64,
        referenced: i64,
        status: i64,
    },
    CollapseSwapin {
        mm: u64,
        swapped_in: i64,
        referenced: i64,
        ret: i64,
    },
    ScanFile {
        mm: u64,
        pfn: u64,
        present: i64,
        swap: i64,
        result: i64,
    },
    CollapseFile {
        mm: u64,
        hpfn: u64,
        index: u64,
        addr: u64,
        nr: i64,
        result: i64,
    },
    CompactionBegin {
        zone_start: u64,
        migrate_pfn: u64,
        free_pfn: u64,
        zone_end: u64,
    },
    CompactionEnd {
        zone_start: u64,
        migrate_pfn: u64,
        free_pfn: u64,
        zone_end: u64,
        status: i64,
    },
    CompactionMigrate {
        nr_migrated: u64,
        nr_failed: u64,
    },
    /// One migrate_pages() call; `reason` is the kernel's `migrate_reason`.
    MigratePages {
        succeeded: u64,
        failed: u64,
        thp_succeeded: u64,
        thp_failed: u64,
        mode: u64,
        reason: i64,
    },
    /// A migrate_pages() call begins; `reason` as in `MigratePages`.
    MigratePagesStart {
        mode: u64,
        reason: i64,
    },
    /// A page (`pmd`: a PMD-mapped THP) at `addr` got a migration entry
    /// naming its old PFN.
    SetMigrationPte {
        addr: u64,
        order: i64,
        /// The PFN being migrated away from (0 if the entry names none).
        old_pfn: u64,
        pmd: bool,
    },
    /// The migration entry at `addr` was replaced by a mapping of the new page.
    RemoveMigrationPte {
        addr: u64,
        order: i64,
        /// The PFN migrated to (0 if the entry names none).
        new_pfn: u64,
        pmd: bool,
    },
    KsmMerge {
        pfn: u64,
        mm: u64,
        err: i64,
        /// Merged with an existing KSM page rather than a new pair.
        with_ksm_page: bool,
    },
    KsmRemove {
        pfn: u64,
    },
    /// OOM killer chose `pid`; rss fields are pages (0 before 6.2).
    OomVictim {
        pid: i64,
        anon_rss: u64,
        file_rss: u64,
        shmem_rss: u64,
    },
    /// `sched_process_fork`: fires for new threads as well as processes;
    /// `parent_pid` is the forking thread's id (see [`EventKind::TaskNew`]).
    ProcessFork {
        parent_pid: i64,
        child_pid: i64,
    },
    ProcessExec {
        pid: i64,
        old_pid: i64,
    },
    /// A thread exited; `group_dead` (6.10+, else 0) marks the last thread.
    ProcessExit {
        pid: i64,
        group_dead: u64,
        /// The task's comm, NUL-padded.
        comm: [u8; 16],
    },
    PageAlloc {
        pfn: u64,
        order: u64,
        gfp_flags: u64,
        migratetype: i64,
    },
    PageFree {
        pfn: u64,
        order: u64,
    },
    /// A page went into (`inflate`) or came out of a balloon.
    Balloon {
        pfn: u64,
        /// The `struct page *` the PFN was computed from.
        page: u64,
        inflate: bool,
    },
    /// A task was created by the event's thread (`task_newtask`): `pid` is
    /// the new task's id, a thread of the same process if `clone_flags`
    /// has CLONE_THREAD (see [`EventKind::is_new_thread`]), else a process.
    TaskNew {
        pid: i64,
        clone_flags: u64,
    },
    /// munmap(addr, len) by the process.
    Munmap {
        addr: u64,
        len: u64,
    },
    /// madvise(start, len, advice) by the process.
    Madvise {
        start: u64,
        len: u64,
        advice: u64,
    },
    /// process_madvise(pidfd, ..., advice) by this thread, on the memory
    /// of the process `pidfd` names.
    ProcessMadvise {
        pidfd: i64,
        advice: u64,
    },
    /// brk(brk) by the process: the program break it asks for.
    Brk {
        brk: u64,
    },
    /// mremap(addr, old_len, new_len, flags, new_addr) by the process.
    Mremap {
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
    },
    /// mmap(addr, len, prot, flags, ...) entered by thread `tid`.
    Mmap {
        addr: u64,
        len: u64,
        prot: u64,
        flags: u64,
    },
    /// mmap returned `ret` (an address, or -errno) to thread `tid`.
    MmapReturn {
        ret: i64,
    },
    /// A THP is being split (fentry): its PMD mapping (`pmd`, at `address`)
    /// or the folio itself; `pfn` names a page of it (0 if unknown).
    ThpSplit {
        pfn: u64,
        address: u64,
        pmd: bool,
    },
}

impl EventKind {
    /// `clone(2)`'s CLONE_THREAD flag.
    pub const CLONE_THREAD: u64 = 0x0001_0000;

    /// Whether this is a new thread of an existing process (not a process).
    pub fn is_new_thread(&self) -> bool {
        matches!(self, EventKind::TaskNew { clone_flags, .. } if clone_flags & Self::CLONE_THREAD != 0)
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than a header or than its own size field.
    #[error("record of {len} bytes is truncated")]
    Truncated { len: usize },
    /// The header names a hook this pagewatch does not know (newer program).
    #[error("record from unknown hook {0}")]
    UnknownHook(u16),
    /// The record's hook was never attached, so its layout is unknown.
    #[error("record from hook {0:?}, which is not attached")]
    NotAttached(Hook),
}

/// Decodes records using the layouts of the attached hooks.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    layouts: Vec<Option<FieldLayout>>,
    formats: Vec<Option<EventFormat>>,
}

impl Decoder {
    /// A decoder for the hooks in `attached`.
    pub fn new(attached: &[AttachedHook]) -> Self {
        let slots = MAX_HOOKS as usize;
        let mut layouts = vec![None; slots];
        let mut formats = vec![None; slots];
        for a in attached {
            layouts[a.hook as usize] = Some(a.layout);
            formats[a.hook as usize] = Some(a.format.clone());
        }
        Self { layouts, formats }
    }

    /// The running kernel's name for code `value` of `field` of `hook`
    /// (e.g. khugepaged's `status` 5 is `exceed_none_pte` on 6.18).
    pub fn symbol(&self, hook: Hook, field: &str, value: i64) -> Option<&str> {
        self.formats[hook as usize].as_ref()?.symbol(field, value)
    }

    /// Whether the running kernel's format of `hook` has `field` (false
    /// when the hook is not attached).
    pub fn has_field(&self, hook: Hook, field: &str) -> bool {
        self.formats[hook as usize]
            .as_ref()
            .is_some_and(|f| f.field(field).is_some())
    }

    /// Whether `hook` is attached.
    pub fn attached(&self, hook: Hook) -> bool {
        self.layouts[hook as usize].is_some()
    }

    /// Decodes one ring-buffer record (narrow or wide, by its header's size).
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        let truncated = DecodeError::Truncated { len: bytes.len() };
        if bytes.len() < HEADER_SIZE {
            return Err(truncated);
        }
        // SAFETY: EventHeader is Pod and the slice holds at least its size;
        // read_unaligned copes with any alignment.
        let header: EventHeader = unsafe { bytes.as_ptr().cast::<EventHeader>().read_unaligned() };
        let EventHeader {
            hook,
            size,
            cpu,
            ts_ns,
            tgid,
            tid,
        } = header;
        let size = usize::from(size);
        if size > bytes.len() || size < HEADER_SIZE {
            return Err(truncated);
        }
        let mut raw = [0u64; MAX_ARGS];
        for (slot, chunk) in raw.iter_mut().zip(bytes[HEADER_SIZE..size].chunks_exact(8)) {
            *slot = u64::from_ne_bytes(chunk.try_into().expect("8-byte chunk"));
        }
        let hook = Hook::from_u16(hook).ok_or(DecodeError::UnknownHook(hook))?;
        let layout = self.layouts[hook as usize].ok_or(DecodeError::NotAttached(hook))?;
        let a = widen(&raw, &layout);
        let s = |i: usize| a[i] as i64;
        let kind = match hook {
            Hook::PageFaultUser => EventKind::PageFault {
                address: a[0],
                ip: a[1],
                error_code: a[2],
            },
            Hook::KswapdWake => EventKind::KswapdWake {
                nid: s(0),
                order: s(1),
            },
            Hook::KswapdSleep => EventKind::KswapdSleep { nid: s(0) },
            Hook::DirectReclaimBegin => EventKind::DirectReclaimBegin {
                order: s(0),
                gfp_flags: a[1],
            },
            Hook::DirectReclaimEnd => EventKind::DirectReclaimEnd { nr_reclaimed: a[0] },
            Hook::MemcgReclaimBegin => EventKind::MemcgReclaimBegin {
                order: s(0),
                gfp_flags: a[1],
            },
            Hook::MemcgReclaimEnd => EventKind::MemcgReclaimEnd { nr_reclaimed: a[0] },
            Hook::LruShrinkInactive => EventKind::LruShrinkInactive {
                nid: s(0),
                nr_scanned: a[1],
                nr_reclaimed: a[2],
                priority: s(3),
            },
            Hook::WriteFolio => EventKind::WriteFolio {
                pfn: a[0],
                reclaim_flags: s(1),
            },
            Hook::ScanPmd => EventKind::ScanPmd {
                mm: a[0],
                pfn: a[1],
                referenced: s(2),
                none_or_zero: s(3),
                status: s(4),
                unmapped: s(5),
            },
            Hook::CollapseHugePage => EventKind::CollapseHugePage {
                mm: a[0],
                isolated: s(1),
                status: s(2),
            },
            Hook::CollapseIsolate => EventKind::CollapseIsolate {
                pfn: a[0],
                none_or_zero: s(1),
                referenced: s(2),
                status: s(3),
            },
            Hook::CollapseSwapin => EventKind::CollapseSwapin {
                mm: a[0],
                swapped_in: s(1),
                referenced: s(2),
                ret: s(3),
            },
            Hook::ScanFile => EventKind::ScanFile {
                mm: a[0],
                pfn: a[1],
                present: s(2),
                swap: s(3),
                result: s(4),
            },
            Hook::CollapseFile => EventKind::CollapseFile {
                mm: a[0],
                hpfn: a[1],
                index: a[2],
                addr: a[3],
                nr: s(4),
                result: s(5),
            },
            Hook::CompactionBegin => EventKind::CompactionBegin {
                zone_start: a[0],
                migrate_pfn: a[1],
                free_pfn: a[2],
                zone_end: a[3],
            },
            Hook::CompactionEnd => EventKind::CompactionEnd {
                zone_start: a[0],
                migrate_pfn: a[1],
                free_pfn: a[2],
                zone_end: a[3],
                status: s(4),
            },
            Hook::CompactionMigrate => EventKind::CompactionMigrate {
                nr_migrated: a[0],
                nr_failed: a[1],
            },
            Hook::MigratePages => EventKind::MigratePages {
                succeeded: a[0],
                failed: a[1],
                thp_succeeded: a[2],
                thp_failed: a[3],
                mode: a[4],
                reason: s(5),
            },
            Hook::SetMigrationPte => EventKind::SetMigrationPte {
                addr: a[0],
                order: s(2),
                old_pfn: x86_64::migration_entry_pfn(a[1]),
                pmd: false,
            },
            Hook::RemoveMigrationPte => EventKind::RemoveMigrationPte {
                addr: a[0],
                order: s(2),
                new_pfn: x86_64::pte_pfn(a[1]),
                pmd: false,
            },
            Hook::SetMigrationPmd => EventKind::SetMigrationPte {
                addr: a[0],
                order: 9,
                old_pfn: x86_64::migration_entry_pfn(a[1]),
                pmd: true,
            },
            Hook::RemoveMigrationPmd => EventKind::RemoveMigrationPte {
                addr: a[0],
                order: 9,
                new_pfn: x86_64::pmd_pfn(a[1]),
                pmd: true,
            },
            Hook::SysMunmap => EventKind::Munmap {
                addr: a[0],
                len: a[1],
            },
            Hook::SysMadvise => EventKind::Madvise {
                start: a[0],
                len: a[1],
                advice: a[2],
            },
            Hook::SysProcessMadvise => EventKind::ProcessMadvise {
                pidfd: s(0),
                advice: a[1],
            },
            Hook::SysBrk => EventKind::Brk { brk: a[0] },
            Hook::SysMremap => EventKind::Mremap {
                addr: a[0],
                old_len: a[1],
                new_len: a[2],
                flags: a[3],
                new_addr: a[4],
            },
            Hook::SysMmap => EventKind::Mmap {
                addr: a[0],
                len: a[1],
                prot: a[2],
                flags: a[3],
            },
            Hook::SysMmapExit => EventKind::MmapReturn { ret: s(0) },
            Hook::MigratePagesStart => EventKind::MigratePagesStart {
                mode: a[0],
                reason: s(1),
            },
            Hook::KsmMergeOne | Hook::KsmMergeWithKsm => EventKind::KsmMerge {
                pfn: a[0],
                mm: a[1],
                err: s(2),
                with_ksm_page: hook == Hook::KsmMergeWithKsm,
            },
            Hook::KsmRemove => EventKind::KsmRemove { pfn: a[0] },
            Hook::OomVictim => EventKind::OomVictim {
                pid: s(0),
                anon_rss: a[1],
                file_rss: a[2],
                shmem_rss: a[3],
            },
            Hook::ProcessFork => EventKind::ProcessFork {
                parent_pid: s(0),
                child_pid: s(1),
            },
            Hook::ProcessExec => EventKind::ProcessExec {
                pid: s(0),
                old_pid: s(1),
            },
            Hook::ProcessExit => {
                let mut comm = [0u8; 16];
                comm[..8].copy_from_slice(&a[2].to_ne_bytes());
                comm[8..].copy_from_slice(&a[3].to_ne_bytes());
                EventKind::ProcessExit {
                    pid: s(0),
                    group_dead: a[1],
                    comm,
                }
            }
            Hook::PageAlloc => EventKind::PageAlloc {
                pfn: a[0],
                order: a[1],
                gfp_flags: a[2],
                migratetype: s(3),
            },
            Hook::PageFree => EventKind::PageFree {
                pfn: a[0],
                order: a[1],
            },
            Hook::BalloonInflate | Hook::BalloonDeflate => EventKind::Balloon {
                pfn: a[0],
                page: a[1],
                inflate: hook == Hook::BalloonInflate,
            },
            Hook::SplitPmd => EventKind::ThpSplit {
                pfn: a[0],
                address: a[1],
                pmd: true,
            },
            Hook::SplitFolio => EventKind::ThpSplit {
                pfn: a[0],
                address: 0,
                pmd: false,
            },
            Hook::TaskNewtask => EventKind::TaskNew {
                pid: s(0),
                clone_flags: a[1],
            },
        };
        Ok(Event {
            ts_ns,
            cpu,
            tgid,
            tid,
            kind,
        })
    }
}

/// x86-64 page table entries as the migration tracepoints record them
/// (arch/x86/include/asm/pgtable_64.h, pgtable-invert.h).
pub mod x86_64 {
    /// Physical address bits 12..51 of a PTE.
    const PTE_PFN_MASK: u64 = 0x000f_ffff_ffff_f000;
    /// Physical address bits 21..51 of a huge PMD (bit 12 is PAT there).
    const PMD_PFN_MASK: u64 = 0x000f_ffff_ffe0_0000;
    const PRESENT: u64 = 1;
    /// Swap entries: 5 type bits at the top, the offset inverted (L1TF)
    /// from bit 9 up.
    const SWP_TYPE_BITS: u32 = 5;
    const SWP_OFFSET_SHIFT: u32 = 9 + SWP_TYPE_BITS;
    /// A migration entry's offset is the PFN, with the young and dirty
    /// bits above MAX_PHYSMEM_BITS - PAGE_SHIFT (46 - 12; 52 - 12 with
    /// 5-level paging, where no PFN reaches bit 34 on machines this size).
    const SWP_PFN_BITS: u32 = 34;

    /// The PFN a migration entry (a non-present PTE or PMD) names, or 0.
    pub fn migration_entry_pfn(entry: u64) -> u64 {
        if entry & PRESENT != 0 || entry == 0 {
            return 0;
        }
        let offset = (!entry << SWP_TYPE_BITS) >> SWP_OFFSET_SHIFT;
        offset & ((1 << SWP_PFN_BITS) - 1)
    }

    /// The PFN a PTE maps, or 0.
    pub fn pte_pfn(pte: u64) -> u64 {
        mapped_pfn(pte, PTE_PFN_MASK)
    }

    /// The first PFN a huge PMD maps, or 0.
    pub fn pmd_pfn(pmd: u64) -> u64 {
        mapped_pfn(pmd, PMD_PFN_MASK)
    }

    /// The PFN bits `mask` of an entry; non-present entries other than 0
    /// (PROT_NONE) store them inverted.
    fn mapped_pfn(entry: u64, mask: u64) -> u64 {
        let inverted = entry != 0 && entry & PRESENT == 0;
        ((if inverted { !entry } else { entry }) & mask) >> 12
    }
}

/// Sign-extends the signed fields narrower than 64 bits.
fn widen(args: &[u64; MAX_ARGS], layout: &FieldLayout) -> [u64; MAX_ARGS] {
    let mut out = *args;
    for (i, v) in out.iter_mut().enumerate() {
        let bits = u32::from(layout.sizes[i]) * 8;
        if layout.signed[i] && (1..64).contains(&bits) {
            let shift = 64 - bits;
            *v = (((*v << shift) as i64) >> shift) as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use pagewatch_common::event::{NARROW_ARGS, RawEvent};

    fn record<const N: usize>(hook: Hook, args: [u64; N]) -> Vec<u8> {
        let size = std::mem::size_of::<RawEvent<N>>();
        let raw = RawEvent {
            header: EventHeader {
                hook: hook as u16,
                size: size as u16,
                cpu: 1,
                ts_ns: 42,
                tgid: 7,
                tid: 8,
            },
            args,
        };
        // SAFETY: RawEvent is Pod.
        unsafe { std::slice::from_raw_parts((&raw as *const RawEvent<N>).cast::<u8>(), size) }
            .to_vec()
    }

    fn attached(hook: Hook, sizes: [u8; MAX_ARGS], signed: [bool; MAX_ARGS]) -> AttachedHook {
        AttachedHook {
            hook,
            tracepoint: String::new(),
            layout: FieldLayout { sizes, signed },
            format: EventFormat::default(),
        }
    }

    #[test]
    fn signed_int_fields_are_sign_extended() {
        let d = Decoder::new(&[attached(
            Hook::LruShrinkInactive,
            [4, 8, 8, 4, 0, 0],
            [true, false, false, true, false, false],
        )]);
        let e = d
            .decode(&record::<NARROW_ARGS>(
                Hook::LruShrinkInactive,
                [0xffff_ffff, 32, 30, 12],
            ))
            .unwrap();
        assert_eq!(
            e.kind,
            EventKind::LruShrinkInactive {
                nid: -1,
                nr_scanned: 32,
                nr_reclaimed: 30,
                priority: 12
            }
        );
        assert_eq!((e.ts_ns, e.cpu, e.tgid, e.tid), (42, 1, 7, 8));
    }

    /// Entries built as the kernel builds them (`__swp_entry`, `pfn_pte`,
    /// `pfn_pmd` in arch/x86/include/asm/pgtable_64.h and pgtable.h).
    #[test]
    fn migration_entries_and_ptes_give_their_pfns() {
        let swp_entry = |typ: u64, offset: u64| (!offset << 14 >> 5) | (typ << 59);
        for pfn in [1, 0x12_3456, (1 << 34) - 1] {
            assert_eq!(x86_64::migration_entry_pfn(swp_entry(29, pfn)), pfn);
            // Soft-dirty and exclusive bits sit below the offset.
            assert_eq!(x86_64::migration_entry_pfn(swp_entry(30, pfn) | 0x8a), pfn);
        }
        // The young bit above the PFN bits is not part of the PFN.
        assert_eq!(
            x86_64::migration_entry_pfn(swp_entry(29, (1 << 34) | 77)),
            77
        );
        assert_eq!(x86_64::migration_entry_pfn(0x8000_0000_1234_5067), 0);
        assert_eq!(x86_64::pte_pfn(0x8000_0001_2345_6067), 0x12_3456);
        // PROT_NONE (NUMA hinting) entries store the PFN inverted.
        let protnone = !(0x12_3456u64 << 12) & 0x000f_ffff_ffff_f000 | 0x100;
        assert_eq!(x86_64::pte_pfn(protnone), 0x12_3456);
        assert_eq!(x86_64::pmd_pfn(0x8000_0001_2340_10e7), 0x12_3400);
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        let d = Decoder::new(&[]);
        assert_eq!(d.decode(&[0; 10]), Err(DecodeError::Truncated { len: 10 }));
        let mut r = record(Hook::PageFaultUser, [0u64; NARROW_ARGS]);
        assert_eq!(
            d.decode(&r),
            Err(DecodeError::NotAttached(Hook::PageFaultUser))
        );
        r[0] = 200;
        assert_eq!(d.decode(&r), Err(DecodeError::UnknownHook(200)));
        let mut short = record(Hook::PageFaultUser, [0u64; NARROW_ARGS]);
        short[2] = 255; // size field larger than the record
        assert!(matches!(
            d.decode(&short),
            Err(DecodeError::Truncated { .. })
        ));
    }
}

#[cfg(test)]
mod wide_tests {
    use super::*;
    use pagewatch_common::event::WideEvent;

    #[test]
    fn wide_records_carry_six_fields_and_kernel_status_names() {
        let raw = WideEvent {
            header: EventHeader {
                hook: Hook::ScanPmd as u16,
                size: std::mem::size_of::<WideEvent>() as u16,
                ..EventHeader::default()
            },
            args: [0xffff_8880_1234_0000, 0x1234, 3, 0x1ff, 5, 0],
        };
        // SAFETY: WideEvent is Pod.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const WideEvent).cast::<u8>(),
                std::mem::size_of::<WideEvent>(),
            )
        };
        let format = EventFormat::parse(
            "field:int status;\toffset:32;\tsize:4;\tsigned:1;\n\
             print fmt: \"status=%s\", __print_symbolic(REC->status, {1, \"succeeded\"}, {5, \"exceed_none_pte\"})",
        )
        .unwrap();
        let d = Decoder::new(&[AttachedHook {
            hook: Hook::ScanPmd,
            tracepoint: String::new(),
            layout: FieldLayout {
                sizes: [8, 8, 4, 4, 4, 4],
                signed: [false, false, true, true, true, true],
            },
            format,
        }]);
        let EventKind::ScanPmd {
            pfn,
            none_or_zero,
            status,
            ..
        } = d.decode(bytes).unwrap().kind
        else {
            panic!("not a ScanPmd");
        };
        assert_eq!((pfn, none_or_zero), (0x1234, 511));
        assert_eq!(
            d.symbol(Hook::ScanPmd, "status", status),
            Some("exceed_none_pte")
        );
        assert_eq!(d.symbol(Hook::ScanPmd, "status", 99), None);
        assert_eq!(d.symbol(Hook::PageFaultUser, "status", 1), None);
    }
}
