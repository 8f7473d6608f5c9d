//! The records a recording holds after its header, and their payload
//! encodings. Kind numbers are fixed forever; payload fields are
//! little-endian, strings and lists carry a u32 count, and new fields are
//! only ever appended, so a reader ignores bytes after the fields it knows.

use bytes::{Buf, BufMut, Bytes, BytesMut, TryGetError};

use crate::{
    correlate::{
        balloon::BalloonInterval,
        hugepages::{PoolSample, VmaThp},
        swap::SwapReturns,
    },
    note::{Note, Severity},
    snapshot::sysfs::HugetlbPool,
    transition::{Cause, TransitionGroup, TransitionKind},
};

/// Kind byte of [`Record::Event`].
pub(super) const EVENT: u8 = 1;
/// Kind byte of [`Record::Interval`].
const INTERVAL: u8 = 2;
/// Kind byte of [`Record::Transition`].
const TRANSITION: u8 = 3;
/// Kind byte of [`Record::Process`].
const PROCESS: u8 = 4;
/// Kind byte of [`Record::Sample`].
const SAMPLE: u8 = 5;
/// Kind byte of [`Record::Note`].
const NOTE: u8 = 6;
/// Kind byte of [`Record::End`].
const END: u8 = 7;
/// Kind byte of [`Record::SwapReturns`].
const SWAP_RETURNS: u8 = 8;
/// Kind byte of [`Record::HugetlbPool`].
const HUGETLB_POOL: u8 = 9;
/// Kind byte of [`Record::VmaThp`].
const VMA_THP: u8 = 10;
/// Kind byte of [`Record::Balloon`].
const BALLOON: u8 = 11;

/// One record of a recording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A ring-buffer record exactly as the eBPF side wrote it
    /// (`pagewatch_common::event::RawEvent<N>`, native endian); decode it
    /// with the [`crate::event::Decoder`] from [`super::Metadata::decoder`].
    Event(Bytes),
    Interval(Interval),
    Transition(TransitionGroup),
    Process(Process),
    Sample(Sample),
    Note(Note),
    End(End),
    /// Pages of one process and VMA back from swap in one interval.
    SwapReturns(SwapReturns),
    /// A per-node hugetlb pool that changed (or was first read).
    HugetlbPool(PoolSample),
    /// A VMA whose PMD-mapped page count changed.
    VmaThp(VmaThp),
    /// Balloon activity in one interval (none: no record).
    Balloon(BalloonInterval),
}

/// The end of one reporting interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// 0 for the first interval.
    pub index: u64,
    /// CLOCK_MONOTONIC ns at the end of the interval.
    pub ts_ns: u64,
    /// Events received so far.
    pub events: u64,
    /// Events the kernel dropped so far (ring buffer full), all CPUs.
    pub dropped: u64,
    /// `dropped` per possible CPU.
    pub dropped_per_cpu: Vec<u64>,
    /// What the interval's snapshot cost (appended fields: absent in
    /// recordings of sessions without snapshots and of older versions).
    pub snapshot: Option<IntervalSnapshot>,
}

/// What one interval's snapshot read and carried over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntervalSnapshot {
    /// How long it took.
    pub ns: u64,
    /// Processes read again, and their pages.
    pub rescanned: u64,
    pub rescanned_pages: u64,
    /// Processes carried over unchanged, and their pages.
    pub carried: u64,
    pub carried_pages: u64,
}

/// A process as pagewatch first saw it (or saw it again after an exec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// CLOCK_MONOTONIC ns when it was read.
    pub ts_ns: u64,
    pub pid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22): with
    /// `pid` it tells a reused pid from the process it replaced.
    pub start_ticks: u64,
    pub ppid: u32,
    pub comm: String,
    /// /proc/PID/cmdline split at NULs (lossy UTF-8). Keep it short: a
    /// record is at most [`super::MAX_RECORD_LEN`] bytes.
    pub cmdline: Vec<String>,
}

