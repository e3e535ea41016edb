//! Types shared by the kernel programs (`memlens-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` plain data or pure arithmetic that both sides must compute
//! identically (the page sampling rule above all): the kernel side writes it into maps, the agent
//! reads it back, so a layout or formula that differs between the two is a silent wrong answer.
#![no_std]

pub mod allocator;
pub mod counters;
pub mod filemap;
pub mod lifecycle;
pub mod offsets;
pub mod page;
pub mod python;
pub mod stack_copy;

/// Version of the records kept in maps that outlive the agent (pinned in a BPF file system, so a
/// restarted agent finds what the kernel programs recorded before and while it was down). Bump
/// it whenever a field of [`page::PageAlloc`], [`filemap::FileKey`],
/// [`lifecycle::LifecycleEvent`] or [`stack_copy::StackCopyHeader`] changes meaning, or the
/// counters change order, or a map is kept that was not (3: the agent map; 4: stack copies carry Python frames, and the Python processes are kept): a new agent then
/// starts afresh instead of misreading an older one's records. A change of size or count is
/// noticed without a bump.
pub const PINNED_LAYOUT_VERSION: u32 = 4;
