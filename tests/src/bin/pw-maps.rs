//! Workload for the shared-mapping Pss test: `pw-maps [--lib NAME]...
//! [--map PATH[@SPLIT]]...` loads each library NAME with dlopen (the
//! system's copy, shared with every other process), maps each file PATH
//! read-only and shared, 2 MiB aligned, as one VMA (or, with `@SPLIT`, as
//! two VMAs cut at byte SPLIT), reads every page, prints `pid PID` and
//! `ready`, and holds the mappings until stdin closes.

use std::{
    ffi::CString,
    io::{Read, Write},
    os::fd::AsRawFd,
};

const PMD: usize = 2 << 20;

/// Map `len` bytes of `file` from `offset`, at a 2 MiB-aligned address.
fn map(file: &std::fs::File, offset: usize, len: usize) -> *const u8 {
    // SAFETY: reserve len + 2 MiB of address space, then map the file over
    // its aligned part; the rest stays reserved (PROT_NONE).
    unsafe {
        let raw = libc::mmap(
            std::ptr::null_mut(),
            len + PMD,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        assert!(
            raw != libc::MAP_FAILED,
            "reserve: {}",
            std::io::Error::last_os_error()
        );
        let at = (raw as usize + PMD - 1) & !(PMD - 1);
        let p = libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_FIXED,
            file.as_raw_fd(),
            offset as libc::off_t,
        );
        assert!(
            p != libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        for off in (0..len).step_by(4096) {
            p.cast::<u8>().add(off).read_volatile();
        }
        p.cast()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut held = Vec::new();
    for pair in args.chunks(2) {
        match pair {
            [flag, name] if flag == "--lib" => {
                let c = CString::new(name.as_str()).unwrap();
                // SAFETY: dlopen of a system library by name.
                let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW) };
                assert!(!h.is_null(), "dlopen {name} failed");
            }
            [flag, spec] if flag == "--map" => {
                let (path, split) = match spec.split_once('@') {
                    Some((p, s)) => (p, Some(s.parse::<usize>().expect("SPLIT in bytes"))),
                    None => (spec.as_str(), None),
                };
                let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                let len = f.metadata().unwrap().len() as usize;
                match split {
                    Some(s) => {
                        held.push(map(&f, 0, s));
                        held.push(map(&f, s, len - s));
                    }
                    None => held.push(map(&f, 0, len)),
                }
            }
            _ => panic!("usage: pw-maps [--lib NAME]... [--map PATH[@SPLIT]]..."),
        }
    }
    println!("pid {}", std::process::id());
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut buf = [0u8; 64];
    while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
}
