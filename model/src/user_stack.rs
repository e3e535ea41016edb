//! User stacks unwound in userspace: a sampled allocation's registers and stack copy as the
//! kernel program took them (the unwinder's input, borrowed from the ring buffer and never kept:
//! the stack bytes may hold secrets), and the frames unwound from them (its output).

use std::sync::Arc;

pub use memlens_types::stack::{
    FoundBy, SavedSlot, SavedStackId, StackStop, UnwoundChanges, UnwoundFrame, UnwoundStack,
};

/// One sampled allocation's stack copy.
#[derive(Clone, Copy, Debug)]
pub struct StackSample<'a> {
    /// CLOCK_MONOTONIC ns of the allocation: with `pid`, the key of its page record.
    pub ts_ns: u64,
    pub tgid: u32,
    pub pid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The `PAGE_ALLOCS` entries the allocation wrote: `superblocks` from `first_superblock`.
    pub first_superblock: u64,
    pub superblocks: u32,
    /// The stack from `sp` up.
    pub stack: &'a [u8],
}

impl StackSample<'_> {
    /// The 8-byte word at user address `addr`, if the copy holds it.
    #[must_use]
    pub fn word(&self, addr: u64) -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(self.sp)?).ok()?;
        let bytes = self.stack.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

/// Unwound stacks of the sampled allocations still on record.
pub trait UnwoundStacks {
    /// The stack of the allocation recorded in `superblock`'s entry by thread `pid` at `ts_ns`;
    /// None when it was not unwound (no copy, the ring was full, a frame-pointer binary).
    fn unwound(&self, superblock: u64, pid: u32, ts_ns: u64) -> Option<Arc<UnwoundStack>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_read_only_inside_the_copy() {
        let stack: Vec<u8> = (0u64..4).flat_map(|w| (w + 10).to_le_bytes()).collect();
        let sample = StackSample {
            ts_ns: 1,
            tgid: 2,
            pid: 2,
            ip: 0,
            sp: 0x1000,
            bp: 0,
            first_superblock: 0,
            superblocks: 1,
            stack: &stack,
        };
        assert_eq!(sample.word(0x1000), Some(10));
        assert_eq!(sample.word(0x1018), Some(13));
        assert_eq!(sample.word(0x1019), None, "straddles the end");
        assert_eq!(sample.word(0xff8), None, "below the stack pointer");
    }
}
