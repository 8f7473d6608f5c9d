//! Loading pagewatch's eBPF object, configuring each hook from the running
//! kernel's tracepoint formats, and attaching what this kernel has.
//!
//! A hook whose tracepoint is missing, whose format lacks a field, or whose
//! attach fails is skipped with a one-line reason; the rest keep working.

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, ProgramError, TracePoint},
};
use pagewatch_common::{
    event::{MAX_ARGS, NARROW_ARGS},
    hook::{Hook, HookConfig},
};

use crate::{
    error::{Error, Result},
    hooks::{Attach, AttachedHook, Family, FieldLayout, HOOKS, HookSpec, SkipReason, SkippedHook},
    proc::ProcRoot,
    tracefs::{EventFormat, Tracefs},
};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pagewatch"));

/// x86-64's struct page array when memory layout randomisation is off
/// (4-level paging); kernels with CONFIG_RANDOMIZE_MEMORY export
/// `vmemmap_base` instead, which is preferred.
const X86_64_VMEMMAP_START: u64 = 0xffff_ea00_0000_0000;

/// sizeof(struct page) on x86-64 in every distribution configuration
/// (the kernel asserts it for the common layouts); debug builds with
/// larger struct pages would mis-number balloon PFNs.
const STRUCT_PAGE_SIZE: u64 = 64;

/// The eBPF side wakes the collector only once 1/WAKEUP_FRACTION of the
/// ring buffer is filled; below that the collector drains it when it
/// reports (each interval and at exit).
const WAKEUP_FRACTION: u32 = 8;

/// What the caller wants loaded.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes: a power of two, a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Record per-process hooks only for tgids in the filter map.
    pub filter_tgids: bool,
    /// Which hook families to attach.
    pub families: Vec<Family>,
}

/// The loaded object with its control maps. The event ring buffer is handed
/// out separately by [`Probe::load`], so the collector can own it.
pub struct Probe {
    /// Keeps the programs and their links alive.
    _ebpf: Ebpf,
    drops: PerCpuArray<MapData, u64>,
    tgids: HashMap<MapData, u32, u8>,
    pub attached: Vec<AttachedHook>,
    pub skipped: Vec<SkippedHook>,
    /// Set when pagewatch had to mount tracefs itself.
    pub mounted_tracefs: bool,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

fn missing_map(name: &'static str) -> Error {
    Error::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    }
}

