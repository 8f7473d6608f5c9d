//! Reading a recording back: check the header (a foreign file, a newer
//! format or a damaged header is a clear error), then iterate records up
//! to the End record or to the first record that is not intact, which is
//! reported as a [`Cut`] with its byte offset. No length read from the
//! file drives an allocation: lengths are capped and payloads are read
//! through `Read::take`, so memory follows the bytes actually present.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

use super::{
    Cut, CutReason, End, FORMAT_VERSION, HeaderError, MAGIC, MAX_METADATA_LEN, MAX_RECORD_LEN,
    Metadata, Record, RecordError, kinds::Undecodable,
};

/// Magic, version and metadata length.
const FIXED_HEADER: usize = MAGIC.len() + 2 + 4;
/// Length and kind in front of a payload.
const FRAME_HEAD: usize = 5;
const CRC: usize = 4;

/// A recording being read. Iterating yields each intact record, then at
/// most one `Err(Cut)` saying where and why the recording stops early;
/// after an End record it yields nothing more.
#[derive(Debug)]
pub struct RecordReader<R> {
    inner: R,
    metadata: Metadata,
    version: u16,
    /// Bytes read and found intact so far.
    offset: u64,
    end: Option<End>,
    cut: Option<Cut>,
    skipped: u64,
}

impl RecordReader<BufReader<File>> {
    /// Opens the recording at `path` and reads its header.
    pub fn open(path: &Path) -> Result<Self, RecordError> {
        let file = File::open(path).map_err(|source| RecordError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::new(BufReader::new(file)).map_err(|source| RecordError::Header {
            path: path.to_owned(),
            source,
        })
    }
}

impl<R: Read> RecordReader<R> {
    /// Reads the header from `inner` (a file, a byte slice...).
    pub fn new(mut inner: R) -> Result<Self, HeaderError> {
        let mut fixed = [0u8; FIXED_HEADER];
        let n = read_full(&mut inner, &mut fixed).map_err(HeaderError::Io)?;
        if n == 0 {
            return Err(HeaderError::Empty);
        }
        let magic = &fixed[..n.min(MAGIC.len())];
        if magic != &MAGIC[..magic.len()] {
            return Err(HeaderError::Foreign {
                found: magic.to_vec(),
            });
        }
        let truncated = |len: usize| HeaderError::Truncated { len: len as u64 };
        if n < MAGIC.len() + 2 {
            return Err(truncated(n));
        }
        let version = u16::from_le_bytes([fixed[8], fixed[9]]);
        if version > FORMAT_VERSION {
            return Err(HeaderError::NewerVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version == 0 {
            return Err(HeaderError::BadVersion(version));
        }
        if n < FIXED_HEADER {
            return Err(truncated(n));
        }
        let len = u32::from_le_bytes([fixed[10], fixed[11], fixed[12], fixed[13]]) as usize;
        if len > MAX_METADATA_LEN {
            return Err(HeaderError::MetadataTooLarge {
                len: len as u64,
                max: MAX_METADATA_LEN as u64,
            });
        }
        let mut rest = Vec::new();
        (&mut inner)
            .take((len + CRC) as u64)
            .read_to_end(&mut rest)
            .map_err(HeaderError::Io)?;
        if rest.len() < len + CRC {
            return Err(truncated(FIXED_HEADER + rest.len()));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&fixed[MAGIC.len()..]);
        crc.update(&rest[..len]);
        if crc.finalize().to_le_bytes() != rest[len..] {
            return Err(HeaderError::Crc);
        }
        let metadata = serde_json::from_slice(&rest[..len]).map_err(HeaderError::Metadata)?;
        Ok(Self {
            inner,
            metadata,
            version,
            offset: (FIXED_HEADER + len + CRC) as u64,
            end: None,
            cut: None,
            skipped: 0,
        })
    }

    /// The recording's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The format version the recording was written with.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Bytes read and found intact so far (header included).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The End record, once read: the recording finished cleanly.
    pub fn end(&self) -> Option<&End> {
        self.end.as_ref()
    }

    /// Where the recording stopped early, once iteration reached it.
    pub fn cut(&self) -> Option<Cut> {
        self.cut
    }

    /// Intact records skipped because a newer pagewatch wrote them (a kind
    /// or a value this one does not know).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next intact record this pagewatch knows, or why there is none.
    fn read_record(&mut self) -> Result<Record, CutReason> {
        loop {
            let mut head = [0u8; FRAME_HEAD];
            let n = read_full(&mut self.inner, &mut head).map_err(|e| CutReason::Io(e.kind()))?;
            match n {
                0 => return Err(CutReason::NoEnd),
                FRAME_HEAD => {}
                _ => return Err(CutReason::Truncated),
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let kind = head[4];
            if len as usize > MAX_RECORD_LEN {
                return Err(CutReason::LengthAbsurd { len });
            }
            let len = len as usize;
            let mut payload = Vec::new();
            (&mut self.inner)
                .take((len + CRC) as u64)
                .read_to_end(&mut payload)
                .map_err(|e| CutReason::Io(e.kind()))?;
            if payload.len() < len + CRC {
                return Err(CutReason::Truncated);
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&[kind]);
            crc.update(&payload[..len]);
            if crc.finalize().to_le_bytes() != payload[len..] {
                return Err(CutReason::CrcMismatch);
            }
            payload.truncate(len);
            match Record::decode(kind, payload) {
                Ok(record) => {
                    self.offset += (FRAME_HEAD + len + CRC) as u64;
                    return Ok(record);
                }
                Err(Undecodable::Newer) => {
                    self.offset += (FRAME_HEAD + len + CRC) as u64;
                    self.skipped += 1;
                }
                Err(Undecodable::Malformed) => return Err(CutReason::Malformed { kind }),
            }
        }
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Record, Cut>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.end.is_some() || self.cut.is_some() {
            return None;
        }
        match self.read_record() {
            Ok(record) => {
                if let Record::End(end) = record {
                    self.end = Some(end);
                }
                Some(Ok(record))
            }
            Err(reason) => {
                let cut = Cut {
                    offset: self.offset,
                    reason,
                };
                self.cut = Some(cut);
                Some(Err(cut))
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
