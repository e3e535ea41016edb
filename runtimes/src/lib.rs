//! What language runtimes keep, read from a process's memory without probes or the process's
//! cooperation. Go: every Go process keeps a sampled heap profile (one sample per 512 KiB
//! allocated by default, with its stack), which `go_heap` reads. CPython: the interpreter's own
//! frames (function, file, line), which `python` reads for the kernel programs' samples.

pub mod allocator;
pub mod go_heap;
pub mod python;
