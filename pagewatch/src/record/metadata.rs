//! The metadata at the head of every recording: what machine and kernel it
//! came from, how to turn its CLOCK_MONOTONIC timestamps into wall time,
//! what was traced, and, per attached hook, everything the event
//! [`Decoder`] needs (field sizes and signedness, `__print_symbolic`
//! tables), so a recording decodes on another machine. Stored as JSON;
//! unknown fields are ignored, so newer writers may add fields.

use std::time::{Duration, SystemTime};

use pagewatch_common::{event::MAX_ARGS, hook::Hook};
use serde::{Deserialize, Serialize};

use crate::{
    event::Decoder,
    hooks::{AttachedHook, FieldLayout, SkippedHook},
    kernel,
    tracefs::{EventFormat, Field},
};

/// The recording's self-description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The pagewatch that wrote it.
    pub pagewatch_version: String,
    /// `uname -r` of the traced machine.
    pub kernel_release: String,
    /// Bytes per base page.
    pub page_size: u64,
    /// `sysconf(_SC_CLK_TCK)`: the unit of [`super::Process::start_ticks`].
    pub clock_ticks_per_sec: u64,
    /// CLOCK_MONOTONIC ns when recording started.
    pub start_monotonic_ns: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in ns, at the start: adding it
    /// to an event's `ts_ns` gives Unix time.
    pub realtime_offset_ns: i64,
    /// CLOCK_BOOTTIME minus CLOCK_MONOTONIC (time suspended), in ns:
    /// process start ticks count from boot in CLOCK_BOOTTIME.
    pub boottime_offset_ns: i64,
    /// pagewatch's own command line.
    pub command_line: Vec<String>,
    /// What was traced, as the user asked for it (`--pid 42`, `-- make`).
    pub target: String,
    /// One entry per attached hook.
    pub hooks: Vec<HookMeta>,
    /// Hooks that could not be attached, and why.
    pub hooks_skipped: Vec<SkippedMeta>,
}

/// An attached hook: a serializable mirror of [`AttachedHook`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookMeta {
    /// The [`Hook`] discriminant, as in every event header.
    pub id: u16,
    /// `category/name` (or `fentry:function`).
    pub tracepoint: String,
    /// Per raw argument: its size in the kernel record and signedness.
    pub arg_sizes: Vec<u8>,
    pub arg_signed: Vec<bool>,
    /// The tracepoint's format fields.
    pub fields: Vec<FieldMeta>,
    /// `__print_symbolic` tables: field name and (value, name) pairs.
    pub symbols: Vec<(String, Vec<(i64, String)>)>,
}

/// One field of a tracepoint format: a mirror of [`Field`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldMeta {
    pub name: String,
    pub offset: u16,
    pub size: u8,
    pub signed: bool,
}

/// A hook that was not attached: a mirror of [`SkippedHook`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedMeta {
    pub program: String,
    pub reason: String,
}

impl From<&AttachedHook> for HookMeta {
    fn from(a: &AttachedHook) -> Self {
        Self {
            id: a.hook as u16,
            tracepoint: a.tracepoint.clone(),
            arg_sizes: a.layout.sizes.to_vec(),
            arg_signed: a.layout.signed.to_vec(),
            fields: a
                .format
                .fields
                .iter()
                .map(|f| FieldMeta {
                    name: f.name.clone(),
                    offset: f.offset,
                    size: f.size,
                    signed: f.signed,
                })
                .collect(),
            symbols: a.format.symbols.clone(),
        }
    }
}

impl From<&SkippedHook> for SkippedMeta {
    fn from(s: &SkippedHook) -> Self {
        Self {
            program: s.program.to_owned(),
            reason: s.reason.to_string(),
        }
    }
}

impl HookMeta {
    /// The hook as the decoder wants it, or `None` for a hook this
    /// pagewatch does not know (the recording is from a newer one; its
    /// events then decode as [`crate::event::DecodeError::UnknownHook`]).
    pub fn to_attached(&self) -> Option<AttachedHook> {
        let hook = Hook::from_u16(self.id)?;
        let mut layout = FieldLayout::default();
        for (slot, size) in layout.sizes.iter_mut().zip(&self.arg_sizes) {
            *slot = *size;
        }
        for (slot, signed) in layout.signed.iter_mut().zip(&self.arg_signed) {
            *slot = *signed;
        }
        Some(AttachedHook {
            hook,
            tracepoint: self.tracepoint.clone(),
            layout,
            format: EventFormat {
                fields: self
                    .fields
                    .iter()
                    .map(|f| Field {
                        name: f.name.clone(),
                        offset: f.offset,
                        size: f.size,
                        signed: f.signed,
                    })
                    .collect(),
                symbols: self.symbols.clone(),
            },
        })
    }
}

