//! memlens' vocabulary, shared by every other crate: units and identifiers as types (a page
//! count is never added to a byte count, a memory cgroup id never mistaken for a pid), how users
//! name cgroups, what a cgroup path says about its workload, and every record the agent serves,
//! stores and the CLI shows. Serde only: no I/O, no kernel, so it builds and tests anywhere.

pub mod allocations;
pub mod api;
pub mod cgroups;
pub mod event;
pub mod evidence;
pub mod files;
pub mod history;
pub mod leaks;
pub mod lifecycle;
pub mod pod;
pub mod selector;
pub mod stack;
pub mod status;
pub mod text;
pub mod units;
pub mod workload;

pub use selector::CgroupSelector;
pub use units::{unix_ms, Bytes, MemcgId, PageKind, PageSize, Pages, Pfn};
pub use workload::Workload;
