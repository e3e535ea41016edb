//! User stacks unwound in userspace: a sampled allocation's registers and stack copy as the
//! kernel program took them (the unwinder's input, borrowed from the ring buffer and never kept:
//! the stack bytes may hold secrets), and the frames unwound from them (its output).

use std::sync::Arc;

use memlens_common::python::{PythonFrame as PythonFrameRecord, PythonWalk};
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
    /// The Python frames the kernel program recorded with it.
    pub python: PythonRecords<'a>,
}

/// The Python frames recorded with a stack copy, innermost first, as the record holds them.
#[derive(Clone, Copy, Debug)]
pub struct PythonRecords<'a> {
    pub walk: PythonWalk,
    bytes: &'a [u8],
}

impl<'a> PythonRecords<'a> {
    /// No Python frames (not a Python process).
    pub const NONE: PythonRecords<'static> = PythonRecords {
        walk: PythonWalk::NotPython,
        bytes: &[],
    };

    /// `count` frames at the start of `bytes` (fewer if `bytes` is short), walked as `walk`
    /// says (an unknown outcome reads as no walk).
    #[must_use]
    pub fn new(walk: u32, count: u32, bytes: &'a [u8]) -> PythonRecords<'a> {
        let len = (count as usize)
            .saturating_mul(size_of::<PythonFrameRecord>())
            .min(bytes.len());
        PythonRecords {
            walk: PythonWalk::from_u32(walk).unwrap_or(PythonWalk::NotPython),
            bytes: &bytes[..len],
        }
    }

    /// Bytes the frames take in the record.
    #[must_use]
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The frames, innermost first.
    pub fn frames(&self) -> impl ExactSizeIterator<Item = PythonFrameRecord> + 'a {
        self.bytes
            .chunks_exact(size_of::<PythonFrameRecord>())
            .map(|c| {
                let word = |i: usize| {
                    u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().unwrap_or_default())
                };
                PythonFrameRecord {
                    code: word(0),
                    instr: word(1),
                }
            })
    }
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
            python: PythonRecords::NONE,
        };
        assert_eq!(sample.word(0x1000), Some(10));
        assert_eq!(sample.word(0x1018), Some(13));
        assert_eq!(sample.word(0x1019), None, "straddles the end");
        assert_eq!(sample.word(0xff8), None, "below the stack pointer");
    }
}
