//! Indices of the kernel programs' per-CPU counters (`COUNTERS` map).
//!
//! Every dropped or failed update in a kernel program increments one of these, so the agent can
//! say what it missed instead of silently under-counting.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Allocations that contained at least one sampled frame.
    SampledAllocs = 0,
    /// Sampled frames recorded.
    SampledFrames = 1,
    /// Sampled frames beyond the `PAGE_ALLOCS` array (memory above the frame range sized at load,
    /// e.g. hot-plugged): not recorded.
    OutOfRange = 2,
    /// Allocations of more than `MAX_SAMPLED_PER_ALLOC` sampled frames: the rest not recorded.
    HighOrderTruncated = 3,
    /// `bpf_get_stack` for the kernel stack failed (any errno).
    KernelStackErrors = 4,
    /// `bpf_get_stack` for the user stack found no user context (kernel threads, interrupts).
    /// Expected, not a loss.
    UserStackNone = 5,
    /// The `STACKS` map was full: a new stack lost (its record has none).
    StackMapFull = 6,
    /// `bpf_get_stack` for the user stack failed with an errno.
    UserStackErrors = 7,
    /// Reading the allocating task's memory cgroup failed.
    TaskMemcgErrors = 8,
    /// Kernel stacks reused from the per-CPU memo instead of walked (not a loss).
    KernelStackReused = 9,
    /// Reading the user stack pointer or the words on top of the user stack failed: a frameless
    /// leaf's caller cannot be recovered for that sample.
    UserStackTopErrors = 10,
    /// Page-cache add/delete events accounted.
    FilemapEvents = 11,
    /// Page-cache events lost: the file map was full.
    FilemapMapFull = 12,
    /// Page-cache events whose folio could not be read (probe read failed).
    FilemapReadErrors = 13,
    /// Lifecycle events lost: the ring buffer was full.
    LifecycleDropped = 14,
    /// User stacks copied for unwinding (one per sampled allocation with a user context).
    StackCopies = 15,
    /// Bytes of user stack copied into the unwinding ring buffer.
    StackCopyBytes = 16,
    /// Stack copies lost: the unwinding ring buffer was full (the sample keeps its frame-pointer
    /// stack).
    StackCopyDropped = 17,
    /// Stack copies that failed: the first bytes at the user stack pointer could not be read (a
    /// task in the middle of an exec, whose registers still point into the old stack). The
    /// sample gets the frame-pointer walk instead.
    StackCopyErrors = 18,
    /// Nanoseconds the kernel program spent copying stacks (`bpf_ktime_get_ns` around it).
    StackCopyNs = 19,
    /// Samples of the agent's own process, whose stacks are not copied (not a loss: they keep
    /// the frame-pointer walk).
    StackCopyAgentSkipped = 20,
}

/// Number of counters; the size of the `COUNTERS` map.
pub const COUNTER_COUNT: u32 = 21;

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::SampledAllocs,
        Counter::SampledFrames,
        Counter::OutOfRange,
        Counter::HighOrderTruncated,
        Counter::KernelStackErrors,
        Counter::UserStackNone,
        Counter::StackMapFull,
        Counter::UserStackErrors,
        Counter::TaskMemcgErrors,
        Counter::KernelStackReused,
        Counter::UserStackTopErrors,
        Counter::FilemapEvents,
        Counter::FilemapMapFull,
        Counter::FilemapReadErrors,
        Counter::LifecycleDropped,
        Counter::StackCopies,
        Counter::StackCopyBytes,
        Counter::StackCopyDropped,
        Counter::StackCopyErrors,
        Counter::StackCopyNs,
        Counter::StackCopyAgentSkipped,
    ];

    /// Whether a count of this counter is something the agent lost (an update dropped, a stack
    /// not recorded), as opposed to work done or an expected absence.
    #[must_use]
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            Counter::OutOfRange
                | Counter::HighOrderTruncated
                | Counter::StackMapFull
                | Counter::KernelStackErrors
                | Counter::UserStackErrors
                | Counter::FilemapMapFull
                | Counter::FilemapReadErrors
                | Counter::LifecycleDropped
                | Counter::StackCopyDropped
        )
    }

    /// Stable snake_case name, used in the API and metrics.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SampledAllocs => "sampled_allocs",
            Counter::SampledFrames => "sampled_frames",
            Counter::OutOfRange => "out_of_range",
            Counter::HighOrderTruncated => "high_order_truncated",
            Counter::KernelStackErrors => "kernel_stack_errors",
            Counter::UserStackNone => "user_stack_none",
            Counter::StackMapFull => "stack_map_full",
            Counter::UserStackErrors => "user_stack_errors",
            Counter::TaskMemcgErrors => "task_memcg_errors",
            Counter::KernelStackReused => "kernel_stack_reused",
            Counter::UserStackTopErrors => "user_stack_top_errors",
            Counter::FilemapEvents => "filemap_events",
            Counter::FilemapMapFull => "filemap_map_full",
            Counter::FilemapReadErrors => "filemap_read_errors",
            Counter::LifecycleDropped => "lifecycle_dropped",
            Counter::StackCopies => "stack_copies",
            Counter::StackCopyBytes => "stack_copy_bytes",
            Counter::StackCopyDropped => "stack_copy_dropped",
            Counter::StackCopyErrors => "stack_copy_errors",
            Counter::StackCopyNs => "stack_copy_ns",
            Counter::StackCopyAgentSkipped => "stack_copy_agent_skipped",
        }
    }
}
