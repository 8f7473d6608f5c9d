//! What can go wrong writing or reading a recording: [`RecordError`] for
//! files (each naming the path), [`HeaderError`] for a header that is not a
//! readable pagewatch header, and [`Cut`] for where a readable recording
//! stops early. A cut is not an error: everything before it is good.

use std::{fmt, path::PathBuf};

/// Errors from [`super::RecordWriter`] and [`super::RecordReader::open`].
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The output path exists and overwriting was not asked for.
    #[error("refusing to overwrite {path}: it already exists")]
    Exists { path: PathBuf },
    /// The output path is a symbolic link, which is never followed (someone
    /// may have planted it in a shared directory).
    #[error("refusing to write {path}: it is a symbolic link")]
    Symlink { path: PathBuf },
    /// `--force` replaces only a regular file (never a device, say).
    #[error("refusing to replace {path}: it is not a regular file")]
    NotRegular { path: PathBuf },
    /// The output file could not be created (or the old one removed).
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file system is full (ENOSPC or EDQUOT): the recording holds the
    /// records written before this one.
    #[error("disk full writing {path}: the recording ends at its last complete record")]
    DiskFull { path: PathBuf },
    /// Writing failed for another reason.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A record is larger than [`super::MAX_RECORD_LEN`] (a huge command
    /// line, say); nothing was written.
    #[error("record of kind {kind} is {len} bytes, more than the {max} a record may hold")]
    TooLarge { kind: u8, len: usize, max: usize },
    /// The metadata could not be turned into JSON.
    #[error("cannot encode the recording metadata: {0}")]
    Metadata(serde_json::Error),
    /// The recording could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a readable recording.
    #[error("{path}: {source}")]
    Header { path: PathBuf, source: HeaderError },
}

/// Why a recording's header cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Zero bytes: the recording was created but nothing was ever written.
    #[error("the file is empty, not a pagewatch recording")]
    Empty,
    /// The first bytes are not pagewatch's magic.
    #[error("not a pagewatch recording: it starts with {}", escape(found))]
    Foreign { found: Vec<u8> },
    /// Written by a newer pagewatch with a format this one cannot read.
    #[error(
        "recording format version {found} is newer than this pagewatch supports ({supported}); use a newer pagewatch"
    )]
    NewerVersion { found: u16, supported: u16 },
    /// A version no pagewatch ever wrote (0): the header is damaged.
    #[error("corrupt header: format version {0} does not exist")]
    BadVersion(u16),
    /// The file ends inside the header.
    #[error("corrupt header: the file ends at byte {len}, inside the header")]
    Truncated { len: u64 },
    /// The metadata length field is beyond any real header.
    #[error("corrupt header: metadata length {len} is absurd (at most {max})")]
    MetadataTooLarge { len: u64, max: u64 },
    /// The header's checksum does not match its contents.
    #[error("corrupt header: CRC mismatch over the metadata")]
    Crc,
    /// The checksum matched but the metadata is not pagewatch's JSON.
    #[error("corrupt header: metadata does not parse: {0}")]
    Metadata(serde_json::Error),
    /// Reading failed.
    #[error("read error in the header: {0}")]
    Io(std::io::Error),
}

/// Where and why a recording stops before a clean End record. Everything
/// before `offset` was read back intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// Byte offset in the file of the first record that is not intact (or
    /// of the end of the file when it simply stops without an End record).
    pub offset: u64,
    pub reason: CutReason,
}

/// Why the reader stopped at a [`Cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// The file ends after a complete record, with no End record: the
    /// recorder was killed (SIGKILL, crash, power loss) between writes.
    NoEnd,
    /// The file ends inside a record (killed mid-write, or disk full).
    Truncated,
    /// The record's CRC does not match its contents.
    CrcMismatch,
    /// The length field is larger than any record may be.
    LengthAbsurd { len: u32 },
    /// The CRC matched but the payload does not decode (a writer bug).
    Malformed { kind: u8 },
    /// Reading failed.
    Io(std::io::ErrorKind),
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
        match self.reason {
            CutReason::NoEnd => write!(
                f,
                "recording stops at byte {at} without an End record (the recorder was killed?)"
            ),
            CutReason::Truncated => write!(f, "recording truncated at byte {at}"),
            CutReason::CrcMismatch => write!(f, "recording corrupt: CRC mismatch at byte {at}"),
            CutReason::LengthAbsurd { len } => {
                write!(
                    f,
                    "recording corrupt: record length {len} absurd at byte {at}"
                )
            }
            CutReason::Malformed { kind } => {
                write!(
                    f,
                    "recording corrupt: malformed record of kind {kind} at byte {at}"
                )
            }
            CutReason::Io(kind) => write!(f, "read error at byte {at}: {kind}"),
        }
    }
}

/// Shows bytes as text where printable, `\xNN` otherwise.
fn escape(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}
