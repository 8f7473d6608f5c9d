//! The record every hook writes to the ring buffer.
//!
//! A record is self-describing: its header names the hook that produced it
//! and its own size, so a reader can skip hooks it does not know and records
//! from newer programs stay readable.

/// How many tracepoint fields one record carries. Which fields they are is
/// decided per hook by userspace (see [`crate::hook::HookConfig`]).
pub const MAX_ARGS: usize = 4;

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

/// A tracepoint record: the header plus up to [`MAX_ARGS`] raw field values,
/// zero-extended to 64 bits (userspace sign-extends signed fields).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    pub header: EventHeader,
    pub args: [u64; MAX_ARGS],
}

/// Size of a [`RawEvent`] as written into the ring buffer.
pub const RAW_EVENT_SIZE: usize = core::mem::size_of::<RawEvent>();

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, and have no padding (asserted below).
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::RawEvent {}
    const _: () = assert!(core::mem::size_of::<super::EventHeader>() == 24);
    const _: () = assert!(core::mem::size_of::<super::RawEvent>() == 24 + 8 * super::MAX_ARGS);
}
