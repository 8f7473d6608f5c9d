//! Where the snapshot reads from: a [`ProcRoot`] (normally `/proc` and
//! `/sys`, or a captured tree or a guest's files) and a batched positional
//! reader of u64 tables (pagemap, kpageflags, kpagecount, kpagecgroup).

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::error::{Result, SnapshotError};

/// Entries per pread: 64 Ki entries = 512 KiB.
pub const BATCH_ENTRIES: usize = 64 * 1024;

pub use crate::proc::ProcRoot;

/// Reads a small text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| SnapshotError::read(path, e))
}

/// A table of u64 entries indexed by page number (pagemap by virtual page,
/// kpage* by PFN), read with large preads.
#[derive(Debug)]
pub struct U64Table {
    file: File,
    path: PathBuf,
    /// ANDed into every entry read (all ones: entries as the kernel wrote
    /// them); clears a bit the kernel is known to set wrongly.
    mask: u64,
}

impl U64Table {
    /// Open a table file read-only.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        Ok(U64Table {
            file: File::open(&path)?,
            path,
            mask: !0,
        })
    }

    /// Clears the bits of `bits` in every entry read from now on.
    pub fn clear_bits(&mut self, bits: u64) {
        self.mask &= !bits;
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file (for ioctls such as PAGEMAP_SCAN).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Read entries `index..index + out.len()` into `out`, in batches of
    /// [`BATCH_ENTRIES`]. Returns how many entries were read: fewer at end of
    /// file (past max_pfn) or when a process exited (then the rest is zero).
    pub fn read_into(&self, index: u64, out: &mut [u64]) -> io::Result<usize> {
        let mut done = 0;
        while done < out.len() {
            let n = (out.len() - done).min(BATCH_ENTRIES);
            let chunk = &mut out[done..done + n];
            // SAFETY: u64 has no invalid bit patterns and the byte view covers
            // exactly `chunk`.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(chunk.as_mut_ptr().cast::<u8>(), n * 8) };
            let got = match self.file.read_at(bytes, (index + done as u64) * 8) {
                Ok(g) => g,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) && done > 0 => 0,
                Err(e) => return Err(e),
            };
            done += got / 8;
            if self.mask != !0 {
                chunk[..got / 8].iter_mut().for_each(|e| *e &= self.mask);
            }
            if got < n * 8 {
                out[done..].fill(0);
                break;
            }
        }
        Ok(done)
    }

    /// Read `count` entries starting at `index`.
    pub fn read(&self, index: u64, count: usize) -> io::Result<Vec<u64>> {
        let mut v = vec![0u64; count];
        let n = self.read_into(index, &mut v)?;
        v.truncate(n);
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_u64_table_batches() {
        let dir = std::env::temp_dir().join(format!("pw-u64-{}", std::process::id()));
        let data: Vec<u8> = (0..1000u64).flat_map(|v| v.to_ne_bytes()).collect();
        std::fs::write(&dir, &data).unwrap();
        let t = U64Table::open(&dir).unwrap();
        assert_eq!(t.read(10, 3).unwrap(), vec![10, 11, 12]);
        assert_eq!(t.read(998, 5).unwrap(), vec![998, 999]);
        let mut t = t;
        t.clear_bits(1);
        assert_eq!(t.read(10, 3).unwrap(), vec![10, 10, 12]);
        std::fs::remove_file(&dir).unwrap();
    }
}