impl Probe {
    /// Loads the object and attaches every hook of `opts.families` this
    /// kernel has; returns the probe and the ring buffer of events.
    pub fn load(opts: &ProbeOptions) -> Result<(Self, RingBuf<MapData>)> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::NotRoot);
        }
        // Root without some capabilities (a container, setpriv, capsh):
        // name them rather than fail on an EPERM later.
        if let Some(missing) = crate::privileges::CapSets::current()
            .ok()
            .as_ref()
            .and_then(crate::privileges::missing_for_tracing)
        {
            return Err(Error::MissingCapabilities(missing));
        }
        let (tracefs, mounted_tracefs) = Tracefs::find_or_mount()?;
        let filter = u8::from(opts.filter_tgids);
        let wakeup = u64::from(opts.ring_buffer_bytes / WAKEUP_FRACTION);
        let proc = ProcRoot::default();
        let btf_hooks: Vec<&HookSpec> = HOOKS
            .iter()
            .filter(|s| s.attach != Attach::Tracepoint && opts.families.contains(&s.family))
            .collect();
        // One read of /proc/kallsyms (the whole symbol table, which the
        // kernel formats line by line) for every function the fentry/fexit
        // hooks may use, not one per hook, and for where struct
        // pages live, to turn a `struct page *` into a PFN: the randomised
        // base's variable when the kernel has one.
        let symbols: Vec<&str> = btf_hooks
            .iter()
            .flat_map(|s| s.names.iter().copied())
            .chain(["vmemmap_base"])
            .collect();
        let kallsyms: std::collections::HashMap<&str, u64> = if btf_hooks.is_empty() {
            Default::default()
        } else {
            symbols
                .iter()
                .zip(proc.kallsyms(&symbols))
                .filter_map(|(name, addr)| Some((*name, addr?)))
                .collect()
        };
        let vmemmap_base_sym = kallsyms.get("vmemmap_base").copied().unwrap_or(0);
        let mut ebpf =
            EbpfLoader::new()
                .map_max_entries("EVENTS", opts.ring_buffer_bytes)
                .override_global("FILTER_TGIDS", &filter, true)
                .override_global("WAKEUP_BYTES", &wakeup, true)
                .override_global("VMEMMAP_BASE_SYM", &vmemmap_base_sym, true)
                .override_global("VMEMMAP_START", &X86_64_VMEMMAP_START, true)
                .override_global("PAGE_STRUCT_SIZE", &STRUCT_PAGE_SIZE, true)
                .load(EBPF_OBJECT)
                .map_err(|e| match e {
                    aya::EbpfError::MapError(aya::maps::MapError::CreateError {
                        io_error, ..
                    }) if io_error.raw_os_error() == Some(libc::EPERM) => Error::NotRoot,
                    e => Error::Load(e),
                })?;

        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        let mut btf = None;
        for spec in HOOKS.iter().filter(|s| opts.families.contains(&s.family)) {
            let result = match spec.attach {
                Attach::Tracepoint => attach(&mut ebpf, &tracefs, spec),
                Attach::FEntry | Attach::FExit => attach_btf(&mut ebpf, &mut btf, &kallsyms, spec),
            };
            match result {
                Ok(hook) => attached.push(hook),
                Err(reason) => skipped.push(SkippedHook {
                    program: spec.program,
                    reason,
                }),
            }
        }
        if attached.is_empty() {
            // Kernels carrying Debian's perf_event_paranoid=3 patch refuse
            // every tracepoint perf event to a process without
            // CAP_SYS_ADMIN, whatever CAP_PERFMON says: name that, not 30
            // identical attach failures.
            if skipped
                .iter()
                .all(|s| matches!(s.reason, SkipReason::PerfRefused { .. }))
            {
                let paranoid =
                    std::fs::read_to_string(proc.proc_file("sys/kernel/perf_event_paranoid"));
                return Err(Error::TracepointsNeedSysAdmin(paranoid.map_or_else(
                    |e| format!("unreadable: {e}"),
                    |p| p.trim().to_owned(),
                )));
            }
            return Err(Error::NoHooks(
                skipped
                    .iter()
                    .map(|s| format!("{}: {}", s.program, s.reason))
                    .collect(),
            ));
        }

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or_else(|| missing_map(name))
        };
        let events = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(map_err("EVENTS"))?;
        let drops = PerCpuArray::try_from(take(&mut ebpf, "DROPS")?).map_err(map_err("DROPS"))?;
        let tgids = HashMap::try_from(take(&mut ebpf, "TGIDS")?).map_err(map_err("TGIDS"))?;
        let probe = Self {
            _ebpf: ebpf,
            drops,
            tgids,
            attached,
            skipped,
            mounted_tracefs,
        };
        Ok((probe, events))
    }

    /// Adds `tgid` to the in-kernel filter.
    pub fn track_tgid(&mut self, tgid: u32) -> Result<()> {
        self.tgids.insert(tgid, 1, 0).map_err(map_err("TGIDS"))
    }

    /// Removes `tgid` from the in-kernel filter (it exited; its pid may be
    /// reused by an unrelated process).
    pub fn untrack_tgid(&mut self, tgid: u32) -> Result<()> {
        match self.tgids.remove(&tgid) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(Error::Map {
                name: "TGIDS",
                source,
            }),
        }
    }

    /// Records dropped so far for `hook`, one entry per possible CPU.
    pub fn drops(&self, hook: Hook) -> Result<Vec<u64>> {
        let values = self
            .drops
            .get(&(hook as u32), 0)
            .map_err(map_err("DROPS"))?;
        Ok(values.iter().copied().collect())
    }
}

/// Where a hook will sit on this kernel and how its fields are laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The tracepoint name chosen among [`HookSpec::names`].
    pub name: &'static str,
    pub config: HookConfig,
    pub layout: FieldLayout,
    pub format: EventFormat,
}

