//! What language runtimes keep about their own allocations, read from a process's memory without
//! probes or the process's cooperation. Go: every Go process keeps a sampled heap profile (one
//! sample per 512 KiB allocated by default, with its stack), which `go_heap` reads.

pub mod allocator;
pub mod go_heap;