/// Per-process page counters at one snapshot (Perfetto counter tracks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// CLOCK_MONOTONIC ns of the snapshot.
    pub ts_ns: u64,
    pub pid: u32,
    pub rss_pages: u64,
    pub anon_pages: u64,
    pub file_pages: u64,
    pub swap_pages: u64,
    pub thp_pages: u64,
    /// hugetlb pages held, indexed by NUMA node.
    pub hugetlb_pages_per_node: Vec<u64>,
}

/// The clean end of a recording, with its totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// CLOCK_MONOTONIC ns when recording stopped.
    pub ts_ns: u64,
    pub events: u64,
    pub dropped: u64,
    pub duration_ns: u64,
}

/// Why a payload whose CRC matched still cannot be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Undecodable {
    /// Fields are missing or inconsistent: the writer had a bug.
    Malformed,
    /// The record (its kind or an enum value in it) comes from a newer
    /// pagewatch; it is skipped and counted.
    Newer,
}

impl From<TryGetError> for Undecodable {
    fn from(_: TryGetError) -> Self {
        Self::Malformed
    }
}

impl Record {
    /// The record's kind byte (fixed forever: 1 Event ... 7 End, 8
    /// SwapReturns, 9 HugetlbPool, 10 VmaThp, 11 Balloon).
    pub fn kind(&self) -> u8 {
        match self {
            Self::Event(_) => EVENT,
            Self::Interval(_) => INTERVAL,
            Self::Transition(_) => TRANSITION,
            Self::Process(_) => PROCESS,
            Self::Sample(_) => SAMPLE,
            Self::Note(_) => NOTE,
            Self::End(_) => END,
            Self::SwapReturns(_) => SWAP_RETURNS,
            Self::HugetlbPool(_) => HUGETLB_POOL,
            Self::VmaThp(_) => VMA_THP,
            Self::Balloon(_) => BALLOON,
        }
    }