/// Matches `spec` against the kernel's tracepoints and their formats, or
/// says in one line why this kernel cannot have it.
pub fn resolve(tracefs: &Tracefs, spec: &HookSpec) -> std::result::Result<Resolved, SkipReason> {
    let Some(&name) = spec
        .names
        .iter()
        .find(|n| tracefs.has_event(spec.category, n))
    else {
        let wanted = format!("{}/{}", spec.category, spec.names.join(" or "));
        return Err(
            if spec.category == "syscalls" && !tracefs.has_category(spec.category) {
                SkipReason::SyscallTracepointsAbsent(wanted)
            } else {
                SkipReason::TracepointMissing(wanted)
            },
        );
    };
    let format = tracefs
        .format(spec.category, name)
        .map_err(|e| SkipReason::FormatUnreadable(e.to_string()))?;
    let tracepoint = || format!("{}/{name}", spec.category);
    let mut config = HookConfig {
        per_process: u8::from(spec.per_process),
        wide: u8::from(spec.fields.len() > NARROW_ARGS),
        ..HookConfig::default()
    };
    let mut layout = FieldLayout::default();
    for (i, wanted) in spec.fields.iter().enumerate() {
        let (wanted, optional) = match wanted.strip_suffix('?') {
            Some(name) => (name, true),
            None => (*wanted, false),
        };
        // `name+K` takes 8 bytes at byte K of an array field (e.g. comm).
        let (field_name, slice) = match wanted.split_once('+') {
            Some((name, k)) => (name, k.parse::<u16>().ok()),
            None => (wanted, None),
        };
        let Some(field) = format.field(field_name) else {
            if optional {
                continue;
            }
            return Err(SkipReason::FieldMissing {
                tracepoint: tracepoint(),
                field: field_name.to_owned(),
            });
        };
        let (offset, size) = match slice {
            Some(k) if u16::from(field.size) >= k + 8 => (field.offset + k, 8),
            Some(_) => {
                return Err(SkipReason::FieldUnusable {
                    tracepoint: tracepoint(),
                    field: field_name.to_owned(),
                    why: format!("is too short for {wanted}"),
                });
            }
            None if matches!(field.size, 1 | 2 | 4 | 8) => (field.offset, field.size),
            None => {
                return Err(SkipReason::FieldUnusable {
                    tracepoint: tracepoint(),
                    field: field_name.to_owned(),
                    why: format!("has size {}, not a scalar", field.size),
                });
            }
        };
        config.offsets[i] = offset;
        config.sizes[i] = size;
        layout.sizes[i] = size;
        layout.signed[i] = field.signed && slice.is_none();
    }
    let n = spec.fields.len();
    config.contiguous = u8::from(
        n <= NARROW_ARGS
            && (0..n).all(|i| {
                config.sizes[i] == 8 && config.offsets[i] == config.offsets[0] + 8 * i as u16
            }),
    );
    Ok(Resolved {
        name,
        config,
        layout,
        format,
    })
}

/// Loads and attaches one fentry/fexit hook, or says why it cannot be:
/// no BTF, the function is not in this kernel (absent or inlined), or the
/// kernel refuses fentry (lockdown, as on this project's hosts).
fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &mut Option<std::result::Result<aya::Btf, SkipReason>>,
    kallsyms: &std::collections::HashMap<&str, u64>,
    spec: &HookSpec,
) -> std::result::Result<AttachedHook, SkipReason> {
    let btf = btf
        .get_or_insert_with(|| {
            aya::Btf::from_sys_fs().map_err(|e| SkipReason::BtfMissing(e.to_string()))
        })
        .as_ref()
        .map_err(Clone::clone)?;
    let Some(function) = spec
        .names
        .iter()
        .copied()
        .find(|n| kallsyms.contains_key(n))
    else {
        return Err(SkipReason::FunctionMissing(spec.names.join(" or ")));
    };
    let explain = |e: aya::programs::ProgramError| {
        if permission_denied(&e) {
            let fallback = if spec.family == Family::Balloon {
                "balloon pages are still counted by the OFFLINE census and /proc/vmstat \
                 balloon_inflate/balloon_deflate"
            } else {
                "THP splits are still seen in the snapshots, their cause labelled from \
                 /proc/vmstat thp_split_pmd/thp_split_page"
            };
            SkipReason::FentryRefused {
                function: function.to_owned(),
                fallback,
            }
        } else {
            SkipReason::Failed(format!("{function}: {e}"))
        }
    };
    let program = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| no_program(spec))?;
    match spec.attach {
        Attach::FEntry => {
            let p: &mut FEntry = program.try_into().map_err(failed)?;
            p.load(function, btf).map_err(explain)?;
            p.attach().map_err(explain)?;
        }
        _ => {
            let p: &mut FExit = program.try_into().map_err(failed)?;
            p.load(function, btf).map_err(explain)?;
            p.attach().map_err(explain)?;
        }
    }
    Ok(AttachedHook {
        hook: spec.hook,
        tracepoint: format!(
            "{}:{function}",
            if spec.attach == Attach::FEntry {
                "fentry"
            } else {
                "fexit"
            }
        ),
        layout: FieldLayout {
            sizes: [8, 8, 0, 0, 0, 0],
            signed: [false; MAX_ARGS],
        },
        format: EventFormat::default(),
    })
}

