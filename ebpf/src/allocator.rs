//! Allocator traces: user probes on the allocator functions of the processes a trace targets,
//! sampled by bytes (see `memlens_common::allocator`).
//!
//! The agent attaches these programs only for a trace, to the object each process resolves its
//! allocator to, scoped to that process (the kernel installs the breakpoints in its memory
//! alone); they are detached when the trace ends, and with the agent's descriptors if it dies.
//! Every call traps, so the common path is as short as the count-down allows: one per-CPU
//! lookup for an allocation, one hash lookup for a free.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
    Global,
};
use memlens_common::{
    allocator::{
        AllocCountdown, AllocCounter, AllocEvent, AllocEventKind, AllocPending,
        AllocSampleHeader, ALLOC_COUNTER_COUNT, GAP_TABLE_SIZE,
    },
    stack_copy::STACK_COPY_DATA,
};

use crate::{
    python,
    stack_copy::{copy_user_stack, Copied},
};

/// Bytes of `ALLOC_EVENTS`, set by the agent with the map's size.
#[no_mangle]
static ALLOC_EVENTS_BYTES: Global<u64> = Global::new(4096);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `BPF_F_NO_PREALLOC`: the live-block map takes memory only for the blocks it holds.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Exponential gaps in bytes (mean: the trace's sampling rate), filled by the agent.
#[map]
static ALLOC_GAPS: Array<u64> = Array::with_max_entries(GAP_TABLE_SIZE, 0);

#[map]
static ALLOC_COUNTDOWN: PerCpuArray<AllocCountdown> = PerCpuArray::with_max_entries(1, 0);

#[map]
static ALLOC_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ALLOC_COUNTER_COUNT, 0);

/// Sampled calls between entry and return, by thread; an LRU so that threads that die inside
/// a call cannot fill it.
#[map]
static ALLOC_PENDING: LruHashMap<u32, AllocPending> = LruHashMap::with_max_entries(4096, 0);

/// Sampled blocks not yet freed: block address -> sample id. Sized by the agent.
#[map]
static ALLOC_LIVE: HashMap<u64, u64> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Samples, returns and frees for the agent. Sized by the agent.
#[map]
static ALLOC_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// A sample as sent: header and stack copy (only `len` bytes of `data` reach the ring).
#[repr(C)]
pub struct AllocSampleRecord {
    header: AllocSampleHeader,
    data: [u8; STACK_COPY_DATA],
}

/// Where a sample is assembled (too large for the BPF stack).
#[map]
static ALLOC_SCRATCH: PerCpuArray<AllocSampleRecord> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count(counter: AllocCounter) {
    if let Some(value) = ALLOC_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; uprobe programs do not nest on one CPU.
        unsafe { *value += 1 };
    }
}

/// A gap drawn from the table.
#[inline(always)]
fn draw_gap() -> i64 {
    // SAFETY: no preconditions.
    let index = unsafe { bpf_get_prandom_u32() } & (GAP_TABLE_SIZE - 1);
    ALLOC_GAPS.get(index).map_or(1, |&g| g as i64)
}

/// Wakes the agent only when the ring is half full (a wake-up per record costs the traced
/// thread an interrupt).
#[inline(always)]
fn wakeup_flags() -> u64 {
    if ALLOC_EVENTS.query(BPF_RB_AVAIL_DATA) > ALLOC_EVENTS_BYTES.load() / 2 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn send(kind: AllocEventKind, id: u64, ptr: u64) {
    let event = AllocEvent {
        kind: kind as u32,
        reserved: 0,
        id,
        ptr,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if ALLOC_EVENTS.output::<AllocEvent>(&event, wakeup_flags()).is_err() {
        count(AllocCounter::RingFull);
    }
}

/// An allocating call of `size` bytes entered: counts down, and on a sample point sends the
/// sample (with its stack) and remembers the call until it returns. `memptr`: the out-pointer
/// of `posix_memalign`, else 0.
#[inline(always)]
fn on_alloc(ctx: &ProbeContext, size: u64, memptr: u64) {
    count(AllocCounter::AllocCalls);
    let Some(state) = ALLOC_COUNTDOWN.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value; uprobe programs do not nest on one CPU.
    let state = unsafe { &mut *state };
    if state.started == 0 {
        state.remaining = draw_gap();
        state.started = 1;
    }
    state.remaining -= size.min(i64::MAX as u64) as i64;
    if state.remaining > 0 {
        return;
    }
    // Sampled. The distance from here to the next point is a fresh gap (memoryless).
    state.remaining = draw_gap();
    state.sequence += 1;
    // SAFETY: no preconditions.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & 0xfff;
    let id = (state.sequence << 12) | cpu;
    count(AllocCounter::Samples);

    // SAFETY: a uprobe's context is the user registers at the probed instruction.
    let regs = unsafe { &*ctx.regs };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let pending = AllocPending {
        id,
        return_sp: regs.rsp.wrapping_add(8),
        memptr,
    };
    if ALLOC_PENDING.insert(&tid, &pending, 0).is_err() {
        count(AllocCounter::Unmatched);
        return;
    }
    let Some(record) = ALLOC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value; uprobe programs do not nest on one CPU.
    let record = unsafe { &mut *record };
    let tgid = (pid_tgid >> 32) as u32;
    let len = match copy_user_stack(&mut record.data, regs.rsp) {
        Copied::Bytes(n) => n,
        Copied::Off => 0,
        Copied::Failed => {
            count(AllocCounter::CopyErrors);
            0
        }
    };
    record.header = AllocSampleHeader {
        kind: AllocEventKind::Sample as u32,
        len: len as u32,
        id,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        pid: tid,
        size,
        ip: regs.rip,
        sp: regs.rsp,
        bp: regs.rbp,
        python_frames: 0,
        python_walk: 0,
    };
    // The Python frames follow the stack; the walk comes last (see `python::walk_after`).
    let header = &mut record.header;
    let Some(copied) = python::walk_after(
        tgid,
        tid,
        &mut record.data,
        &mut header.len,
        &mut header.python_frames,
        &mut header.python_walk,
    ) else {
        let _ = ALLOC_PENDING.remove(&tid);
        return;
    };
    let mut total = size_of::<AllocSampleHeader>() + copied;
    // Kept for older verifiers, as in `stack_copy::capture`.
    // SAFETY: `rN = rN` changes nothing.
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) total) };
    if total > size_of::<AllocSampleRecord>() {
        return;
    }
    // SAFETY: `record` is `size_of::<AllocSampleRecord>()` bytes and `total` is at most that.
    let bytes = unsafe {
        core::slice::from_raw_parts((record as *const AllocSampleRecord).cast::<u8>(), total)
    };
    if ALLOC_EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        count(AllocCounter::RingFull);
        let _ = ALLOC_PENDING.remove(&tid);
    }
}

