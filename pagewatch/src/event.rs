//! Decoding ring-buffer records into typed events.
//!
//! The eBPF side copies raw field values; the layout of each hook (sizes and
//! signedness, read from the kernel's format files at attach time) tells the
//! decoder how to widen them back.

use pagewatch_common::{
    event::{EventHeader, MAX_ARGS, RAW_EVENT_SIZE, RawEvent},
    hook::Hook,
};

use crate::probe::{AttachedHook, FieldLayout};

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
}

impl Decoder {
    /// A decoder for the hooks in `attached`.
    pub fn new(attached: &[AttachedHook]) -> Self {
        let mut layouts = vec![None; Hook::ALL.len()];
        for a in attached {
            layouts[a.hook as usize] = Some(a.layout);
        }
        Self { layouts }
    }

    /// Decodes one ring-buffer record.
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.len() < RAW_EVENT_SIZE {
            return Err(DecodeError::Truncated { len: bytes.len() });
        }
        // SAFETY: RawEvent is Pod and the slice holds at least its size;
        // read_unaligned copes with any alignment.
        let raw: RawEvent = unsafe { bytes.as_ptr().cast::<RawEvent>().read_unaligned() };
        let EventHeader {
            hook,
            size,
            cpu,
            ts_ns,
            tgid,
            tid,
        } = raw.header;
        if usize::from(size) > bytes.len() {
            return Err(DecodeError::Truncated { len: bytes.len() });
        }
        let hook = Hook::from_u16(hook).ok_or(DecodeError::UnknownHook(hook))?;
        let layout = self.layouts[hook as usize].ok_or(DecodeError::NotAttached(hook))?;
        let a = widen(&raw.args, &layout);
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

    fn record(hook: Hook, args: [u64; MAX_ARGS]) -> Vec<u8> {
        let raw = RawEvent {
            header: EventHeader {
                hook: hook as u16,
                size: RAW_EVENT_SIZE as u16,
                cpu: 1,
                ts_ns: 42,
                tgid: 7,
                tid: 8,
            },
            args,
        };
        // SAFETY: RawEvent is Pod.
        unsafe {
            std::slice::from_raw_parts((&raw as *const RawEvent).cast::<u8>(), RAW_EVENT_SIZE)
        }
        .to_vec()
    }

    fn attached(hook: Hook, sizes: [u8; 4], signed: [bool; 4]) -> AttachedHook {
        AttachedHook {
            hook,
            tracepoint: String::new(),
            layout: FieldLayout { sizes, signed },
        }
    }

    #[test]
    fn signed_int_fields_are_sign_extended() {
        let d = Decoder::new(&[attached(
            Hook::LruShrinkInactive,
            [4, 8, 8, 4],
            [true, false, false, true],
        )]);
        let e = d
            .decode(&record(Hook::LruShrinkInactive, [0xffff_ffff, 32, 30, 12]))
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

    #[test]
    fn bad_records_are_errors_not_panics() {
        let d = Decoder::new(&[]);
        assert_eq!(d.decode(&[0; 10]), Err(DecodeError::Truncated { len: 10 }));
        let mut r = record(Hook::PageFaultUser, [0; 4]);
        assert_eq!(
            d.decode(&r),
            Err(DecodeError::NotAttached(Hook::PageFaultUser))
        );
        r[0] = 200;
        assert_eq!(d.decode(&r), Err(DecodeError::UnknownHook(200)));
        let mut short = record(Hook::PageFaultUser, [0; 4]);
        short[2] = 255; // size field larger than the record
        assert!(matches!(
            d.decode(&short),
            Err(DecodeError::Truncated { .. })
        ));
    }
}
