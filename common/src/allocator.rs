//! Allocator traces: user probes on the allocator functions of chosen processes, sampled by
//! bytes.
//!
//! A probe on every allocator call traps into the kernel (microseconds per call here), so a
//! trace is a targeted, bounded window, never always-on. What the probes record is cheap because
//! it is sampled: each CPU counts down the bytes allocated to the next sample point, the gaps
//! between points drawn from an exponential distribution (a Poisson process over allocated
//! bytes, as Go's and tcmalloc's heap profiles sample). An allocation of `s` bytes is then
//! sampled with probability `1 - e^(-s / mean)`, and weighing each sample by the inverse of that
//! probability gives unbiased estimates of bytes and objects. Only sampled allocations cost more
//! than the count-down: their stack is copied for unwinding, their returned pointer is kept in
//! `ALLOC_LIVE`, and a `free` of that pointer is reported.

/// Entries of the table of exponential gaps the kernel program draws from (a power of two).
pub const GAP_TABLE_SIZE: u32 = 1024;

/// What a record of the `ALLOC_EVENTS` ring buffer is; its first field.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocEventKind {
    /// A sampled allocation's entry: an [`AllocSampleHeader`] and the stack copy.
    Sample = 1,
    /// The sampled call returned ([`AllocEvent`]: `ptr` is the block, 0 when the allocation
    /// failed or its pointer could not be kept).
    Returned = 2,
    /// A sampled block was freed (or reallocated).
    Freed = 3,
}

/// A sampled allocation, as its allocator function was entered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocSampleHeader {
    /// `AllocEventKind::Sample`.
    pub kind: u32,
    /// Bytes of stack copy that follow the header.
    pub len: u32,
    /// Unique per trace: (per-CPU sequence << 12) | CPU.
    pub id: u64,
    pub ts_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    /// Bytes asked for.
    pub size: u64,
    /// User registers at the function's entry.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// [`PythonFrame`](crate::python::PythonFrame)s that follow the stack, innermost first.
    pub python_frames: u32,
    /// How their walk ended: a [`PythonWalk`](crate::python::PythonWalk).
    pub python_walk: u32,
}

/// A sampled allocation's return or free.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocEvent {
    /// `AllocEventKind::Returned` or `AllocEventKind::Freed`.
    pub kind: u32,
    pub reserved: u32,
    pub id: u64,
    pub ptr: u64,
    pub ts_ns: u64,
}

/// A sampled call between its entry and its return, per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocPending {
    pub id: u64,
    /// The stack pointer the return probe sees for this call (the entry's plus the popped
    /// return address): a nested allocator call returning first does not match.
    pub return_sp: u64,
    /// `posix_memalign`'s out-pointer (0 for functions that return the block).
    pub memptr: u64,
}

/// Per-CPU count-down state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCountdown {
    /// Bytes to the next sample point; at or below zero, the current allocation is sampled.
    pub remaining: i64,
    /// Samples taken on this CPU (the high bits of sample ids).
    pub sequence: u64,
    /// 1 once `remaining` was drawn from the gap table (a fresh CPU draws before counting).
    pub started: u64,
}

/// Indices of the `ALLOC_COUNTERS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocCounter {
    /// Allocating calls entered (malloc, calloc, realloc, new, ...).
    AllocCalls = 0,
    /// Freeing calls entered (free, delete, ...), realloc's release of its old block included.
    FreeCalls = 1,
    /// Allocating calls returned (the return probe's traps).
    Returns = 2,
    /// Allocations sampled.
    Samples = 3,
    /// Sampled blocks freed.
    SampledFrees = 4,
    /// Samples whose block could not be kept in `ALLOC_LIVE` (full): their frees are not seen.
    LiveFull = 5,
    /// Samples whose record could not be sent (the ring buffer was full): lost.
    RingFull = 6,
    /// Stack copies that failed (the sample is kept without a stack).
    CopyErrors = 7,
    /// Sampled calls whose return was not matched (a nested call, a thread that longjmp'd out).
    Unmatched = 8,
}

/// Number of `AllocCounter`s.
pub const ALLOC_COUNTER_COUNT: u32 = 9;

impl AllocCounter {
    pub const ALL: [AllocCounter; ALLOC_COUNTER_COUNT as usize] = [
        AllocCounter::AllocCalls,
        AllocCounter::FreeCalls,
        AllocCounter::Returns,
        AllocCounter::Samples,
        AllocCounter::SampledFrees,
        AllocCounter::LiveFull,
        AllocCounter::RingFull,
        AllocCounter::CopyErrors,
        AllocCounter::Unmatched,
    ];
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data of integer fields, no padding.
    unsafe impl aya::Pod for super::AllocSampleHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AllocCountdown {}
}
