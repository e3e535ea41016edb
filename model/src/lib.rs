//! What the collectors hand on: plain data about one instant of the host, with no kernel handle
//! in it. A census of the sampled page frames, the page cache per (cgroup, file), and the
//! snapshot of every memory cgroup that joins the kernel's counters with the census, user stacks
//! unwound from copies, and processes' own allocation profiles. Attribution and the agent's API
//! read these; the kernel crate, the unwinder and the runtime readers produce them.

pub mod alloc_trace;
pub mod allocations;
pub mod census;
pub mod page_cache;
pub mod python;
pub mod snapshot;
pub mod user_stack;

pub use snapshot::Snapshot;

/// The kernel's stack map, as the census' records refer to it: stack key to instruction
/// addresses, innermost first.
pub trait StackTable {
    /// The addresses of stack `key`; None when the map holds no such stack (any more).
    fn addresses(&self, key: u64) -> Option<Vec<u64>>;
}