/// Whether the kernel said EPERM/EACCES to loading or attaching.
fn permission_denied(e: &ProgramError) -> bool {
    let io = match e {
        ProgramError::LoadError { io_error, .. }
        | ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. }) => Some(io_error),
        _ => None,
    };
    io.is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
}

/// A failure in the kernel's (or aya's) own words.
fn failed(e: impl std::fmt::Display) -> SkipReason {
    SkipReason::Failed(e.to_string())
}

fn no_program(spec: &HookSpec) -> SkipReason {
    SkipReason::Failed(format!("eBPF object has no program {}", spec.program))
}

/// Configures and attaches one hook, or says why it cannot be.
fn attach(
    ebpf: &mut Ebpf,
    tracefs: &Tracefs,
    spec: &HookSpec,
) -> std::result::Result<AttachedHook, SkipReason> {
    let Resolved {
        name,
        config,
        layout,
        format,
    } = resolve(tracefs, spec)?;
    let mut hooks: Array<_, HookConfig> = ebpf
        .map_mut("HOOKS")
        .ok_or_else(|| failed("eBPF object has no HOOKS map"))?
        .try_into()
        .map_err(failed)?;
    hooks
        .set(spec.hook as u32, config, 0)
        .map_err(|e| failed(format!("writing the HOOKS map: {e}")))?;
    let program: &mut TracePoint = ebpf
        .program_mut(spec.program)
        .ok_or_else(|| no_program(spec))?
        .try_into()
        .map_err(failed)?;
    program
        .load()
        .map_err(|e| failed(format!("loading {}: {e}", spec.program)))?;
    program.attach(spec.category, name).map_err(|e| match &e {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "perf_event_open_trace_point",
            io_error,
        }) if matches!(io_error.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            SkipReason::PerfRefused {
                tracepoint: format!("{}/{name}", spec.category),
                error: io_error.to_string(),
            }
        }
        _ => failed(format!("attaching to {}/{name}: {e}", spec.category)),
    })?;
    Ok(AttachedHook {
        hook: spec.hook,
        tracepoint: format!("{}/{name}", spec.category),
        layout,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::spec;
    use std::path::Path;

    /// A tracefs tree with the formats of an older kernel: only
    /// mm_vmscan_writepage (before 5.19), and a kswapd_wake without `order`.
    /// One tree per test (`test`): tests run in parallel, and a tree being
    /// rewritten by one would be read half-copied by another.
    fn old_kernel(test: &str) -> Tracefs {
        let root = std::env::temp_dir().join(format!("pw-tracefs-{}-{test}", std::process::id()));
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data/tracefs");
        for (event, fixture) in [
            ("vmscan/mm_vmscan_writepage", "mm_vmscan_writepage.format"),
            (
                "vmscan/mm_vmscan_kswapd_wake",
                "kswapd_wake_no_order.format",
            ),
        ] {
            let dir = root.join("events").join(event);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(fixtures.join(fixture), dir.join("format")).unwrap();
        }
        Tracefs::at(root)
    }

    #[test]
    fn older_tracepoint_name_is_used_when_the_newer_is_missing() {
        let r = resolve(&old_kernel("older_name"), spec(Hook::WriteFolio)).unwrap();
        assert_eq!(r.name, "mm_vmscan_writepage");
        assert_eq!((r.config.offsets[0], r.config.sizes[0]), (8, 8));
        assert_eq!((r.config.offsets[1], r.layout.signed[1]), (16, true));
        assert_eq!(r.config.per_process, 0);
        assert_eq!(
            r.config.contiguous, 0,
            "pfn (8 bytes) then reclaim_flags (4)"
        );
    }

    #[test]
    fn missing_tracepoint_or_field_is_one_clear_line() {
        let tracefs = old_kernel("missing");
        let err = resolve(&tracefs, spec(Hook::PageFaultUser)).unwrap_err();
        assert_eq!(
            err,
            SkipReason::TracepointMissing("exceptions/page_fault_user".into())
        );
        assert_eq!(
            err.to_string(),
            "this kernel has no tracepoint exceptions/page_fault_user"
        );
        let err = resolve(&tracefs, spec(Hook::KswapdWake)).unwrap_err();
        assert!(
            matches!(&err, SkipReason::FieldMissing { field, .. } if field == "order"),
            "{err}"
        );
        assert!(err.to_string().contains("has no field \"order\""), "{err}");
    }
}
