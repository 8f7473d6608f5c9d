//! Page census from /proc/PID/maps, pagemap and /proc/kpage*:
//! what state every page is in right now and whose it is, equal to the
//! kernel's own smaps accounting and far cheaper than page-types.
//!
//! Modules by concern:
//! - [`source`]: the [`ProcRoot`] every reader takes, batched u64 tables;
//! - [`vma`], [`maps`], [`procmap_query`], [`flags`], [`pagemap_scan`]: the
//!   kernel files and ioctls, and their bits;
//! - [`scan`], [`pfnplan`], [`batches`]: reading one process's pages
//!   (pagemap, then kpage* for the PFNs found, on two threads);
//! - [`account`], [`folios`], [`report`]: smaps-exact accounting,
//!   thpmaps-like large-folio stats, per-VMA/process reports;
//! - [`memcg`]: kpagecgroup inodes to cgroup paths;
//! - [`observer`]: pagewatch's own mappings taken out of mapcounts;
//! - [`census`], [`sysfs`]: the whole-system view;
//! - [`workingset`]: clear_refs / page_idle working set;
//! - [`columns`]: the compact per-page arrays the correlator keeps;
//! - [`select`]: which processes to look at.

pub mod account;
pub mod batches;
pub mod census;
pub mod columns;
pub mod cont;
pub mod error;
pub mod flags;
pub mod folios;
pub mod map;
pub mod maps;
pub mod memcg;
pub mod observer;
pub mod pagemap_scan;
pub mod pfnplan;
pub mod procmap_query;
pub mod report;
pub mod scan;
pub mod select;
pub mod source;
pub mod sysfs;
pub mod vma;
pub mod workingset;

pub use error::{Result, SnapshotError};
pub use source::ProcRoot;
