//! pagewatch's eBPF programs: one classic tracepoint program per tracepoint
//! hook, all sharing [`emit`], which applies the tgid filter and copies the
//! fields that userspace configured for the hook into a narrow or wide
//! [`RawEvent`]; and fentry/fexit programs (they need kernel BTF) for what no
//! tracepoint covers, the balloon core and the THP split functions, which
//! read their arguments themselves. Every program hands its record to
//! [`submit`], which writes it to the `EVENTS` ring buffer, counting a
//! per-CPU drop when it is full. Wakeups are batched (see `WAKEUP_BYTES`).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{fentry, fexit, map, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{FEntryContext, FExitContext, TracePointContext},
};
use pagewatch_common::{
    event::{EventHeader, MAX_ARGS, NARROW_ARGS, RawEvent},
    hook::{Hook, HookConfig, MAX_HOOKS},
};

/// The event stream. Its size is set by userspace at load time.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Field offsets per hook, written by userspace from tracefs `format` files.
#[map]
static HOOKS: Array<HookConfig> = Array::with_max_entries(MAX_HOOKS, 0);

/// Tgids to record when filtering is on (value unused).
#[map]
static TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Records that could not be reserved, per hook, per CPU.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_HOOKS, 0);

/// Set to 1 by userspace (at load time) when `TGIDS` filters per-process hooks.
#[unsafe(no_mangle)]
static FILTER_TGIDS: u8 = 0;

/// Wake the collector only once this many bytes wait in `EVENTS` (set at
/// load time). A wakeup per record costs more than the record itself under
/// a fault storm; below the threshold the collector drains on its own timer.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

#[inline(always)]
fn read_field(ctx: &TracePointContext, offset: u16, size: u8) -> u64 {
    let off = offset as usize;
    // SAFETY: bpf_probe_read_kernel on the tracepoint record; a bad offset
    // yields an error (mapped to 0), never a fault.
    unsafe {
        match size {
            1 => ctx.read_at::<u8>(off).map(u64::from),
            2 => ctx.read_at::<u16>(off).map(u64::from),
            4 => ctx.read_at::<u32>(off).map(u64::from),
            8 => ctx.read_at::<u64>(off),
            _ => Ok(0),
        }
        .unwrap_or(0)
    }
}

#[inline(always)]
fn emit(ctx: &TracePointContext, hook: Hook) -> u32 {
    let index = hook as u32;
    let Some(cfg) = HOOKS.get(index) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // SAFETY: FILTER_TGIDS is a load-time constant; read_volatile keeps the
    // compiler from folding away the value userspace patches in.
    let filtering = unsafe { core::ptr::read_volatile(&FILTER_TGIDS) } != 0;
    // SAFETY: the value is only tested for presence, never held.
    if filtering && cfg.per_process != 0 && unsafe { TGIDS.get(&tgid) }.is_none() {
        return 0;
    }
    if cfg.wide != 0 {
        submit::<MAX_ARGS>(hook, tgid, tid, |i| {
            read_field(ctx, cfg.offsets[i], cfg.sizes[i])
        })
    } else if cfg.contiguous != 0 {
        // One read for all fields (the hot path: page faults). Slots past
        // the hook's fields may hold bytes beyond its record: zero them.
        // SAFETY: bpf_probe_read_kernel on the tracepoint record; failure
        // yields zeros.
        let all = unsafe { ctx.read_at::<[u64; NARROW_ARGS]>(cfg.offsets[0] as usize) }
            .unwrap_or([0; NARROW_ARGS]);
        submit::<NARROW_ARGS>(
            hook,
            tgid,
            tid,
            |i| if cfg.sizes[i] == 8 { all[i] } else { 0 },
        )
    } else {
        submit::<NARROW_ARGS>(hook, tgid, tid, |i| {
            read_field(ctx, cfg.offsets[i], cfg.sizes[i])
        })
    }
}

