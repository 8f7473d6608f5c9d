//! Fuzzes the recording reader with arbitrary bytes: the header, every
//! record, and the decoding of event records with the layouts the
//! metadata carries must give records or clear errors, never a panic, a
//! hang, or an allocation driven by a length read from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagewatch::record::{Record, RecordReader};

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = RecordReader::new(data) else {
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
    assert!(reader.offset() <= data.len() as u64);
});