/// A block is released (freed, or handed to realloc).
#[inline(always)]
fn on_free(ptr: u64) {
    count(AllocCounter::FreeCalls);
    if ptr == 0 {
        return;
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(id) = (unsafe { ALLOC_LIVE.get(&ptr) }).copied() else {
        return;
    };
    let _ = ALLOC_LIVE.remove(&ptr);
    count(AllocCounter::SampledFrees);
    send(AllocEventKind::Freed, id, ptr);
}

#[inline(always)]
fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// `malloc(size)`, `valloc(size)`, `pvalloc(size)`, `operator new(size, ...)`,
/// `mallocx(size, flags)`.
#[uprobe]
pub fn alloc_size_first(ctx: ProbeContext) -> u32 {
    on_alloc(&ctx, arg(&ctx, 0), 0);
    0
}

/// `memalign(alignment, size)`, `aligned_alloc(alignment, size)`.
#[uprobe]
pub fn alloc_size_second(ctx: ProbeContext) -> u32 {
    on_alloc(&ctx, arg(&ctx, 1), 0);
    0
}

/// `calloc(count, size)`.
#[uprobe]
pub fn alloc_calloc(ctx: ProbeContext) -> u32 {
    let (count, size) = (arg(&ctx, 0), arg(&ctx, 1));
    // An overflowing product fails in calloc; no 128-bit multiply in BPF.
    let total = if count >> 32 == 0 && size >> 32 == 0 {
        count * size
    } else {
        u64::MAX
    };
    on_alloc(&ctx, total, 0);
    0
}

/// `posix_memalign(memptr, alignment, size)`: the block is stored through `memptr`.
#[uprobe]
pub fn alloc_posix_memalign(ctx: ProbeContext) -> u32 {
    on_alloc(&ctx, arg(&ctx, 2), arg(&ctx, 0));
    0
}

/// `realloc(ptr, size)`, `rallocx(ptr, size, flags)`: the old block is released and a new one
/// allocated (in place or not, the same accounting: a free and an allocation).
#[uprobe]
pub fn alloc_realloc(ctx: ProbeContext) -> u32 {
    let (ptr, size) = (arg(&ctx, 0), arg(&ctx, 1));
    on_free(ptr);
    if size != 0 {
        on_alloc(&ctx, size, 0);
    }
    0
}

/// `free(ptr)`, `cfree(ptr)`, `operator delete(ptr, ...)`, `dallocx(ptr, flags)`,
/// `sdallocx(ptr, size, flags)`.
#[uprobe]
pub fn alloc_free(ctx: ProbeContext) -> u32 {
    on_free(arg(&ctx, 0));
    0
}

/// The return of every allocating function: a sampled call's block goes into `ALLOC_LIVE`.
#[uretprobe]
pub fn alloc_return(ctx: RetProbeContext) -> u32 {
    count(AllocCounter::Returns);
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is copied out before the entry is removed.
    let Some(pending) = (unsafe { ALLOC_PENDING.get(&tid) }).copied() else {
        return 0;
    };
    // SAFETY: a uretprobe's context is the user registers after the return.
    let regs = unsafe { &*ctx.regs };
    if regs.rsp != pending.return_sp {
        // A nested allocator call inside the sampled one.
        return 0;
    }
    let _ = ALLOC_PENDING.remove(&tid);
    let mut ptr = regs.rax;
    if pending.memptr != 0 {
        // posix_memalign returns 0 on success and stores the block through memptr.
        ptr = if ptr == 0 {
            // SAFETY: bpf_probe_read_user checks the address; a bad one returns an error.
            unsafe { bpf_probe_read_user(pending.memptr as *const u64) }.unwrap_or(0)
        } else {
            0
        };
    }
    if ptr != 0 && ALLOC_LIVE.insert(&ptr, &pending.id, 0).is_err() {
        count(AllocCounter::LiveFull);
        ptr = 0;
    }
    send(AllocEventKind::Returned, pending.id, ptr);
    0
}

/// The agent's measure of what a probe costs the traced thread: attached to a function of the
/// agent itself, entry and return, it does nothing, so the time a call takes with it attached
/// minus the time without is the kernel's trap and dispatch cost per probe.
#[uprobe]
pub fn alloc_calibrate(_ctx: ProbeContext) -> u32 {
    0
}

#[uretprobe]
pub fn alloc_calibrate_return(_ctx: RetProbeContext) -> u32 {
    0
}
