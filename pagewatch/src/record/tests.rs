//! Tests of whole recordings: every kind round-trips through a file; a
//! recording truncated at every byte, or with any bit flipped, reads back a
//! prefix of its records or fails with a clear error, never a panic nor a
//! garbage record; the writer never clobbers a file or follows a symlink;
//! and the v1 layout stays byte-for-byte what `test_data/record/` holds.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use pagewatch_common::{
    event::{EventHeader, WideEvent},
    hook::Hook,
};

use super::*;
use crate::{
    correlate::{
        balloon::BalloonInterval,
        hugepages::{PoolSample, VmaThp},
        swap::SwapReturns,
    },
    hooks::{AttachedHook, FieldLayout, SkipReason, SkippedHook},
    snapshot::sysfs::HugetlbPool,
    tracefs::EventFormat,
    transition::{Cause, TransitionGroup, TransitionKind},
};

fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("test_data")
        .join(name)
}

/// An empty directory of this call's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static CALLS: AtomicUsize = AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pw-record-{}-{test}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// khugepaged's scan hook, with the format captured on 6.18.
pub(super) fn scan_pmd_hook() -> AttachedHook {
    let text = std::fs::read_to_string(test_data("tracefs/mm_khugepaged_scan_pmd.format")).unwrap();
    AttachedHook {
        hook: Hook::ScanPmd,
        tracepoint: "huge_memory/mm_khugepaged_scan_pmd".into(),
        layout: FieldLayout {
            sizes: [8, 8, 4, 4, 4, 4],
            signed: [false, false, true, true, true, true],
        },
        format: EventFormat::parse(&text).unwrap(),
    }
}

/// A ring-buffer record of [`scan_pmd_hook`] refused for `exceed_none_pte`.
pub(super) fn scan_pmd_event() -> Vec<u8> {
    let raw = WideEvent {
        header: EventHeader {
            hook: Hook::ScanPmd as u16,
            size: std::mem::size_of::<WideEvent>() as u16,
            cpu: 1,
            ts_ns: 1_000_500,
            tgid: 4711,
            tid: 4712,
        },
        args: [0xffff_8880_1234_0000, 0x1234, 3, 0x1ff, 5, 0],
    };
    // SAFETY: WideEvent is Pod (repr(C), no padding).
    unsafe {
        std::slice::from_raw_parts(
            (&raw as *const WideEvent).cast::<u8>(),
            std::mem::size_of::<WideEvent>(),
        )
    }
    .to_vec()
}

/// Metadata with fixed values, so the recording's bytes are reproducible.
pub(super) fn metadata() -> Metadata {
    Metadata {
        pagewatch_version: "0.1.0".into(),
        kernel_release: "6.18.0-test".into(),
        page_size: 4096,
        clock_ticks_per_sec: 100,
        start_monotonic_ns: 1_000_000,
        realtime_offset_ns: 1_790_000_000_000_000_000,
        boottime_offset_ns: 0,
        command_line: vec!["pagewatch".into(), "record".into(), "-o".into(), "x".into()],
        target: "-- pw-faults 64M".into(),
        hooks: vec![HookMeta::from(&scan_pmd_hook())],
        hooks_skipped: vec![SkippedMeta::from(&SkippedHook {
            program: "balloon_inflate",
            reason: SkipReason::Failed("the kernel refused fentry".into()),
        })],
    }
}

/// One record of each kind, in kind order but for End, which comes last.
pub(super) fn one_of_each() -> Vec<Record> {
    vec![
        Record::Event(scan_pmd_event().into()),
        Record::Interval(Interval {
            index: 0,
            ts_ns: 2_000_000,
            events: 1,
            dropped: 3,
            dropped_per_cpu: vec![1, 2],
            snapshot: None,
        }),
        Record::Transition(TransitionGroup {
            ts_ns: 2_000_000,
            pid: 4711,
            vma_start: 0x7f00_0000_0000,
            vma: "/usr/lib/libc.so.6".into(),
            kind: TransitionKind::NodeChanged,
            cause: Cause::NumaBalancing,
            pages: 512,
            from_node: 0,
            to_node: 1,
        }),
        Record::Process(Process {
            ts_ns: 1_000_100,
            pid: 4711,
            start_ticks: 123_456,
            ppid: 1,
            comm: "pw-faults".into(),
            cmdline: vec!["pw-faults".into(), "64M".into(), String::new()],
        }),
        Record::Sample(Sample {
            ts_ns: 2_000_000,
            pid: 4711,
            rss_pages: 16_384,
            anon_pages: 16_000,
            file_pages: 384,
            swap_pages: 7,
            thp_pages: 512,
            hugetlb_pages_per_node: vec![0, 4],
        }),
        Record::Note(Note {
            ts_ns: 1_500_000,
            severity: Severity::Warning,
            text: "pid 4713 exited during the snapshot".into(),
        }),
        Record::SwapReturns(SwapReturns {
            ts_ns: 2_000_000,
            pid: 4711,
            vma_start: 0x7f00_0000_0000,
            pages: 300,
            time_in_swap_ns: 900_000_000,
            max_ns: 4_000_000,
        }),
        Record::HugetlbPool(PoolSample {
            ts_ns: 2_000_000,
            pool: HugetlbPool {
                size_kb: 2048,
                node: Some(1),
                nr: 4,
                free: 3,
                surplus: 1,
                resv: None,
            },
        }),
        Record::VmaThp(VmaThp {
            ts_ns: 2_000_000,
            pid: 4711,
            vma_start: 0x7f00_0020_0000,
            vma: "[heap]".into(),
            vma_pages: 2048,
            thp_pages: 1536,
        }),
        Record::Balloon(BalloonInterval {
            ts_ns: 2_000_000,
            vmstat_inflated: 131_072,
            vmstat_deflated: 0,
            hook_inflated: 131_072,
            hook_deflated: 0,
        }),
        Record::End(End {
            ts_ns: 3_000_000,
            events: 1,
            dropped: 3,
            duration_ns: 2_000_000,
        }),
    ]
}