    /// Appends the payload (not the kind) to `buf`.
    pub(super) fn encode(&self, buf: &mut BytesMut) {
        match self {
            Self::Event(raw) => buf.put_slice(raw),
            Self::Interval(i) => {
                buf.put_u64_le(i.index);
                buf.put_u64_le(i.ts_ns);
                buf.put_u64_le(i.events);
                buf.put_u64_le(i.dropped);
                put_u64s(buf, &i.dropped_per_cpu);
                if let Some(s) = &i.snapshot {
                    for v in [
                        s.ns,
                        s.rescanned,
                        s.rescanned_pages,
                        s.carried,
                        s.carried_pages,
                    ] {
                        buf.put_u64_le(v);
                    }
                }
            }
            Self::Transition(t) => {
                buf.put_u64_le(t.ts_ns);
                buf.put_u32_le(t.pid);
                buf.put_u64_le(t.vma_start);
                buf.put_u8(t.kind as u8);
                buf.put_u8(t.cause as u8);
                buf.put_u64_le(t.pages);
                buf.put_i32_le(t.from_node);
                buf.put_i32_le(t.to_node);
                put_str(buf, &t.vma);
            }
            Self::Process(p) => {
                buf.put_u64_le(p.ts_ns);
                buf.put_u32_le(p.pid);
                buf.put_u64_le(p.start_ticks);
                buf.put_u32_le(p.ppid);
                put_str(buf, &p.comm);
                put_len(buf, p.cmdline.len());
                for arg in &p.cmdline {
                    put_str(buf, arg);
                }
            }
            Self::Sample(s) => {
                buf.put_u64_le(s.ts_ns);
                buf.put_u32_le(s.pid);
                buf.put_u64_le(s.rss_pages);
                buf.put_u64_le(s.anon_pages);
                buf.put_u64_le(s.file_pages);
                buf.put_u64_le(s.swap_pages);
                buf.put_u64_le(s.thp_pages);
                put_u64s(buf, &s.hugetlb_pages_per_node);
            }
            Self::Note(n) => {
                buf.put_u64_le(n.ts_ns);
                buf.put_u8(n.severity as u8);
                put_str(buf, &n.text);
            }
            Self::End(e) => {
                buf.put_u64_le(e.ts_ns);
                buf.put_u64_le(e.events);
                buf.put_u64_le(e.dropped);
                buf.put_u64_le(e.duration_ns);
            }
            Self::SwapReturns(r) => {
                buf.put_u64_le(r.ts_ns);
                buf.put_u32_le(r.pid);
                buf.put_u64_le(r.vma_start);
                buf.put_u64_le(r.pages);
                buf.put_u64_le(r.time_in_swap_ns);
                buf.put_u64_le(r.max_ns);
            }
            Self::HugetlbPool(PoolSample { ts_ns, pool: p }) => {
                buf.put_u64_le(*ts_ns);
                buf.put_u64_le(p.size_kb);
                buf.put_u32_le(p.node.unwrap_or(u32::MAX));
                buf.put_u64_le(p.nr);
                buf.put_u64_le(p.free);
                buf.put_u64_le(p.surplus);
                buf.put_u64_le(p.resv.unwrap_or(u64::MAX));
            }
            Self::VmaThp(t) => {
                buf.put_u64_le(t.ts_ns);
                buf.put_u32_le(t.pid);
                buf.put_u64_le(t.vma_start);
                buf.put_u64_le(t.vma_pages);
                buf.put_u64_le(t.thp_pages);
                put_str(buf, &t.vma);
            }
            Self::Balloon(b) => {
                buf.put_u64_le(b.ts_ns);
                buf.put_u64_le(b.vmstat_inflated);
                buf.put_u64_le(b.vmstat_deflated);
                buf.put_u64_le(b.hook_inflated);
                buf.put_u64_le(b.hook_deflated);
            }
        }
    }

