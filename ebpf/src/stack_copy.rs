//! Copies of the user stack at sampled allocations, for unwinding in userspace with each binary's
//! unwind tables (see `memlens_common::stack_copy`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::bpf_probe_read_user,
    },
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    Global,
};
use memlens_common::{
    counters::Counter,
    page::SampledFrames,
        stack_copy::{StackCopy, StackCopyHeader, STACK_COPY_CHUNK, STACK_COPY_DATA, STACK_COPY_MAX},
};

use crate::{counters, python, task::UserRegs};

/// Bytes of stack copied per sample (at most `STACK_COPY_MAX`); 0 turns copying off.
#[no_mangle]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

/// `task_struct.mm` and `mm_struct.start_stack` from BTF; 0 when unknown (no trimming).
#[no_mangle]
static TASK_MM_OFFSET: Global<u32> = Global::new(0);
#[no_mangle]
static MM_START_STACK_OFFSET: Global<u32> = Global::new(0);

/// Bytes of `STACK_COPIES`, set by the agent with the map's size.
#[no_mangle]
static STACK_COPY_BUFFER: Global<u64> = Global::new(4096);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Where a copy is assembled before it goes to the ring buffer (too large for the BPF stack).
#[map]
static STACK_COPY_SCRATCH: PerCpuArray<StackCopy> = PerCpuArray::with_max_entries(1, 0);

/// Stack copies for the agent; sized by the agent.
#[map]
static STACK_COPIES: RingBuf = RingBuf::with_byte_size(4096, 0);

/// The agent's own process (its tgid; 0: none yet), whose stacks are not copied. Kept with the
/// records: a restarted agent's start-up is traced by the kept programs, and its copies (5 MiB
/// in its first seconds) filled the ring before its unwinder read it. Its own allocations are
/// not what it is there to explain; they keep their record and the frame-pointer walk.
#[map]
static AGENT: Array<u32> = Array::with_max_entries(1, 0);

const STEPS: usize = STACK_COPY_MAX / STACK_COPY_CHUNK + 1;

/// Copies the registers, up to `STACK_COPY_BYTES` of the stack from `regs.sp` up and the Python
/// frames of a CPython process into the ring buffer. True when the copy is on its way to the
/// agent; false when copying is off, the task has no user memory (a kernel thread), or the copy
/// failed (counted).
#[inline(always)]
pub fn capture(ts_ns: u64, pid_tgid: u64, regs: UserRegs, frames: SampledFrames) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    if AGENT.get(0).is_some_and(|&agent| agent == tgid) {
        counters::add(Counter::StackCopyAgentSkipped, 1);
        return false;
    }
    let Some(scratch) = STACK_COPY_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: no preconditions.
    let started = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU map value; this program does not nest on one CPU.
    let scratch = unsafe { &mut *scratch };
    let done = match copy_user_stack(&mut scratch.data, regs.sp) {
        Copied::Bytes(done) => done,
        Copied::Off => return false,
        Copied::Failed => {
            counters::add(Counter::StackCopyErrors, 1);
            return false;
        }
    };
    scratch.header = StackCopyHeader {
        ts_ns,
        tgid,
        pid: pid_tgid as u32,
        ip: regs.ip,
        sp: regs.sp,
        bp: regs.bp,
        first_superblock: frames.first_superblock,
        superblocks: frames.count as u32,
        len: done as u32,
        python_frames: 0,
        python_walk: 0,
    };
    // The Python frames follow the stack bytes; the walk comes last, so that the states it ends
    // in (one per frame count) go through nothing but the send below.
    let header = &mut scratch.header;
    let Some(python_bytes) = python::walk_after(
        tgid,
        pid_tgid as u32,
        &mut scratch.data,
        &mut header.len,
        &mut header.python_frames,
        &mut header.python_walk,
    ) else {
        return false;
    };
    let mut len = size_of::<StackCopyHeader>() + python_bytes;
    // LLVM drops this check (it can prove it), and older verifiers (6.1) cannot: they lose the
    // bound of a value spilled before it was checked. A register move it cannot see through
    // keeps the check for every verifier to follow.
    // SAFETY: `rN = rN` changes nothing.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) len) };
    if len > size_of::<StackCopy>() {
        return false;
    }
    // SAFETY: `scratch` is `size_of::<StackCopy>()` bytes and `len` is at most that.
    let bytes = unsafe { core::slice::from_raw_parts((scratch as *const StackCopy).cast::<u8>(), len) };
    // Waking the agent is an interrupt of its own (a self-IPI, a VM exit under a hypervisor):
    // several microseconds per copy. The agent polls instead, and is woken only when the ring is
    // half full.
    let flags = if STACK_COPIES.query(BPF_RB_AVAIL_DATA) > STACK_COPY_BUFFER.load() / 2 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let sent = match STACK_COPIES.output::<[u8]>(bytes, flags) {
        Ok(()) => {
            counters::add(Counter::StackCopies, 1);
            counters::add(Counter::StackCopyBytes, done as u64);
            true
        }
        Err(_) => {
            counters::add(Counter::StackCopyDropped, 1);
            false
        }
    };
    // SAFETY: no preconditions.
    let end = unsafe { bpf_ktime_get_ns() };
    counters::add(Counter::StackCopyNs, end.wrapping_sub(started));
    sent
}