/// The bytes of a recording of [`one_of_each`], written through a file.
fn recording_bytes() -> Vec<u8> {
    recording_of(&one_of_each())
}

/// The bytes of a recording of `records` (End last), written through a file.
fn recording_of(records: &[Record]) -> Vec<u8> {
    let dir = TempDir::new("bytes");
    let path = dir.join("r.pwrec");
    let mut w = RecordWriter::create(&path, &metadata()).unwrap();
    let (last, rest) = records.split_last().unwrap();
    for r in rest {
        w.write(r).unwrap();
    }
    let Record::End(end) = last else {
        panic!("last is not End")
    };
    let size = w.finish(*end).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(size, bytes.len() as u64);
    bytes
}

/// What reading a whole recording gave: its records, the cut if any, and
/// the offset after the header and after each record.
type ReadBack = (Vec<Record>, Option<Cut>, Vec<u64>);

/// Reads `bytes` to the end.
fn read_all(bytes: &[u8]) -> Result<ReadBack, HeaderError> {
    let mut reader = RecordReader::new(bytes)?;
    let mut records = Vec::new();
    let mut ends = vec![reader.offset()];
    let mut cut = None;
    while let Some(r) = reader.next() {
        match r {
            Ok(r) => records.push(r),
            Err(c) => cut = Some(c),
        }
        ends.push(reader.offset());
    }
    assert_eq!(cut, reader.cut());
    Ok((records, cut, ends))
}

#[test]
fn every_kind_round_trips_through_a_file() {
    let dir = TempDir::new("round-trip");
    let path = dir.join("r.pwrec");
    let mut w = RecordWriter::create(&path, &metadata()).unwrap();
    assert_eq!(w.path(), path);
    w.write_event(&scan_pmd_event()).unwrap();
    for r in &one_of_each()[..10] {
        w.write(r).unwrap();
    }
    w.flush().unwrap();
    let end = End {
        ts_ns: 9,
        events: 2,
        dropped: 3,
        duration_ns: 4,
    };
    w.finish(end).unwrap();

    let mut reader = RecordReader::open(&path).unwrap();
    assert_eq!(reader.metadata(), &metadata());
    assert_eq!(reader.version(), FORMAT_VERSION);
    let records: Vec<Record> = reader.by_ref().map(Result::unwrap).collect();
    let mut expected = vec![Record::Event(scan_pmd_event().into())];
    expected.extend_from_slice(&one_of_each()[..10]);
    expected.push(Record::End(end));
    assert_eq!(records, expected);
    assert_eq!(reader.end(), Some(&end));
    assert_eq!((reader.cut(), reader.skipped()), (None, 0));
    let Record::Event(raw) = &records[0] else {
        panic!("not an event")
    };
    let event = reader.metadata().decoder().decode(raw).unwrap();
    assert_eq!((event.tgid, event.ts_ns), (4711, 1_000_500));
}

#[test]
fn truncation_at_every_byte_reads_a_prefix_and_names_the_cut() {
    let bytes = recording_bytes();
    let (all, cut, ends) = read_all(&bytes).unwrap();
    assert_eq!((all, cut), (one_of_each(), None));
    let header_len = ends[0] as usize;
    for len in 0..bytes.len() {
        let prefix = &bytes[..len];
        if len < header_len {
            let err = read_all(prefix).unwrap_err();
            match (len, err) {
                (0, HeaderError::Empty) => {}
                (_, HeaderError::Truncated { len: at }) => assert_eq!(at, len as u64),
                (_, err) => panic!("cut at {len}: {err}"),
            }
            continue;
        }
        let (records, cut, _) = read_all(prefix).unwrap();
        let complete = ends.iter().filter(|&&e| e as usize <= len).count() - 1;
        assert_eq!(records, one_of_each()[..complete], "cut at {len}");
        let cut = cut.unwrap_or_else(|| panic!("no cut reported for a cut at {len}"));
        assert_eq!(cut.offset, ends[complete], "cut at {len}");
        let expected = if ends.contains(&(len as u64)) {
            CutReason::NoEnd
        } else {
            CutReason::Truncated
        };
        assert_eq!(cut.reason, expected, "cut at {len}");
    }
}