    /// Decodes the payload of a record of kind `kind`.
    pub(super) fn decode(kind: u8, payload: Vec<u8>) -> Result<Self, Undecodable> {
        let mut b = payload.as_slice();
        let b = &mut b;
        Ok(match kind {
            EVENT => Self::Event(Bytes::from(payload)),
            INTERVAL => Self::Interval(Interval {
                index: b.try_get_u64_le()?,
                ts_ns: b.try_get_u64_le()?,
                events: b.try_get_u64_le()?,
                dropped: b.try_get_u64_le()?,
                dropped_per_cpu: get_u64s(b)?,
                snapshot: if b.remaining() >= 5 * 8 {
                    Some(IntervalSnapshot {
                        ns: b.try_get_u64_le()?,
                        rescanned: b.try_get_u64_le()?,
                        rescanned_pages: b.try_get_u64_le()?,
                        carried: b.try_get_u64_le()?,
                        carried_pages: b.try_get_u64_le()?,
                    })
                } else {
                    None
                },
            }),
            TRANSITION => Self::Transition(TransitionGroup {
                ts_ns: b.try_get_u64_le()?,
                pid: b.try_get_u32_le()?,
                vma_start: b.try_get_u64_le()?,
                kind: TransitionKind::from_u8(b.try_get_u8()?).ok_or(Undecodable::Newer)?,
                cause: Cause::from_u8(b.try_get_u8()?).ok_or(Undecodable::Newer)?,
                pages: b.try_get_u64_le()?,
                from_node: b.try_get_i32_le()?,
                to_node: b.try_get_i32_le()?,
                vma: get_str(b)?,
            }),
            PROCESS => Self::Process(Process {
                ts_ns: b.try_get_u64_le()?,
                pid: b.try_get_u32_le()?,
                start_ticks: b.try_get_u64_le()?,
                ppid: b.try_get_u32_le()?,
                comm: get_str(b)?,
                cmdline: {
                    // Each argument takes at least its 4-byte length.
                    let n = get_len(b, 4)?;
                    (0..n).map(|_| get_str(b)).collect::<Result<_, _>>()?
                },
            }),
            SAMPLE => Self::Sample(Sample {
                ts_ns: b.try_get_u64_le()?,
                pid: b.try_get_u32_le()?,
                rss_pages: b.try_get_u64_le()?,
                anon_pages: b.try_get_u64_le()?,
                file_pages: b.try_get_u64_le()?,
                swap_pages: b.try_get_u64_le()?,
                thp_pages: b.try_get_u64_le()?,
                hugetlb_pages_per_node: get_u64s(b)?,
            }),
            NOTE => Self::Note(Note {
                ts_ns: b.try_get_u64_le()?,
                severity: match b.try_get_u8()? {
                    0 => Severity::Info,
                    1 => Severity::Warning,
                    2 => Severity::Error,
                    _ => return Err(Undecodable::Newer),
                },
                text: get_str(b)?,
            }),
            END => Self::End(End {
                ts_ns: b.try_get_u64_le()?,
                events: b.try_get_u64_le()?,
                dropped: b.try_get_u64_le()?,
                duration_ns: b.try_get_u64_le()?,
            }),
            SWAP_RETURNS => Self::SwapReturns(SwapReturns {
                ts_ns: b.try_get_u64_le()?,
                pid: b.try_get_u32_le()?,
                vma_start: b.try_get_u64_le()?,
                pages: b.try_get_u64_le()?,
                time_in_swap_ns: b.try_get_u64_le()?,
                max_ns: b.try_get_u64_le()?,
            }),
            HUGETLB_POOL => Self::HugetlbPool(PoolSample {
                ts_ns: b.try_get_u64_le()?,
                pool: HugetlbPool {
                    size_kb: b.try_get_u64_le()?,
                    node: Some(b.try_get_u32_le()?).filter(|&n| n != u32::MAX),
                    nr: b.try_get_u64_le()?,
                    free: b.try_get_u64_le()?,
                    surplus: b.try_get_u64_le()?,
                    resv: Some(b.try_get_u64_le()?).filter(|&r| r != u64::MAX),
                },
            }),
            VMA_THP => Self::VmaThp(VmaThp {
                ts_ns: b.try_get_u64_le()?,
                pid: b.try_get_u32_le()?,
                vma_start: b.try_get_u64_le()?,
                vma_pages: b.try_get_u64_le()?,
                thp_pages: b.try_get_u64_le()?,
                vma: get_str(b)?,
            }),
            BALLOON => Self::Balloon(BalloonInterval {
                ts_ns: b.try_get_u64_le()?,
                vmstat_inflated: b.try_get_u64_le()?,
                vmstat_deflated: b.try_get_u64_le()?,
                hook_inflated: b.try_get_u64_le()?,
                hook_deflated: b.try_get_u64_le()?,
            }),
            _ => return Err(Undecodable::Newer),
        })
    }
}

