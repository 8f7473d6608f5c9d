//! Writing a recording: create the file without ever following a symlink
//! or clobbering an existing file, write the header, then append framed
//! records through a buffer. A record is framed (length, kind, payload,
//! CRC) before any of it is written, so a reader sees each record complete
//! or not at all, however the writer dies.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use bytes::{BufMut, BytesMut};

use super::{
    End, FORMAT_VERSION, MAGIC, MAX_RECORD_LEN, Metadata, Record, RecordError, kinds::EVENT,
};

/// Buffer size: large enough that events are written in big batches.
const BUFFER: usize = 256 * 1024;

/// An open recording being appended to.
#[derive(Debug)]
pub struct RecordWriter {
    out: BufWriter<File>,
    path: PathBuf,
    /// The record being framed.
    frame: BytesMut,
    /// Bytes handed to the buffer so far (header included).
    len: u64,
}

impl RecordWriter {
    /// Creates a new recording at `path` and writes its header. Fails if
    /// anything exists at `path`, a symbolic link included.
    pub fn create(path: &Path, metadata: &Metadata) -> Result<Self, RecordError> {
        Self::start(Self::create_file(path)?, path.to_owned(), metadata)
    }

    /// Like [`Self::create`], but first removes a regular file at `path`
    /// (see [`Self::replace_file`]).
    pub fn replace(path: &Path, metadata: &Metadata) -> Result<Self, RecordError> {
        Self::start(Self::replace_file(path)?, path.to_owned(), metadata)
    }

    /// Creates the empty file of a new recording at `path` with
    /// O_CREAT|O_EXCL|O_NOFOLLOW (mode 0600), writing nothing: a recorder
    /// opens its output before spending seconds loading its hooks, and
    /// [`Self::start`]s the recording once it knows its metadata. Fails if
    /// anything exists at `path`, a symbolic link included.
    pub fn create_file(path: &Path) -> Result<File, RecordError> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| match path.symlink_metadata() {
                Ok(m) if m.file_type().is_symlink() => RecordError::Symlink {
                    path: path.to_owned(),
                },
                _ if source.kind() == std::io::ErrorKind::AlreadyExists => RecordError::Exists {
                    path: path.to_owned(),
                },
                _ => RecordError::Create {
                    path: path.to_owned(),
                    source,
                },
            })
    }

    /// Like [`Self::create_file`], but first removes a regular file at
    /// `path` (`--force`). Anything else there (a symbolic link, a device,
    /// a directory) is refused, and the new file is still created
    /// exclusively, so a link planted between the removal and the creation
    /// is not followed either.
    pub fn replace_file(path: &Path) -> Result<File, RecordError> {
        match path.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(RecordError::Symlink {
                    path: path.to_owned(),
                });
            }
            Ok(m) if !m.file_type().is_file() => {
                return Err(RecordError::NotRegular {
                    path: path.to_owned(),
                });
            }
            Ok(_) => std::fs::remove_file(path).map_err(|source| RecordError::Create {
                path: path.to_owned(),
                source,
            })?,
            Err(_) => {}
        }
        Self::create_file(path)
    }

    /// Starts a recording in `file` (new and empty, from
    /// [`Self::create_file`]), named `path` in errors: writes the header.
    pub fn start(file: File, path: PathBuf, metadata: &Metadata) -> Result<Self, RecordError> {
        let json = serde_json::to_vec(metadata).map_err(RecordError::Metadata)?;
        let mut header = BytesMut::with_capacity(json.len() + 18);
        header.put_slice(&MAGIC);
        header.put_u16_le(FORMAT_VERSION);
        header.put_u32_le(u32::try_from(json.len()).unwrap_or(u32::MAX));
        header.put_slice(&json);
        let crc = crc32fast::hash(&header[MAGIC.len()..]);
        header.put_u32_le(crc);
        let mut writer = Self {
            out: BufWriter::with_capacity(BUFFER, file),
            path,
            frame: BytesMut::with_capacity(4096),
            len: 0,
        };
        // Written at once: a recorder killed before its first flush leaves
        // a readable (empty) recording, and a full disk shows up now.
        writer.put(&header)?;
        writer.flush()?;
        Ok(writer)
    }

    /// Appends `record`.
    pub fn write(&mut self, record: &Record) -> Result<(), RecordError> {
        self.frame.clear();
        self.frame.put_u32_le(0); // length, filled in below
        self.frame.put_u8(record.kind());
        record.encode(&mut self.frame);
        self.seal()
    }

    /// Appends an event record holding the ring-buffer record `raw`
    /// verbatim: the same as writing [`Record::Event`], without copying
    /// `raw` into a `Bytes` first (this is the hot path).
    pub fn write_event(&mut self, raw: &[u8]) -> Result<(), RecordError> {
        self.frame.clear();
        self.frame.put_u32_le(0);
        self.frame.put_u8(EVENT);
        self.frame.put_slice(raw);
        self.seal()
    }

    /// Fills in the length and CRC of the framed record and writes it.
    fn seal(&mut self) -> Result<(), RecordError> {
        let payload_len = self.frame.len() - 5;
        if payload_len > MAX_RECORD_LEN {
            return Err(RecordError::TooLarge {
                kind: self.frame[4],
                len: payload_len,
                max: MAX_RECORD_LEN,
            });
        }
        // Checked against MAX_RECORD_LEN just above.
        let len = payload_len as u32;
        self.frame[..4].copy_from_slice(&len.to_le_bytes());
        let crc = crc32fast::hash(&self.frame[4..]);
        self.frame.put_u32_le(crc);
        let frame = std::mem::take(&mut self.frame);
        let result = self.put(&frame);
        self.frame = frame;
        result
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        self.out.write_all(bytes).map_err(|e| self.error(e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Hands buffered records to the kernel, so they survive the process
    /// being killed (call it once per interval).
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(|e| self.error(e))
    }

    /// Writes the End record, flushes, and syncs the file to disk. Returns
    /// the recording's size in bytes.
    pub fn finish(mut self, end: End) -> Result<u64, RecordError> {
        self.write(&Record::End(end))?;
        self.flush()?;
        self.out.get_ref().sync_all().map_err(|e| self.error(e))?;
        Ok(self.len)
    }

    /// Where the recording is being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: std::io::Error) -> RecordError {
        write_error(&self.path, source)
    }
}

/// Names a full disk as such; other write errors keep their cause.
fn write_error(path: &Path, source: std::io::Error) -> RecordError {
    match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => RecordError::DiskFull {
            path: path.to_owned(),
        },
        _ => RecordError::Write {
            path: path.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_reported_as_disk_full_naming_the_path() {
        let path = Path::new("/dev/full");
        if !path.exists() {
            eprintln!("skipping test - no /dev/full to fill");
            return;
        }
        let file = OpenOptions::new().write(true).open(path).unwrap();
        let meta = super::super::tests::metadata();
        let err = RecordWriter::start(file, path.to_owned(), &meta).unwrap_err();
        assert!(matches!(err, RecordError::DiskFull { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "disk full writing /dev/full: the recording ends at its last complete record"
        );
        let other = write_error(path, std::io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, RecordError::Write { .. }), "{other:?}");
    }
}
