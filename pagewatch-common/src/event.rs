//! The record every hook writes to the ring buffer.
//!
//! A record is self-describing: its header names the hook that produced it
//! and its own size, so a reader can skip hooks it does not know and records
//! from newer programs stay readable.

/// The most tracepoint fields one record carries. Which fields they are is
/// decided per hook by userspace (see [`crate::hook::HookConfig`]).
pub const MAX_ARGS: usize = 6;

/// Fields in a narrow record: enough for faults and reclaim, which are the
/// high-volume hooks and so get the smaller record.
pub const NARROW_ARGS: usize = 4;

/// Header of every ring-buffer record (24 bytes, no padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// Which hook fired: a [`crate::hook::Hook`] discriminant.
    pub hook: u16,
    /// Size of the whole record in bytes, header included.
    pub size: u16,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the hook fired.
    pub ts_ns: u64,
    /// Thread group (process) id of the current task.
    pub tgid: u32,
    /// Thread id of the current task.
    pub tid: u32,
}

/// A tracepoint record: the header plus `N` raw field values, zero-extended
/// to 64 bits (userspace sign-extends signed fields). The header's `size`
/// says which `N` a record has.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawEvent<const N: usize> {
    pub header: EventHeader,
    pub args: [u64; N],
}

/// The record of hooks with at most [`NARROW_ARGS`] fields (56 bytes).
pub type NarrowEvent = RawEvent<NARROW_ARGS>;
/// The record of hooks with more fields (72 bytes).
pub type WideEvent = RawEvent<MAX_ARGS>;

/// Size of the header, which every record starts with.
pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and have no padding (asserted below).
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl<const N: usize> aya::Pod for super::RawEvent<N> {}
    const _: () = assert!(core::mem::size_of::<super::EventHeader>() == 24);
    const _: () = assert!(core::mem::size_of::<super::NarrowEvent>() == 56);
    const _: () = assert!(core::mem::size_of::<super::WideEvent>() == 72);
}