/// Writes a count; records are capped far below `u32::MAX`, and the writer
/// refuses an oversized payload, so saturating never goes unnoticed.
fn put_len(buf: &mut BytesMut, n: usize) {
    buf.put_u32_le(u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_str(buf: &mut BytesMut, s: &str) {
    put_len(buf, s.len());
    buf.put_slice(s.as_bytes());
}

fn put_u64s(buf: &mut BytesMut, values: &[u64]) {
    put_len(buf, values.len());
    for v in values {
        buf.put_u64_le(*v);
    }
}

/// Reads a count of items of at least `item_size` bytes each, checking that
/// the payload can hold them before anything is allocated.
fn get_len(b: &mut &[u8], item_size: usize) -> Result<usize, Undecodable> {
    let n = b.try_get_u32_le()? as usize;
    if n.checked_mul(item_size)
        .is_none_or(|need| need > b.remaining())
    {
        return Err(Undecodable::Malformed);
    }
    Ok(n)
}

fn get_str(b: &mut &[u8]) -> Result<String, Undecodable> {
    let n = get_len(b, 1)?;
    let s = std::str::from_utf8(&b[..n]).map_err(|_| Undecodable::Malformed)?;
    let s = s.to_owned();
    b.advance(n);
    Ok(s)
}

fn get_u64s(b: &mut &[u8]) -> Result<Vec<u64>, Undecodable> {
    let n = get_len(b, 8)?;
    (0..n).map(|_| Ok(b.try_get_u64_le()?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(r: &Record) -> Vec<u8> {
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        buf.to_vec()
    }

    #[test]
    fn kind_numbers_are_fixed() {
        let kinds: Vec<u8> = super::super::tests::one_of_each()
            .iter()
            .map(Record::kind)
            .collect();
        assert_eq!(kinds, [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 7]);
    }

    #[test]
    fn bytes_after_known_fields_are_ignored() {
        let end = Record::End(End {
            ts_ns: 1,
            events: 2,
            dropped: 3,
            duration_ns: 4,
        });
        let mut p = payload(&end);
        p.extend_from_slice(b"a field from a newer pagewatch");
        assert_eq!(Record::decode(END, p), Ok(end));
    }

    #[test]
    fn interval_snapshot_figures_are_appended_and_optional() {
        let Record::Interval(plain) = super::super::tests::one_of_each().remove(1) else {
            panic!("one_of_each()[1] is an Interval");
        };
        let with = Record::Interval(Interval {
            snapshot: Some(IntervalSnapshot {
                ns: 1_500_000,
                rescanned: 2,
                rescanned_pages: 300,
                carried: 198,
                carried_pages: 2_534_400,
            }),
            ..plain.clone()
        });
        let p = payload(&with);
        assert_eq!(Record::decode(INTERVAL, p.clone()), Ok(with));
        // Without them (a session without snapshots, an older recording):
        // the payload ends at the per-CPU drops and reads back as None.
        let short = payload(&Record::Interval(plain.clone()));
        assert_eq!(short.len(), p.len() - 40);
        assert_eq!(Record::decode(INTERVAL, short), Ok(Record::Interval(plain)));
    }

    #[test]
    fn short_or_inconsistent_payloads_are_malformed() {
        let sample = super::super::tests::one_of_each().remove(4);
        let p = payload(&sample);
        for len in 0..p.len() {
            assert_eq!(
                Record::decode(SAMPLE, p[..len].to_vec()),
                Err(Undecodable::Malformed),
                "cut at {len}"
            );
        }
        // A count larger than the payload is refused before allocating.
        let mut huge = vec![0u8; 8 * 4];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Record::decode(INTERVAL, huge), Err(Undecodable::Malformed));
        // Invalid UTF-8 in a string.
        let mut note = vec![0u8; 9];
        note.extend_from_slice(&2u32.to_le_bytes());
        note.extend_from_slice(&[0xff, 0xfe]);
        assert_eq!(Record::decode(NOTE, note), Err(Undecodable::Malformed));
    }

    #[test]
    fn values_from_a_newer_pagewatch_are_newer_not_malformed() {
        assert_eq!(Record::decode(200, vec![1, 2, 3]), Err(Undecodable::Newer));
        let mut note = vec![0u8; 8];
        note.push(9); // a severity this reader does not know
        note.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(Record::decode(NOTE, note), Err(Undecodable::Newer));
        let Record::Transition(mut t) = super::super::tests::one_of_each().remove(2) else {
            panic!("not a transition");
        };
        t.kind = TransitionKind::Migrated;
        let mut p = payload(&Record::Transition(t));
        p[20] = 99; // kind byte: ts 8 + pid 4 + vma_start 8
        assert_eq!(Record::decode(TRANSITION, p), Err(Undecodable::Newer));
    }
}
