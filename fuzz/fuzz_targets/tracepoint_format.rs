//! Fuzzes the tracefs `format` parser with arbitrary text (bytes made
//! UTF-8 lossily, as a reader of a damaged or hostile tracefs would see
//! them): it must parse or give a reason, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pagewatch::tracefs::EventFormat;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(format) = EventFormat::parse(&text) {
        for (field, table) in &format.symbols {
            for (value, _) in table {
                let _ = format.symbol(field, *value);
            }
        }
        for field in &format.fields {
            let _ = format.field(&field.name);
        }
    }
});
