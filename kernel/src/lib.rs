//! The kernel side of the agent: loads and attaches the programs of `ebpf/` (embedded in this
//! crate by its build script), sized and relocated for the running kernel, and reads their maps
//! and the kernel's page state into plain data ([`memlens_model`]). The only crate that needs
//! the BPF toolchain; everything above it builds and tests without.

pub mod alloc_trace;
pub mod collectors;
pub mod loader;
pub mod physmem;
pub mod python_maps;

pub use loader::{LoadError, LoadOptions, LoadReport, Probes};
