//! The recording file format, written by `pagewatch record` and read by
//! `pagewatch report`: streaming, append-only, versioned and
//! self-describing, in the manner of perf.data and retis' event files.
//!
//! A recording is a header followed by records, all integers
//! little-endian:
//!
//! ```text
//! header:  magic b"PGWATCH\0" | version u16 | metadata length u32
//!          | metadata (JSON, see Metadata) | CRC32 of version..metadata u32
//! record:  payload length u32 | kind u8 | payload | CRC32 of kind+payload u32
//! ```
//!
//! Kinds are fixed forever (1 Event, 2 Interval, 3 Transition, 4 Process,
//! 5 Sample, 6 Note, 7 End, 8 SwapReturns, 9 HugetlbPool, 10 VmaThp, 11 Balloon); a reader skips kinds it does not know, so an
//! older pagewatch reads the records it knows from a newer one's file. The
//! format version changes only when a reader could no longer do that.
//! A recording cut short (SIGKILL, a full disk) reads back up to its last
//! intact record, and the reader says at which byte and why it stopped.

mod error;
mod kinds;
mod metadata;
mod reader;
mod writer;

pub use crate::note::{Note, Severity};
pub use error::{Cut, CutReason, HeaderError, RecordError};
pub use kinds::{End, Interval, IntervalSnapshot, Process, Record, Sample};
pub use metadata::{FieldMeta, HookMeta, Metadata, SkippedMeta};
pub use reader::RecordReader;
pub use writer::RecordWriter;

/// The first bytes of every recording.
pub const MAGIC: [u8; 8] = *b"PGWATCH\0";

/// The format version this pagewatch writes, and the newest it reads.
pub const FORMAT_VERSION: u16 = 1;

/// The largest record payload, in bytes: a reader treats a larger length
/// as corruption, a writer refuses to write one.
pub const MAX_RECORD_LEN: usize = 1 << 20;

/// The largest metadata block a reader accepts.
pub const MAX_METADATA_LEN: usize = 16 << 20;

#[cfg(test)]
mod tests;
