//! Copies of the user stack at sampled allocations, for unwinding in userspace with each binary's
//! unwind tables (see `memlens_common::stack_copy`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_probe_read_user,
    macros::map,
    maps::{PerCpuArray, RingBuf},
    Global,
};
use memlens_common::{
    counters::Counter,
    page::SampledFrames,
    stack_copy::{StackCopy, StackCopyHeader, STACK_COPY_CHUNK, STACK_COPY_MAX},
};

use crate::{counters, task::UserRegs};

/// Bytes of stack copied per sample (at most `STACK_COPY_MAX`); 0 turns copying off.
#[no_mangle]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

/// Where a copy is assembled before it goes to the ring buffer (too large for the BPF stack).
#[map]
static STACK_COPY_SCRATCH: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// Stack copies for the agent; sized by the agent.
#[map]
static STACK_COPIES: RingBuf = RingBuf::with_byte_size(4096, 0);

const STEPS: usize = STACK_COPY_MAX / STACK_COPY_CHUNK + 1;

/// Copies the registers and up to `STACK_COPY_BYTES` of the stack from `regs.sp` up, one page at
/// a time so that the copy ends at the top of the stack with what it has.
#[inline(always)]
pub fn capture(ts_ns: u64, pid_tgid: u64, regs: UserRegs, frames: SampledFrames) {
    let limit = STACK_COPY_BYTES.load() as usize;
    if limit == 0 {
        return;
    }
    let Some(scratch) = STACK_COPY_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value; this program does not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    let mut done: usize = 0;
    for _ in 0..STEPS {
        if done >= limit || done > STACK_COPY_MAX {
            break;
        }
        let addr = regs.sp.wrapping_add(done as u64);
        let to_page_end = STACK_COPY_CHUNK - (addr as usize & (STACK_COPY_CHUNK - 1));
        let chunk = to_page_end.min(limit - done);
        if chunk > STACK_COPY_CHUNK {
            break;
        }
        let dst = scratch.data.as_mut_ptr().wrapping_add(done);
        // SAFETY: `dst..dst + chunk` lies in `data` (done <= MAX, chunk <= CHUNK); the helper
        // checks the user address and fails on an unmapped page.
        let read = unsafe { bpf_probe_read_user(dst.cast(), chunk as u32, addr as *const c_void) };
        if read != 0 {
            break;
        }
        done += chunk;
    }
    if done == 0 || done > STACK_COPY_MAX {
        counters::add(Counter::StackCopyErrors, 1);
        return;
    }
    scratch.header = StackCopyHeader {
        ts_ns,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        ip: regs.ip,
        sp: regs.sp,
        bp: regs.bp,
        first_superblock: frames.first_superblock,
        superblocks: frames.count as u32,
        len: done as u32,
    };
    let len = size_of::<StackCopyHeader>() + done;
    // SAFETY: `scratch` is `size_of::<StackCopy>()` bytes and `len` is at most that.
    let bytes = unsafe { core::slice::from_raw_parts((scratch as *const StackCopy).cast::<u8>(), len) };
    match STACK_COPIES.output::<[u8]>(bytes, 0) {
        Ok(()) => {
            counters::add(Counter::StackCopies, 1);
            counters::add(Counter::StackCopyBytes, done as u64);
        }
        Err(_) => counters::add(Counter::StackCopyDropped, 1),
    }
}
