//! Page-fault counting shared by the eBPF side, which counts faults per
//! process in a per-CPU map, and the collector, which counts them from
//! records when every fault is sent (`--fault-events`): one classification,
//! so both paths split faults the same way.

/// x86 page fault error code bits (arch/x86/include/asm/trap_pf.h).
pub mod fault_bits {
    /// The fault was a protection violation (the page was present).
    pub const PROTECTION: u64 = 1 << 0;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access was an instruction fetch.
    pub const INSTRUCTION: u64 = 1 << 4;
}

/// One process's user page faults by kind (40 bytes, no padding): the
/// value of the eBPF side's per-CPU `FAULT_COUNTS` map, keyed by tgid.
///
/// Each fault increments exactly one of `read`, `write` and `ifetch`, so
/// their sum is the fault count, and faults in the user half are that sum
/// minus `kernel_addr`: a reader copying the counters while a fault is
/// being counted (the collector does, each interval) cannot see a total
/// that disagrees with its own split. (The counters themselves are never
/// torn; only the copy of several may straddle one fault.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Data reads (neither write nor instruction fetch).
    pub read: u64,
    pub write: u64,
    /// Instruction fetches.
    pub ifetch: u64,
    /// Protection faults on a present page (e.g. copy-on-write).
    pub protection: u64,
    /// Faulting address in the kernel half.
    pub kernel_addr: u64,
}

impl FaultCounts {
    /// Counts one fault at `address` with the x86 `error_code`.
    #[inline(always)]
    pub fn count(&mut self, address: u64, error_code: u64) {
        if error_code & fault_bits::WRITE != 0 {
            self.write += 1;
        } else if error_code & fault_bits::INSTRUCTION != 0 {
            self.ifetch += 1;
        } else {
            self.read += 1;
        }
        if error_code & fault_bits::PROTECTION != 0 {
            self.protection += 1;
        }
        // The top bit splits user and kernel halves on x86-64 and arm64.
        if address >> 63 != 0 {
            self.kernel_addr += 1;
        }
    }

    /// All faults counted.
    pub fn faults(&self) -> u64 {
        self.read + self.write + self.ifetch
    }

    /// Adds `other`'s counts (another CPU's) to these.
    pub fn add(&mut self, other: &FaultCounts) {
        self.read += other.read;
        self.write += other.write;
        self.ifetch += other.ifetch;
        self.protection += other.protection;
        self.kernel_addr += other.kernel_addr;
    }
}

/// The slot of the `DROPS` per-CPU array (past every hook's) that counts
/// faults `FAULT_COUNTS` had no room for.
pub const UNCOUNTED_FAULTS_SLOT: u32 = crate::hook::MAX_HOOKS - 1;

/// A process's 2 MiB range (`address >> 21`): the key of the eBPF side's
/// `FAULT_RANGES` map, which lets one fault record per range and interval
/// through the ring buffer (16 bytes, explicit padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRange {
    pub tgid: u32,
    pub _pad: u32,
    pub range: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and have no padding (asserted below).
    unsafe impl aya::Pod for super::FaultCounts {}
    unsafe impl aya::Pod for super::FaultRange {}
    const _: () = assert!(core::mem::size_of::<super::FaultCounts>() == 40);
    const _: () = assert!(core::mem::size_of::<super::FaultRange>() == 16);
}