/// Reserves one `RawEvent<N>`, fills argument `i` with `arg(i)` and
/// submits it, or counts a drop.
#[inline(always)]
fn submit<const N: usize>(hook: Hook, tgid: u32, tid: u32, arg: impl Fn(usize) -> u64) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<RawEvent<N>>(0) else {
        if let Some(drops) = DROPS.get_ptr_mut(hook as u32) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *drops += 1 };
        }
        return 0;
    };
    let mut args = [0u64; N];
    for (i, slot) in args.iter_mut().enumerate() {
        *slot = arg(i);
    }
    entry.write(RawEvent {
        header: EventHeader {
            hook: hook as u16,
            size: core::mem::size_of::<RawEvent<N>>() as u16,
            // SAFETY: plain helper calls.
            cpu: unsafe { bpf_get_smp_processor_id() },
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
        },
        args,
    });
    // SAFETY: load-time constant, as FILTER_TGIDS.
    let threshold = unsafe { core::ptr::read_volatile(&WAKEUP_BYTES) };
    // SAFETY: load-time constant (see emit).
    let filtering = unsafe { core::ptr::read_volatile(&FILTER_TGIDS) } != 0;
    // A followed process's exec or new child wakes the collector at once:
    // its first snapshot is taken then, not at the next interval (rare
    // events, so the wakeup costs nothing measurable).
    let followed = filtering && matches!(hook, Hook::ProcessExec | Hook::TaskNewtask);
    let flags = if followed || EVENTS.query(BPF_RB_AVAIL_DATA.into()) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
    0
}

/// One `#[tracepoint]` program per hook, all calling [`emit`].
macro_rules! programs {
    ($($name:ident => $hook:ident),* $(,)?) => {$(
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            emit(&ctx, Hook::$hook)
        }
    )*};
}

/// `clone(2)`'s flag for a new thread of the caller's process.
const CLONE_THREAD: u64 = 0x0001_0000;

/// `task/task_newtask`: besides the event, a new *process* forked by a
/// filtered process joins the filter here, in the kernel, before it can
/// run, so `record -- CMD` follows the whole process tree without losing
/// the child's first faults. A new thread (CLONE_THREAD) does not: its
/// events carry its process's tgid, which is already in the filter.
/// (`sched_process_fork` fires for threads too and does not say which it
/// is; this tracepoint fires in copy_process, in the parent, with the
/// clone flags.)
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    // SAFETY: load-time constant (see emit).
    let filtering = unsafe { core::ptr::read_volatile(&FILTER_TGIDS) } != 0;
    if filtering
        // SAFETY: presence test only.
        && unsafe { TGIDS.get(&ctx.tgid()) }.is_some()
        && let Some(cfg) = HOOKS.get(Hook::TaskNewtask as u32)
        && read_field(&ctx, cfg.offsets[1], cfg.sizes[1]) & CLONE_THREAD == 0
    {
        let child = read_field(&ctx, cfg.offsets[0], cfg.sizes[0]) as u32;
        let _ = TGIDS.insert(&child, &1, 0);
    }
    emit(&ctx, Hook::TaskNewtask)
}

programs! {
    page_fault_user => PageFaultUser,
    kswapd_wake => KswapdWake,
    kswapd_sleep => KswapdSleep,
    direct_reclaim_begin => DirectReclaimBegin,
    direct_reclaim_end => DirectReclaimEnd,
    memcg_reclaim_begin => MemcgReclaimBegin,
    memcg_reclaim_end => MemcgReclaimEnd,
    lru_shrink_inactive => LruShrinkInactive,
    write_folio => WriteFolio,
    scan_pmd => ScanPmd,
    collapse_huge_page => CollapseHugePage,
    collapse_isolate => CollapseIsolate,
    collapse_swapin => CollapseSwapin,
    scan_file => ScanFile,
    collapse_file => CollapseFile,
    compaction_begin => CompactionBegin,
    compaction_end => CompactionEnd,
    compaction_migrate => CompactionMigrate,
    migrate_pages => MigratePages,
    set_migration_pte => SetMigrationPte,
    remove_migration_pte => RemoveMigrationPte,
    ksm_merge_one => KsmMergeOne,
    ksm_merge_with_ksm => KsmMergeWithKsm,
    ksm_remove => KsmRemove,
    oom_victim => OomVictim,
    process_fork => ProcessFork,
    process_exec => ProcessExec,
    process_exit => ProcessExit,
    page_alloc => PageAlloc,
    page_free => PageFree,
    sys_munmap => SysMunmap,
    sys_madvise => SysMadvise,
    sys_mremap => SysMremap,
    sys_mmap => SysMmap,
    sys_mmap_exit => SysMmapExit,
    set_migration_pmd => SetMigrationPmd,
    remove_migration_pmd => RemoveMigrationPmd,
    migrate_pages_start => MigratePagesStart,
    sys_process_madvise => SysProcessMadvise,
    sys_brk => SysBrk,
}

/// Address of the kernel's `vmemmap_base` variable (from /proc/kallsyms,
/// CONFIG_RANDOMIZE_MEMORY kernels), or 0 to use [`VMEMMAP_START`].
#[unsafe(no_mangle)]
static VMEMMAP_BASE_SYM: u64 = 0;

/// The fixed start of the struct page array when memory is not randomised.
#[unsafe(no_mangle)]
static VMEMMAP_START: u64 = 0;

