//! The PROCMAP_QUERY ioctl (Linux 6.11+, include/uapi/linux/fs.h) on an
//! open /proc/PID/maps: one VMA per ioctl, as binary fields, instead of
//! the kernel formatting every line of the maps text and us parsing it.
//!
//! It walks the VMAs of the mm only: the x86-64 gate VMA (`[vsyscall]`),
//! which maps and smaps list last, is not one of them, so
//! [`super::maps::read_vmas`] adds it back (pagemap has nothing for it).

use std::{fs::File, io, os::fd::AsRawFd};

use super::vma::Vma;

/// `struct procmap_query` (104 bytes).
#[repr(C)]
#[derive(Debug, Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// _IOWR('f', 17, struct procmap_query)
const PROCMAP_QUERY: u64 =
    (3 << 30) | ((size_of::<ProcmapQuery>() as u64) << 16) | (0x66 << 8) | 17;
const VMA_READABLE: u64 = 0x01;
const VMA_WRITABLE: u64 = 0x02;
const VMA_EXECUTABLE: u64 = 0x04;
const VMA_SHARED: u64 = 0x08;
/// Return the VMA covering `query_addr`, or the next one above it.
const COVERING_OR_NEXT_VMA: u64 = 0x10;

/// Every VMA of the process whose maps file is `maps`, in address order.
/// Fails with ENOTTY on kernels without PROCMAP_QUERY (< 6.11).
pub fn query_vmas(maps: &File) -> io::Result<Vec<Vma>> {
    let mut out = Vec::new();
    let mut name = vec![0u8; libc::PATH_MAX as usize + 64];
    let mut addr = 0;
    loop {
        let mut q = ProcmapQuery {
            size: size_of::<ProcmapQuery>() as u64,
            query_flags: COVERING_OR_NEXT_VMA,
            query_addr: addr,
            vma_name_size: name.len() as u32,
            vma_name_addr: name.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: q is a valid procmap_query whose name buffer has
        // vma_name_size writable bytes that outlive the call; no build id
        // is asked for.
        if unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY as _, &mut q) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(out);
            }
            return Err(e);
        }
        // vma_name_size counts the terminating NUL; 0 means no name.
        let len = (q.vma_name_size as usize).saturating_sub(1).min(name.len());
        let bit = |b: u64, c: char| if q.vma_flags & b != 0 { c } else { '-' };
        out.push(Vma {
            start: q.vma_start,
            end: q.vma_end,
            perms: [
                bit(VMA_READABLE, 'r'),
                bit(VMA_WRITABLE, 'w'),
                bit(VMA_EXECUTABLE, 'x'),
                if q.vma_flags & VMA_SHARED != 0 {
                    's'
                } else {
                    'p'
                },
            ]
            .iter()
            .collect(),
            offset: q.vma_offset,
            dev: format!("{:02x}:{:02x}", q.dev_major, q.dev_minor),
            inode: q.inode,
            name: String::from_utf8_lossy(&name[..len]).into_owned(),
        });
        if q.vma_end <= addr {
            return Ok(out);
        }
        addr = q.vma_end;
    }
}
