//! The PAGEMAP_SCAN ioctl (Linux 6.7+, include/uapi/linux/fs.h) on an open
//! /proc/PID/pagemap: returns runs of pages by category without one u64 per
//! page. Used to find PMD-mapped ranges (PAGE_IS_HUGE, not visible in
//! pagemap entries) and to skip unpopulated parts of large VMAs.

use std::{fs::File, io, os::fd::AsRawFd};

/// Category: page has been written (not uffd-wp protected).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Category: file-backed page.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// Category: present page.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Category: swapped page.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// Category: mapped to the zero page.
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Category: PMD-mapped THP or hugetlb page.
pub const PAGE_IS_HUGE: u64 = 1 << 6;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// _IOWR('f', 16, struct pm_scan_arg)
const PAGEMAP_SCAN: u64 = (3 << 30) | ((size_of::<PmScanArg>() as u64) << 16) | (0x66 << 8) | 16;

/// One run of pages `[start, end)` with the returned categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Categories (masked by the request's return mask).
    pub categories: u64,
}

/// Regions of `[start, end)` having all of `all` and any of `anyof`
/// (0: no constraint). Fails with ENOTTY/EINVAL on kernels without
/// PAGEMAP_SCAN.
pub fn scan(pagemap: &File, start: u64, end: u64, all: u64, anyof: u64) -> io::Result<Vec<Region>> {
    let mut out = Vec::new();
    let mut buf = vec![PageRegion::default(); 1024];
    let mut pos = start;
    while pos < end {
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            start: pos,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_mask: all,
            category_anyof_mask: anyof,
            return_mask: all | anyof,
            ..Default::default()
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points at buf.len()
        // writable page_region entries that outlive the call.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        out.extend(buf[..n as usize].iter().map(|r| Region {
            start: r.start,
            end: r.end,
            categories: r.categories,
        }));
        if arg.walk_end <= pos {
            break;
        }
        pos = arg.walk_end;
    }
    Ok(out)
}
