//! pagewatch: which process a page-state change happened to, and why.
//!
//! The library is organised by concern:
//! - [`tracefs`]: finding tracefs and parsing tracepoint `format` files;
//! - [`hooks`]: the table of kernel hooks and what each needs;
//! - [`probe`]: loading the eBPF object, configuring and attaching hooks;
//! - [`event`]: decoding ring-buffer records into typed events;
//! - [`aggregate`]: per-process and system-wide tallies per interval;
//! - [`correlate`]: snapshot diffs joined with events into attributed transitions;
//! - [`proc`]: small /proc readers (processes by pid and start time, names);
//! - [`privileges`]: capabilities held, named when missing, dropped when done;
//! - [`snapshot`]: pagemap/kpageflags page census;
//! - [`transition`]: page state transitions and their causes;
//! - [`record`]: the recording file format (writer and reader);
//! - [`output`]: the JSON lines `top --json` and `report --format json`
//!   write, as types with a JSON Schema.
//! - [`session`]: a tracing session any front end runs: config in,
//!   interval reports out through a sink;
//! - [`kernel`]: clocks, the page size and probes of kernel quirks;
//! - [`note`]: what a front end must tell its user, as data.

pub mod aggregate;
pub mod correlate;
pub mod error;
pub mod event;
pub mod hooks;
pub mod kernel;
#[cfg(test)]
mod layers;
pub mod note;
pub mod output;
pub mod privileges;
pub mod probe;
pub mod proc;
pub mod record;
pub mod session;
pub mod snapshot;
pub mod tracefs;
pub mod transition;
