//! The stack copies of sampled allocations, drained from the kernel program's ring buffer and
//! handed one at a time to whoever unwinds them; the ring's space is released as each is handed
//! on, so no copy outlives its unwinding.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use memlens_common::stack_copy::StackCopyHeader;
use memlens_model::user_stack::StackSample;

/// The ring buffer of stack copies.
pub struct StackCopyRing(pub(crate) RingBuf<MapData>);

/// Waits for copies without holding the ring, so that another thread may drain it meanwhile.
/// Valid as long as the ring it came from lives.
pub struct StackCopyWaiter(RawFd);

impl StackCopyWaiter {
    /// Waits up to `timeout` for copies to arrive; true when some are waiting.
    pub fn wait(&self, timeout: Duration) -> bool {
        super::wait_readable(self.0, timeout)
    }
}

impl StackCopyRing {
    /// A waiter on this ring's descriptor.
    #[must_use]
    pub fn waiter(&self) -> StackCopyWaiter {
        StackCopyWaiter(self.0.as_fd().as_raw_fd())
    }

    /// Hands every waiting copy to `unwind`, at most `max` of them; returns how many.
    pub fn drain(&mut self, max: usize, mut unwind: impl FnMut(&StackSample<'_>)) -> usize {
        let header_len = size_of::<StackCopyHeader>();
        let mut n = 0;
        while n < max {
            let Some(item) = self.0.next() else { break };
            n += 1;
            if item.len() < header_len {
                continue;
            }
            // SAFETY: the item starts with a StackCopyHeader written by the kernel program
            // (plain data, size checked above); read unaligned into our own value.
            let header: StackCopyHeader = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let (stack, python) = super::split_copy(
                &item[header_len..],
                header.len,
                header.python_frames,
                header.python_walk,
            );
            unwind(&StackSample {
                ts_ns: header.ts_ns,
                tgid: header.tgid,
                pid: header.pid,
                ip: header.ip,
                sp: header.sp,
                bp: header.bp,
                first_superblock: header.first_superblock,
                superblocks: header.superblocks,
                stack,
                python,
            });
        }
        n
    }
}