const _: () = assert!(
    MAX_ARGS == 6,
    "HookMeta copies layouts of MAX_ARGS arguments"
);

impl Metadata {
    /// Describes a recording starting now on this machine, of `target`,
    /// with the hooks the probe attached and skipped.
    pub fn capture(
        command_line: Vec<String>,
        target: String,
        attached: &[AttachedHook],
        skipped: &[SkippedHook],
    ) -> Self {
        let monotonic = kernel::clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = kernel::clock_ns(libc::CLOCK_REALTIME);
        let boottime = kernel::clock_ns(libc::CLOCK_BOOTTIME);
        Self {
            pagewatch_version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel_release: kernel_release(),
            page_size: kernel::page_size(),
            clock_ticks_per_sec: kernel::clock_ticks_per_sec(),
            start_monotonic_ns: u64::try_from(monotonic).unwrap_or(0),
            realtime_offset_ns: i64::try_from(realtime - monotonic).unwrap_or(0),
            boottime_offset_ns: i64::try_from(boottime - monotonic).unwrap_or(0),
            command_line,
            target,
            hooks: attached.iter().map(HookMeta::from).collect(),
            hooks_skipped: skipped.iter().map(SkippedMeta::from).collect(),
        }
    }

    /// The attached hooks this pagewatch knows, ready for [`Decoder::new`].
    pub fn attached_hooks(&self) -> Vec<AttachedHook> {
        self.hooks
            .iter()
            .filter_map(HookMeta::to_attached)
            .collect()
    }

    /// A decoder for this recording's events.
    pub fn decoder(&self) -> Decoder {
        Decoder::new(&self.attached_hooks())
    }

    /// The wall-clock time of CLOCK_MONOTONIC timestamp `ts_ns`.
    pub fn wall_time(&self, ts_ns: u64) -> SystemTime {
        let unix_ns = i128::from(ts_ns) + i128::from(self.realtime_offset_ns);
        let since_epoch = Duration::from_nanos(u64::try_from(unix_ns.max(0)).unwrap_or(u64::MAX));
        SystemTime::UNIX_EPOCH + since_epoch
    }

    /// When recording started, as wall-clock time.
    pub fn start_time(&self) -> SystemTime {
        self.wall_time(self.start_monotonic_ns)
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: utsname is plain bytes; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid utsname to write.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    let release: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&release).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[test]
    fn capture_describes_this_machine() {
        let m = Metadata::capture(vec!["pagewatch".into()], "--all".into(), &[], &[]);
        assert_eq!(m.page_size, 4096);
        assert!(m.kernel_release.chars().next().unwrap().is_ascii_digit());
        assert!(m.clock_ticks_per_sec > 0);
        assert!(m.boottime_offset_ns >= 0);
        let start = m.start_time();
        let now = SystemTime::now();
        let skew = now.duration_since(start).unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_secs(5), "{start:?} vs {now:?}");
    }

    #[test]
    fn hooks_survive_json_and_decode_events_on_another_machine() {
        let attached = super::super::tests::scan_pmd_hook();
        let mut m = Metadata::capture(vec![], String::new(), std::slice::from_ref(&attached), &[]);
        m.hooks.push(HookMeta {
            id: 9999, // a hook from a newer pagewatch
            ..HookMeta::from(&attached)
        });
        let back: Metadata = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        let hooks = back.attached_hooks();
        assert_eq!(hooks.len(), 1, "the unknown hook is left out");
        assert_eq!(hooks[0].hook, attached.hook);
        assert_eq!(hooks[0].layout, attached.layout);
        assert_eq!(hooks[0].format, attached.format);
        let d = back.decoder();
        let e = d.decode(&super::super::tests::scan_pmd_event()).unwrap();
        let EventKind::ScanPmd { status, .. } = e.kind else {
            panic!("{e:?}");
        };
        assert_eq!(
            d.symbol(Hook::ScanPmd, "status", status),
            Some("exceed_none_pte")
        );
    }
}
