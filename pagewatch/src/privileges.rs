//! Capabilities: which ones the caller holds (so a missing one is named
//! before anything is tried, not guessed from an EPERM), and dropping, once
//! the eBPF programs are attached and the output file is open, every one
//! pagewatch no longer needs.
//!
//! Loading and attaching needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN);
//! afterwards the ring buffer and maps are open file descriptors that need
//! no capability. What stays is what reading the pages of processes found
//! later needs: CAP_SYS_ADMIN (pagemap shows PFNs only to openers holding
//! it), CAP_SYS_PTRACE (maps and pagemap of other users' processes) and
//! CAP_DAC_READ_SEARCH (their mode-0400 pagemap files). Everything else
//! leaves the effective, permitted, inheritable, ambient and bounding sets,
//! and `no_new_privs` is set, so nothing pagewatch could exec regains them.

use std::io;

/// A capability: its number (include/uapi/linux/capability.h) and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap(pub u32, pub &'static str);

pub const CAP_DAC_READ_SEARCH: Cap = Cap(2, "CAP_DAC_READ_SEARCH");
pub const CAP_SYS_PTRACE: Cap = Cap(19, "CAP_SYS_PTRACE");
pub const CAP_SYS_ADMIN: Cap = Cap(21, "CAP_SYS_ADMIN");
pub const CAP_PERFMON: Cap = Cap(38, "CAP_PERFMON");
pub const CAP_BPF: Cap = Cap(39, "CAP_BPF");

/// Kept after [`drop_unneeded`] (see the module comment for why).
pub const KEPT: [Cap; 3] = [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets, bit N for capability N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
}

impl CapSets {
    /// The calling thread's sets (capget).
    pub fn current() -> io::Result<Self> {
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        // SAFETY: a version-3 header and the two data words it asks for.
        let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let join = |f: fn(&CapData) -> u32| u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32;
        Ok(Self {
            effective: join(|d| d.effective),
            permitted: join(|d| d.permitted),
            inheritable: join(|d| d.inheritable),
        })
    }

    /// Whether `cap` is in the effective set.
    pub fn has(&self, cap: Cap) -> bool {
        self.effective >> cap.0 & 1 == 1
    }

    fn apply(&self) -> io::Result<()> {
        let mut header = CapHeader {
            version: CAP_VERSION_3,
            pid: 0,
        };
        let split = |v: u64| [v as u32, (v >> 32) as u32];
        let (e, p, i) = (
            split(self.effective),
            split(self.permitted),
            split(self.inheritable),
        );
        let data = [0, 1].map(|w| CapData {
            effective: e[w],
            permitted: p[w],
            inheritable: i[w],
        });
        // SAFETY: a version-3 header and two data words.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The capabilities loading and attaching the eBPF programs needs that
/// `caps` lacks, as a sentence part ("CAP_BPF and CAP_PERFMON"); None when
/// nothing is missing. CAP_SYS_ADMIN stands in for both.
pub fn missing_for_tracing(caps: &CapSets) -> Option<String> {
    if caps.has(CAP_SYS_ADMIN) {
        return None;
    }
    let missing: Vec<&str> = [CAP_BPF, CAP_PERFMON]
        .iter()
        .filter(|c| !caps.has(**c))
        .map(|c| c.1)
        .collect();
    (!missing.is_empty()).then(|| missing.join(" and "))
}

/// What [`drop_unneeded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The effective set now (a subset of [`KEPT`]).
    pub kept: Vec<&'static str>,
    /// Whether the bounding set was cut too (that needs CAP_SETPCAP).
    pub bounding: bool,
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl options taking integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Drops every capability but [`KEPT`] from all five sets and sets
/// `no_new_privs`. Capabilities belong to threads: call it while the
/// process has one thread, so every thread started later inherits the cut
/// sets (it refuses otherwise). Children started before keep theirs.
pub fn drop_unneeded() -> io::Result<Dropped> {
    let count = || std::fs::read_dir("/proc/self/task").map(Iterator::count);
    // A thread joined just before (a snapshot's kpage reader) stays listed
    // until the kernel has released it, a moment after join returns.
    let mut threads = count()?;
    for _ in 0..200 {
        if threads <= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        threads = count()?;
    }
    if threads > 1 {
        return Err(io::Error::other(format!(
            "the process has {threads} threads; capabilities must be dropped while it has one"
        )));
    }
    let keep: u64 = KEPT.iter().map(|c| 1u64 << c.0).sum();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let mut bounding = true;
    for cap in (0..=last).filter(|c| keep >> c & 1 == 0) {
        match prctl(libc::PR_CAPBSET_DROP, cap.into()) {
            Ok(()) => {}
            // Without CAP_SETPCAP the bounding set stays; the other sets
            // can still be cut, and no_new_privs still set.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                bounding = false;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    // Ambient capabilities (4.3+) would survive an exec.
    match prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as _) {
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
        _ => {}
    }
    let now = CapSets::current()?;
    let cut = CapSets {
        effective: now.permitted & keep,
        permitted: now.permitted & keep,
        inheritable: 0,
    };
    cut.apply()?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(Dropped {
        kept: KEPT.iter().filter(|c| cut.has(**c)).map(|c| c.1).collect(),
        bounding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_tracing_lacks() {
        let with = |caps: &[Cap]| CapSets {
            effective: caps.iter().map(|c| 1u64 << c.0).sum(),
            permitted: 0,
            inheritable: 0,
        };
        assert_eq!(missing_for_tracing(&with(&[CAP_SYS_ADMIN])), None);
        assert_eq!(missing_for_tracing(&with(&[CAP_BPF, CAP_PERFMON])), None);
        assert_eq!(
            missing_for_tracing(&with(&[CAP_PERFMON])).as_deref(),
            Some("CAP_BPF")
        );
        assert_eq!(
            missing_for_tracing(&with(&[])).as_deref(),
            Some("CAP_BPF and CAP_PERFMON")
        );
    }

    #[test]
    fn reads_the_calling_threads_sets() {
        let caps = CapSets::current().expect("capget");
        // Effective is always a subset of permitted.
        assert_eq!(caps.effective & !caps.permitted, 0);
    }
}