#[test]
fn a_flipped_bit_anywhere_gives_an_error_or_the_records_before_it() {
    let bytes = recording_bytes();
    let (_, _, ends) = read_all(&bytes).unwrap();
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut flipped = bytes.clone();
            flipped[i] ^= 1 << bit;
            let Ok((records, cut, _)) = read_all(&flipped) else {
                assert!(i < ends[0] as usize, "header error for a flip at {i}");
                continue;
            };
            assert!(
                i >= ends[0] as usize,
                "flip at {i} in the header went unnoticed"
            );
            // The record holding byte i, and where it starts.
            let hit = ends.iter().filter(|&&e| e as usize <= i).count() - 1;
            assert_eq!(records, one_of_each()[..hit], "flip at {i}.{bit}");
            let cut = cut.unwrap_or_else(|| panic!("flip at {i}.{bit} not reported"));
            assert_eq!(cut.offset, ends[hit], "flip at {i}.{bit}: {cut}");
        }
    }
}

#[test]
fn foreign_empty_and_newer_files_are_clear_errors() {
    let dir = TempDir::new("foreign");
    let elf = dir.join("a.out");
    std::fs::write(&elf, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0").unwrap();
    let err = RecordReader::open(&elf).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: not a pagewatch recording: it starts with \"\\x7fELF\\x02\\x01\\x01\\x00\"",
            elf.display()
        )
    );
    let empty = dir.join("empty");
    std::fs::write(&empty, b"").unwrap();
    let err = RecordReader::open(&empty).unwrap_err();
    assert!(
        matches!(
            err,
            RecordError::Header {
                source: HeaderError::Empty,
                ..
            }
        ),
        "{err}"
    );
    let missing = RecordReader::open(&dir.join("missing")).unwrap_err();
    assert!(matches!(missing, RecordError::Open { .. }), "{missing}");

    let mut newer = recording_bytes();
    newer[8] = 2;
    let err = RecordReader::new(&newer[..]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "recording format version 2 is newer than this pagewatch supports (1); use a newer pagewatch"
    );
    newer[8] = 0;
    assert!(matches!(
        RecordReader::new(&newer[..]),
        Err(HeaderError::BadVersion(0))
    ));
}

/// Frames a record by hand, as a newer or buggy writer might.
fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_le_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[4..]);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out
}

#[test]
fn unknown_kinds_are_skipped_and_counted_absurd_lengths_are_cut() {
    let bytes = recording_bytes();
    let (_, _, ends) = read_all(&bytes).unwrap();
    let at = ends[1] as usize; // after the first record
    let mut newer = bytes[..at].to_vec();
    newer.extend(frame(42, b"a record kind from the future"));
    newer.extend_from_slice(&bytes[at..]);
    let mut reader = RecordReader::new(&newer[..]).unwrap();
    let records: Vec<Record> = reader.by_ref().map(Result::unwrap).collect();
    assert_eq!(records, one_of_each());
    assert_eq!(reader.skipped(), 1);

    let mut absurd = bytes[..at].to_vec();
    absurd.extend_from_slice(&u32::MAX.to_le_bytes());
    absurd.extend_from_slice(&[1; 64]);
    let (records, cut, _) = read_all(&absurd).unwrap();
    assert_eq!(records, one_of_each()[..1]);
    let cut = cut.unwrap();
    assert_eq!(cut.reason, CutReason::LengthAbsurd { len: u32::MAX });
    assert_eq!(
        cut.to_string(),
        format!("recording corrupt: record length 4294967295 absurd at byte {at}")
    );

    let mut malformed = bytes[..at].to_vec();
    malformed.extend(frame(7, b"short"));
    let (_, cut, _) = read_all(&malformed).unwrap();
    assert_eq!(cut.unwrap().reason, CutReason::Malformed { kind: 7 });
}

