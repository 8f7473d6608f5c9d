//! Fuzzes the recording reader with arbitrary bytes: the header, every
//! record, and the decoding of event records with the layouts the
//! metadata carries must give records or clear errors, never a panic, a
//! hang, or an allocation driven by a length read from the input.
//!
//! Random bytes rarely carry a matching CRC32, which would keep the fuzzer
//! at the framing layer; so each input is read twice: as it is, and with
//! every CRC its own lengths point at rewritten to match, which lets
//! mutations reach the metadata JSON and the payload decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagewatch::record::{Record, RecordReader};

fuzz_target!(|data: &[u8]| {
    read(data);
    let mut fixed = data.to_vec();
    fix_crcs(&mut fixed);
    read(&fixed);
});

/// Reads `input` to its end, decoding every event.
fn read(input: &[u8]) {
    let Ok(mut reader) = RecordReader::new(input) else {
        return;
    };
    let metadata = reader.metadata().clone();
    let decoder = metadata.decoder();
    let _ = metadata.start_time();
    for record in reader.by_ref() {
        match record {
            Ok(Record::Event(raw)) => {
                if let Ok(event) = decoder.decode(&raw) {
                    let _ = metadata.wall_time(event.ts_ns);
                }
            }
            Ok(_) => {}
            Err(cut) => {
                let _ = cut.to_string();
            }
        }
    }
    assert!(reader.offset() <= input.len() as u64);
}

/// Rewrites the header CRC and each record's CRC to match their contents.
fn fix_crcs(b: &mut [u8]) {
    let u32_at = |b: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let Some(len) = u32_at(b, 10) else {
        return;
    };
    let mut at = 14 + len;
    if at + 4 > b.len() {
        return;
    }
    let crc = crc32fast::hash(&b[8..at]);
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    at += 4;
    while let Some(len) = u32_at(b, at) {
        let end = at + 5 + len;
        if end + 4 > b.len() {
            return;
        }
        let crc = crc32fast::hash(&b[at + 4..end]);
        b[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        at = end + 4;
    }
}
