//! The records of an allocator trace, drained from its ring buffer: samples (with the stack
//! copy, handed on for unwinding and released), returns and frees.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use memlens_common::allocator::{AllocEvent, AllocEventKind, AllocSampleHeader};
use memlens_model::user_stack::StackSample;

/// The ring buffer of a trace's records.
pub struct AllocEventRing(pub(crate) RingBuf<MapData>);

/// One record, borrowed from the ring.
#[derive(Debug)]
pub enum AllocRecord<'a> {
    /// A sampled allocation of `size` bytes; `stack` holds its registers and stack copy
    /// (`superblocks` is 0: it is no page record's).
    Sample {
        id: u64,
        size: u64,
        stack: StackSample<'a>,
    },
    /// The sampled call returned `ptr` (0: failed or untracked).
    Returned { id: u64, ptr: u64 },
    /// The sampled block was released.
    Freed { id: u64 },
}

impl AllocEventRing {
    /// Waits up to `timeout` for records; true when some are waiting.
    pub fn wait(&self, timeout: Duration) -> bool {
        super::wait_readable(self.0.as_fd().as_raw_fd(), timeout)
    }

    /// Hands every waiting record to `take`, at most `max` of them; returns how many.
    pub fn drain(&mut self, max: usize, mut take: impl FnMut(AllocRecord<'_>)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.0.next() else { break };
            n += 1;
            if let Some(record) = decode(&item) {
                take(record);
            }
        }
        n
    }
}

/// Decodes one record; None for a short or unknown one.
fn decode(item: &[u8]) -> Option<AllocRecord<'_>> {
    let kind = u32::from_le_bytes(item.get(..4)?.try_into().ok()?);
    if kind == AllocEventKind::Sample as u32 {
        let header_len = size_of::<AllocSampleHeader>();
        if item.len() < header_len {
            return None;
        }
        // SAFETY: the item starts with an AllocSampleHeader written by the kernel program
        // (plain data, size checked above); read unaligned into our own value.
        let h: AllocSampleHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        let (stack, python) =
            super::split_copy(&item[header_len..], h.len, h.python_frames, h.python_walk);
        return Some(AllocRecord::Sample {
            id: h.id,
            size: h.size,
            stack: StackSample {
                ts_ns: h.ts_ns,
                tgid: h.tgid,
                pid: h.pid,
                ip: h.ip,
                sp: h.sp,
                bp: h.bp,
                first_superblock: 0,
                superblocks: 0,
                stack,
                python,
            },
        });
    }
    if item.len() < size_of::<AllocEvent>() {
        return None;
    }
    // SAFETY: as above, for an AllocEvent.
    let e: AllocEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    if e.kind == AllocEventKind::Returned as u32 {
        Some(AllocRecord::Returned {
            id: e.id,
            ptr: e.ptr,
        })
    } else if e.kind == AllocEventKind::Freed as u32 {
        Some(AllocRecord::Freed { id: e.id })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: plain #[repr(C)] data without padding.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn records_decode_by_kind_and_short_ones_are_skipped() {
        let header = AllocSampleHeader {
            kind: AllocEventKind::Sample as u32,
            len: 16,
            id: 0x1003,
            ts_ns: 5,
            tgid: 10,
            pid: 11,
            size: 4096,
            ip: 0x401000,
            sp: 0x7ffe0000,
            bp: 0,
            python_frames: 0,
            python_walk: 0,
        };
        let mut item = bytes(&header);
        item.extend(1u64.to_le_bytes());
        item.extend(2u64.to_le_bytes());
        let Some(AllocRecord::Sample { id, size, stack }) = decode(&item) else {
            panic!("not a sample");
        };
        assert_eq!((id, size, stack.tgid, stack.pid), (0x1003, 4096, 10, 11));
        assert_eq!(stack.word(0x7ffe0008), Some(2));
        let freed = AllocEvent {
            kind: AllocEventKind::Freed as u32,
            reserved: 0,
            id: 7,
            ptr: 0x5000,
            ts_ns: 9,
        };
        assert!(matches!(
            decode(&bytes(&freed)),
            Some(AllocRecord::Freed { id: 7 })
        ));
        assert!(decode(&item[..20]).is_none());
        assert!(decode(&[1, 2]).is_none());
    }
}