/// sizeof(struct page) on this kernel.
#[unsafe(no_mangle)]
static PAGE_STRUCT_SIZE: u64 = 64;

/// PFN of a `struct page *`: its index in the vmemmap array.
#[inline(always)]
fn page_to_pfn(page: u64) -> u64 {
    // SAFETY: load-time constants; the kernel variable is read with
    // bpf_probe_read_kernel, which fails cleanly.
    let (sym, start, size) = unsafe {
        (
            core::ptr::read_volatile(&VMEMMAP_BASE_SYM),
            core::ptr::read_volatile(&VMEMMAP_START),
            core::ptr::read_volatile(&PAGE_STRUCT_SIZE),
        )
    };
    let base = if sym != 0 {
        unsafe { bpf_probe_read_kernel(sym as *const u64) }.unwrap_or(start)
    } else {
        start
    };
    if size == 0 || page < base {
        return 0;
    }
    (page - base) / size
}

/// Argument `n` of a BTF program as a plain number. Read through the
/// context, the verifier types it as a `struct page *` and refuses the
/// arithmetic that turns it into a PFN; copied out with
/// bpf_probe_read_kernel it is a scalar.
#[inline(always)]
fn raw_arg(ctx: *mut core::ffi::c_void, n: usize) -> u64 {
    // SAFETY: fentry/fexit contexts are arrays of u64 arguments (and the
    // return value); a failed read yields 0, which callers skip.
    unsafe { bpf_probe_read_kernel(ctx.cast::<u64>().add(n)) }.unwrap_or(0)
}

/// A page entering or leaving a balloon, or a folio being split, always
/// recorded (not filtered): pfn, struct page *.
#[inline(always)]
fn emit_page(hook: Hook, page: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pfn = page_to_pfn(page);
    submit::<NARROW_ARGS>(
        hook,
        (pid_tgid >> 32) as u32,
        pid_tgid as u32,
        |i| match i {
            0 => pfn,
            1 => page,
            _ => 0,
        },
    )
}

/// `balloon_page_enqueue(struct balloon_dev_info *, struct page *)`.
#[fentry(function = "balloon_page_enqueue")]
pub fn balloon_inflate(ctx: FEntryContext) -> u32 {
    emit_page(Hook::BalloonInflate, raw_arg(ctx.as_ptr(), 1))
}

/// `struct page *balloon_page_dequeue(struct balloon_dev_info *)`: the
/// return value follows the one argument.
#[fexit(function = "balloon_page_dequeue")]
pub fn balloon_deflate(ctx: FExitContext) -> u32 {
    let page = raw_arg(ctx.as_ptr(), 1);
    if page == 0 {
        return 0;
    }
    emit_page(Hook::BalloonDeflate, page)
}

/// x86-64 PMD entry bits: present, PROT_NONE (NUMA hinting keeps such a
/// PMD mapped), huge (PSE), and the PFN of a 2 MiB mapping (bits 21-51).
const PMD_PRESENT: u64 = 1;
const PMD_PROTNONE: u64 = 1 << 8;
const PMD_HUGE: u64 = 1 << 7;
const PMD_PFN_MASK: u64 = 0x000f_ffff_ffe0_0000;

/// `__split_huge_pmd(struct vm_area_struct *, pmd_t *, unsigned long
/// address, ...)`: the PMD still maps the THP when the function starts.
#[fentry(function = "__split_huge_pmd")]
pub fn thp_split_pmd(ctx: FEntryContext) -> u32 {
    let pmd_ptr = raw_arg(ctx.as_ptr(), 1);
    let address = raw_arg(ctx.as_ptr(), 2);
    // SAFETY: a kernel pointer read with bpf_probe_read_kernel, which
    // fails cleanly.
    let pmd = unsafe { bpf_probe_read_kernel(pmd_ptr as *const u64) }.unwrap_or(0);
    let mapped = pmd & (PMD_PRESENT | PMD_PROTNONE) != 0 && pmd & PMD_HUGE != 0;
    let pfn = if mapped {
        (pmd & PMD_PFN_MASK) >> 12
    } else {
        0
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    submit::<NARROW_ARGS>(
        Hook::SplitPmd,
        (pid_tgid >> 32) as u32,
        pid_tgid as u32,
        |i| match i {
            0 => pfn,
            1 => address,
            _ => 0,
        },
    )
}

/// The folio split function: its first argument is the folio (its head
/// page) or, before 6.15, a page of it.
#[fentry(function = "__folio_split")]
pub fn thp_split_folio(ctx: FEntryContext) -> u32 {
    emit_page(Hook::SplitFolio, raw_arg(ctx.as_ptr(), 0))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