/// What [`copy_user_stack`] did.
pub enum Copied {
    /// This many bytes (at least one, at most `STACK_COPY_MAX`) from the stack pointer up.
    Bytes(usize),
    /// Copying is off, or the task has no user memory (a kernel thread).
    Off,
    /// The first page at the stack pointer could not be read.
    Failed,
}

/// Copies up to `STACK_COPY_BYTES` of the current task's user stack from `sp` up into `data`,
/// one page at a time so that the copy ends at the top of the stack with what it has.
#[inline(always)]
pub fn copy_user_stack(data: &mut [u8; STACK_COPY_DATA], sp: u64) -> Copied {
    let mut limit = STACK_COPY_BYTES.load() as usize;
    if limit == 0 {
        return Copied::Off;
    }
    // The main thread's frames all lie below `mm->start_stack` (where `argc` was at exec);
    // above it are the environment and the auxiliary vector, which unwinding never reads.
    match main_stack_start() {
        MainStack::NoUserMemory => return Copied::Off,
        MainStack::Start(start_stack) => {
            if start_stack > sp && start_stack - sp < limit as u64 {
                limit = (start_stack - sp) as usize;
            }
        }
        MainStack::Unknown => {}
    }
    let mut done: usize = 0;
    for _ in 0..STEPS {
        if done >= limit || done > STACK_COPY_MAX {
            break;
        }
        let addr = sp.wrapping_add(done as u64);
        let to_page_end = STACK_COPY_CHUNK - (addr as usize & (STACK_COPY_CHUNK - 1));
        let mut chunk = to_page_end.min(limit - done);
        // Older verifiers (6.1) do not carry the bound of a minimum of two registers, and LLVM
        // drops a check it can prove: a register move it cannot see through hides the value,
        // so the check against the constant stays, and every verifier follows that.
        // SAFETY: `rN = rN` changes nothing.
        unsafe { core::arch::asm!("{0} = {0}", inout(reg) chunk) };
        if chunk > STACK_COPY_CHUNK {
            break;
        }
        let dst = data.as_mut_ptr().wrapping_add(done);
        // SAFETY: `dst..dst + chunk` lies in `data` (done <= MAX, chunk <= CHUNK); the helper
        // checks the user address and fails on an unmapped page.
        let read = unsafe { bpf_probe_read_user(dst.cast(), chunk as u32, addr as *const c_void) };
        if read != 0 {
            break;
        }
        done += chunk;
    }
    if done == 0 || done > STACK_COPY_MAX {
        return Copied::Failed;
    }
    Copied::Bytes(done)
}

enum MainStack {
    /// `current->mm` is NULL: a kernel thread, no user stack.
    NoUserMemory,
    /// `current->mm->start_stack`.
    Start(u64),
    /// The offsets are unknown or a read failed.
    Unknown,
}

/// Where the current process's main stack started, or that it has none.
///
/// match-kernel: include/linux/sched.h task_struct.mm; include/linux/mm_types.h
/// mm_struct.start_stack
#[inline(always)]
fn main_stack_start() -> MainStack {
    let (mm_offset, start_offset) = (TASK_MM_OFFSET.load(), MM_START_STACK_OFFSET.load());
    if mm_offset == 0 || start_offset == 0 {
        return MainStack::Unknown;
    }
    // SAFETY: returns the current task_struct pointer; only used through probe reads.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    let Ok(mm) = (unsafe { bpf_probe_read_kernel((task + u64::from(mm_offset)) as *const u64) })
    else {
        return MainStack::Unknown;
    };
    if mm == 0 {
        return MainStack::NoUserMemory;
    }
    // SAFETY: as above.
    match unsafe { bpf_probe_read_kernel((mm + u64::from(start_offset)) as *const u64) } {
        Ok(start) => MainStack::Start(start),
        Err(_) => MainStack::Unknown,
    }
}
