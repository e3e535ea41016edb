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
pub mod stack_copy;