#[test]
fn an_oversized_record_is_refused_and_the_recording_stays_valid() {
    let dir = TempDir::new("too-large");
    let path = dir.join("r.pwrec");
    let mut w = RecordWriter::create(&path, &metadata()).unwrap();
    let huge = Record::Process(Process {
        ts_ns: 0,
        pid: 1,
        start_ticks: 0,
        ppid: 0,
        comm: "x".into(),
        cmdline: vec!["y".repeat(MAX_RECORD_LEN)],
    });
    let err = w.write(&huge).unwrap_err();
    assert!(
        matches!(err, RecordError::TooLarge { kind: 4, .. }),
        "{err}"
    );
    w.write(&one_of_each()[1]).unwrap();
    w.finish(End {
        ts_ns: 0,
        events: 0,
        dropped: 0,
        duration_ns: 0,
    })
    .unwrap();
    let records: Vec<_> = RecordReader::open(&path).unwrap().collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0], Ok(one_of_each()[1].clone()));
}

#[test]
fn the_writer_never_overwrites_and_never_follows_a_symlink() {
    let dir = TempDir::new("no-clobber");
    let existing = dir.join("existing");
    std::fs::write(&existing, b"keep me").unwrap();
    let err = RecordWriter::create(&existing, &metadata()).unwrap_err();
    assert!(matches!(err, RecordError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let target = dir.join("target");
    std::fs::write(&target, b"secret").unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let dangling = dir.join("dangling");
    let dangling_target = dir.join("nowhere");
    std::os::unix::fs::symlink(&dangling_target, &dangling).unwrap();
    for path in [&link, &dangling] {
        let err = RecordWriter::create(path, &metadata()).unwrap_err();
        assert!(matches!(err, RecordError::Symlink { .. }), "{err}");
        let err = RecordWriter::replace(path, &metadata()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to write {}: it is a symbolic link",
                path.display()
            )
        );
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"secret");
    assert!(!dangling_target.exists());
    // --force removes only a regular file (never a device or a directory).
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = RecordWriter::replace(&sub, &metadata()).unwrap_err();
    assert!(matches!(err, RecordError::NotRegular { .. }), "{err}");
    assert!(sub.is_dir());

    // --force replaces a regular file, with a private mode.
    let w = RecordWriter::replace(&existing, &metadata()).unwrap();
    w.finish(End {
        ts_ns: 0,
        events: 0,
        dropped: 0,
        duration_ns: 0,
    })
    .unwrap();
    let reader = RecordReader::open(&existing).unwrap();
    assert_eq!(reader.metadata(), &metadata());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let nothing_there = dir.join("new");
    RecordWriter::replace(&nothing_there, &metadata()).unwrap();
    assert!(nothing_there.exists());
}

/// The fixture holds the kinds v1 started with (1-7); kinds added since
/// (8 SwapReturns, 9 HugetlbPool, 10 VmaThp, 11 Balloon) are covered by the round trips above. Regenerate with
/// `PAGEWATCH_BLESS=1 cargo test -p pagewatch record::` only when the
/// format version changes.
#[test]
fn the_v1_layout_matches_the_captured_recording() {
    let fixture = test_data("record/v1.pwrec");
    let first_kinds: Vec<Record> = one_of_each()
        .into_iter()
        .filter(|r| r.kind() <= 7)
        .collect();
    let bytes = recording_of(&first_kinds);
    if std::env::var_os("PAGEWATCH_BLESS").is_some() {
        std::fs::write(&fixture, &bytes).unwrap();
    }
    let captured = std::fs::read(&fixture).unwrap();
    assert!(captured == bytes, "the v1 byte layout changed");
    let (records, cut, _) = read_all(&captured).unwrap();
    assert_eq!((records, cut), (first_kinds, None));
}

#[test]
fn a_recorder_killed_after_a_flush_leaves_everything_flushed() {
    let dir = TempDir::new("killed");
    let header_only = dir.join("header-only");
    // mem::forget stands for SIGKILL: no destructor, no final flush.
    std::mem::forget(RecordWriter::create(&header_only, &metadata()).unwrap());
    let (records, cut, ends) = read_all(&std::fs::read(&header_only).unwrap()).unwrap();
    assert_eq!(records, []);
    assert_eq!(cut.map(|c| c.reason), Some(CutReason::NoEnd));

    let path = dir.join("killed");
    let mut w = RecordWriter::create(&path, &metadata()).unwrap();
    for r in &one_of_each()[..3] {
        w.write(r).unwrap();
    }
    w.flush().unwrap();
    w.write(&one_of_each()[3]).unwrap(); // buffered, never flushed
    std::mem::forget(w);
    let bytes = std::fs::read(&path).unwrap();
    let (records, cut, _) = read_all(&bytes).unwrap();
    assert_eq!(records, one_of_each()[..3]);
    let cut = cut.unwrap();
    assert_eq!(
        (cut.offset, cut.reason),
        (bytes.len() as u64, CutReason::NoEnd)
    );
    assert!(cut.offset > ends[0]);
    assert_eq!(
        cut.to_string(),
        format!(
            "recording stops at byte {} without an End record (the recorder was killed?)",
            bytes.len()
        )
    );
}
