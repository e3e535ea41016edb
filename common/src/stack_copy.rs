//! Copies of the top of the user stack, taken at sampled allocations for unwinding in userspace.
//!
//! A frame-pointer walk cannot follow code built without frame pointers (the default of GCC and
//! Clang at `-O2`, Rust's release profile, Debian's packages, glibc itself). So at each sampled
//! allocation with a user context the kernel program also copies the user registers that
//! unwinding needs (instruction pointer, stack pointer, frame pointer) and up to
//! [`STACK_COPY_MAX`] bytes of the stack from the stack pointer up, into a ring buffer; the agent
//! unwinds them with each binary's own unwind tables (`.eh_frame`, `.debug_frame`) and discards
//! the bytes. They may hold secrets: they are never stored, logged or served.

use crate::python::PYTHON_FRAMES_BYTES;

/// Largest stack copy per sample, in bytes (the configured size is at most this).
pub const STACK_COPY_MAX: usize = 16384;

/// Bytes copied per step: at most one page, so a copy stops at the first unmapped page (the end
/// of the stack) with what it has instead of failing whole.
pub const STACK_COPY_CHUNK: usize = 4096;

/// What precedes the stack bytes in a ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackCopyHeader {
    /// `bpf_ktime_get_ns()` of the allocation: with `pid`, the key of its `PageAlloc` record.
    pub ts_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    /// User registers at the allocation (the faulting instruction, or the syscall's return).
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The `PAGE_ALLOCS` entries the allocation wrote: `superblocks` from `first_superblock`.
    pub first_superblock: u64,
    pub superblocks: u32,
    /// Bytes of stack that follow the header, from `sp` up.
    pub len: u32,
    /// [`PythonFrame`](crate::python::PythonFrame)s that follow the stack, innermost first.
    pub python_frames: u32,
    /// How their walk ended: a [`PythonWalk`](crate::python::PythonWalk).
    pub python_walk: u32,
}

/// Room for what follows a record's header: the stack bytes, then its Python frames; plus one
/// chunk of slack so that every bounded step of the copy provably fits (the verifier checks
/// bounds, not arithmetic).
pub const STACK_COPY_DATA: usize = PYTHON_FRAMES_BYTES + STACK_COPY_MAX + STACK_COPY_CHUNK;

/// The kernel program's per-CPU scratch record: a header and room for the Python frames and the
/// copy. Only the header, the frames and `len` bytes of stack reach the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackCopy {
    pub header: StackCopyHeader,
    pub data: [u8; STACK_COPY_DATA],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data of integer fields, no padding.
    unsafe impl aya::Pod for super::StackCopyHeader {}
}
