//! Page allocator probes: deterministic sampling of page frames, each with its stacks.
//!
//! One program runs on every page allocation (`kmem:mm_page_alloc`), so its common path is kept
//! to a handful of instructions: turn the page into a frame number, decide with
//! [`sampled_frames`] whether the block holds a sampled frame, and return. Only for sampled frames
//! (one in `2^SAMPLE_SHIFT`) does it capture stacks and write a [`PageAlloc`] record. There is no
//! program on the free path: the agent reads whether a sampled page is still held, and by which
//! memory cgroup, from the kernel's own page state (see `memlens_common::page`).
//!
//! Two attachments of the same logic: a raw tracepoint (cheapest: no trace record is built, the
//! argument is the `struct page *`), and the classic tracepoint as a fallback (gives the pfn, but
//! fills a trace record on every allocation).

use aya_ebpf::{
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_stack, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext, Global,
};
use memlens_common::{
    counters::Counter,
    page::{
        sampled_frames, stack_key, AllocTracepointFields, CalibrationSample, PageAlloc,
        SampledFrames, StackFrames, LEAF_STACK_WORDS, MAX_SAMPLED_PER_ALLOC,
    },
};

use crate::{counters, stack_copy, task};

/// `BPF_F_MMAPABLE`: lets the agent read the array without a syscall per entry.
const BPF_F_MMAPABLE: u32 = 1 << 10;
const EFAULT: i64 = 14;
const EEXIST: i64 = 17;
const ENOMEM: i64 = 12;
const E2BIG: i64 = 7;

/// log2 of the number of page frames per superblock (one sampled frame per superblock).
#[no_mangle]
static SAMPLE_SHIFT: Global<u32> = Global::new(6);
/// Rotation of the sampled offsets (`memlens_common::page::sampled_offset`).
#[no_mangle]
static SAMPLE_SEED: Global<u64> = Global::new(0);
/// Number of entries of `PAGE_ALLOCS` (superblocks covering the highest frame at load).
#[no_mangle]
static SUPERBLOCKS: Global<u64> = Global::new(0);
/// Address of the `struct page` of frame 0 (x86-64 `vmemmap_base`), calibrated by the agent.
#[no_mangle]
static VMEMMAP_BASE: Global<u64> = Global::new(0);
/// `sizeof(struct page)`, from BTF.
#[no_mangle]
static PAGE_STRUCT_SIZE: Global<u64> = Global::new(64);
/// log2 of `sizeof(struct page)` when it is a power of two (64 on common configurations), else 0:
/// a shift instead of a division on the path every allocation takes.
#[no_mangle]
static PAGE_STRUCT_SHIFT: Global<u32> = Global::new(6);
/// Field offsets of the classic tracepoint's record, from its `format` file.
#[no_mangle]
static ALLOC_TP_FIELDS: Global<AllocTracepointFields> = Global::new(AllocTracepointFields {
    pfn: 8,
    order: 16,
    gfp_flags: 24,
    reserved: 0,
});
/// Process whose allocations the calibration program records.
#[no_mangle]
static CALIBRATION_TGID: Global<u32> = Global::new(0);

/// The address of frame `pfn`'s `struct page` (a probe read of it fails when out of range).
#[inline(always)]
pub(crate) fn page_of(pfn: u64) -> u64 {
    let shift = PAGE_STRUCT_SHIFT.load();
    let offset = if shift != 0 {
        pfn << shift
    } else {
        pfn.wrapping_mul(PAGE_STRUCT_SIZE.load())
    };
    VMEMMAP_BASE.load().wrapping_add(offset)
}

/// Latest allocation of each sampled frame, indexed by superblock number.
#[map]
static PAGE_ALLOCS: Array<PageAlloc> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Kernel and user stacks of sampled allocations, by content ([`stack_key`]). Sized by the
/// agent, which also deletes the stacks no live record refers to any more.
#[map]
static STACKS: HashMap<u64, StackFrames> = HashMap::with_max_entries(1, 0);

/// Per-CPU room for the stack being taken (too large for the program's stack).
#[map]
static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);

/// Calibration results: `CALIBRATION[0].page` counts samples, entries `1..` hold them.
#[map]
static CALIBRATION: Array<CalibrationSample> = Array::with_max_entries(65, 0);

/// match-kernel: include/trace/events/kmem.h TRACE_EVENT(mm_page_alloc,
/// TP_PROTO(struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype))
#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn page_alloc_raw(ctx: RawTracePointContext) -> i32 {
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: a raw tracepoint's context is its argument array; mm_page_alloc has four.
    let (page, order, gfp) = unsafe { (*args, *args.add(1), *args.add(2)) };
    if page == 0 {
        return 0; // failed allocation
    }
    let offset = page.wrapping_sub(VMEMMAP_BASE.load());
    let shift = PAGE_STRUCT_SHIFT.load();
    let pfn = if shift != 0 {
        offset >> shift
    } else {
        match offset.checked_div(PAGE_STRUCT_SIZE.load()) {
            Some(pfn) => pfn,
            None => return 0,
        }
    };
    on_alloc(&ctx, pfn, order as u32, gfp);
    0
}

/// Same as [`page_alloc_raw`] through the classic tracepoint, whose record carries the pfn.
#[tracepoint]
pub fn page_alloc_tp(ctx: TracePointContext) -> i32 {
    let fields = ALLOC_TP_FIELDS.load();
    // SAFETY: offsets come from this tracepoint's format file.
    let read = unsafe {
        (
            ctx.read_at::<u64>(fields.pfn as usize),
            ctx.read_at::<u32>(fields.order as usize),
            ctx.read_at::<u64>(fields.gfp_flags as usize),
        )
    };
    if let (Ok(pfn), Ok(order), Ok(gfp)) = read {
        if pfn != u64::MAX {
            on_alloc(&ctx, pfn, order, gfp);
        }
    }
    0
}

/// Records the `struct page` pointers of the calibrating process's allocations, so the agent
/// can pair them with the frame numbers it reads from `/proc/self/pagemap`.
#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn page_alloc_calibrate(ctx: RawTracePointContext) -> i32 {
    if (bpf_get_current_pid_tgid() >> 32) as u32 != CALIBRATION_TGID.load() {
        return 0;
    }
    let args = ctx.as_ptr() as *const u64;
    // SAFETY: as in page_alloc_raw.
    let (page, order) = unsafe { (*args, *args.add(1)) };
    let Some(head) = CALIBRATION.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: map value pointer; the calibrating process is single-threaded while this runs.
    let next = unsafe { (*head).page } + 1;
    if next < 65 {
        if let Some(slot) = CALIBRATION.get_ptr_mut(next as u32) {
            // SAFETY: map value pointer.
            unsafe {
                *slot = CalibrationSample { page, order };
                (*head).page = next;
            }
        }
    }
    0
}

/// Walking the kernel stack is the most expensive part of a sampled allocation (about 4 us here),
/// and code that allocates in a loop reaches the allocator through the same kernel path again and
/// again. So the kernel stack id is remembered per CPU by user context (the user stack id of a
/// frame-pointer walk, else the user instruction and stack pointers of a stack copy) for
/// `KERNEL_STACK_REUSE_NS` and reused within that time. Kernel threads (no user context) always
/// get a fresh walk.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct KernelStackMemo {
    user_key: u64,
    kernel_stack: u64,
    ts_ns: u64,
}

/// How long a remembered kernel stack is reused; 0 walks every time.
#[no_mangle]
static KERNEL_STACK_REUSE_NS: Global<u64> = Global::new(100_000_000);

const MEMO_SLOTS: u32 = 256;

#[map]
static KERNEL_STACK_MEMO: PerCpuArray<KernelStackMemo> =
    PerCpuArray::with_max_entries(MEMO_SLOTS, 0);

#[inline(always)]
fn kernel_stack_for<C: EbpfContext>(ctx: &C, user_key: u64, now: u64) -> u64 {
    let reuse_ns = KERNEL_STACK_REUSE_NS.load();
    if user_key == 0 || reuse_ns == 0 {
        return walk_kernel_stack(ctx);
    }
    let Some(memo) = KERNEL_STACK_MEMO.get_ptr_mut((user_key % u64::from(MEMO_SLOTS)) as u32)
    else {
        return walk_kernel_stack(ctx);
    };
    // SAFETY: per-CPU map value; this program does not nest on one CPU.
    let memo = unsafe { &mut *memo };
    if memo.user_key == user_key && now.wrapping_sub(memo.ts_ns) < reuse_ns {
        counters::add(Counter::KernelStackReused, 1);
        return memo.kernel_stack;
    }
    let kernel_stack = walk_kernel_stack(ctx);
    if kernel_stack != 0 {
        *memo = KernelStackMemo {
            user_key,
            kernel_stack,
            ts_ns: now,
        };
    }
    kernel_stack
}

/// Takes the kernel stack (`flags` 0) or the frame-pointer walk of the user stack
/// (`BPF_F_USER_STACK`) into `STACKS`; returns its key, or the helper's negative errno (a full
/// map is counted here).
#[inline(always)]
fn take_stack<C: EbpfContext>(ctx: &C, flags: u64) -> Result<u64, i64> {
    let Some(scratch) = STACK_SCRATCH.get_ptr_mut(0) else {
        return Err(-EFAULT);
    };
    // SAFETY: the helper writes at most the given size into the per-CPU map value, and zeroes
    // what follows the stack, so equal stacks are equal values.
    let len = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            scratch.cast(),
            size_of::<StackFrames>() as u32,
            flags,
        )
    };
    if len <= 0 {
        // An empty user stack: no user context (a kernel thread).
        return Err(if len == 0 { -EFAULT } else { len });
    }
    // SAFETY: per-CPU map value, written above; this program does not nest on one CPU.
    let frames = unsafe { &*scratch };
    let key = stack_key(frames);
    match STACKS
        .insert(&key, frames, u64::from(BPF_NOEXIST))
        .map_err(i64::from)
    {
        Ok(()) => Ok(key),
        // Already kept: the same stack, by construction of the key.
        Err(e) if e == -EEXIST => Ok(key),
        Err(e) => {
            if map_full(e) {
                counters::add(Counter::StackMapFull, 1);
            }
            Err(e)
        }
    }
}

/// Whether a map update failed for want of room (counted as such, not as an error).
#[inline(always)]
fn map_full(e: i64) -> bool {
    e == -E2BIG || e == -ENOMEM
}

/// The frame-pointer walk of the user stack: its key in `STACKS`, or 0.
#[inline(always)]
fn walk_user_stack<C: EbpfContext>(ctx: &C) -> u64 {
    match take_stack(ctx, u64::from(BPF_F_USER_STACK)) {
        Ok(key) => key,
        Err(e) => {
            if e == -EFAULT {
                counters::add(Counter::UserStackNone, 1);
            } else if !map_full(e) {
                counters::add(Counter::UserStackErrors, 1);
            }
            0
        }
    }
}

/// The kernel stack: its key in `STACKS`, or 0.
#[inline(always)]
fn walk_kernel_stack<C: EbpfContext>(ctx: &C) -> u64 {
    match take_stack(ctx, 0) {
        Ok(key) => key,
        Err(e) => {
            if !map_full(e) {
                counters::add(Counter::KernelStackErrors, 1);
            }
            0
        }
    }
}

#[inline(always)]
fn on_alloc<C: EbpfContext>(ctx: &C, pfn: u64, order: u32, gfp: u64) {
    let frames = sampled_frames(pfn, order, SAMPLE_SHIFT.load(), SAMPLE_SEED.load());
    if frames.count != 0 {
        record(ctx, frames, order, gfp);
    }
}

/// The sampled path: stacks, task identity, and one record per sampled frame of the block.
#[inline(always)]
fn record<C: EbpfContext>(ctx: &C, frames: SampledFrames, order: u32, gfp: u64) {
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    // A copy of the user stack, unwound in userspace with the binaries' unwind tables, replaces
    // the frame-pointer walk; the walk (and the words a frameless leaf's caller is read from)
    // only where there is no copy: copying off, the ring full, the stack unreadable.
    // Plain values rather than options here and below: an option's unset payload is an
    // uninitialized register to the 6.1 verifier, which refuses to spill it. A zero stack
    // pointer is no user context.
    let regs = task::user_regs().unwrap_or(task::UserRegs {
        ip: 0,
        sp: 0,
        bp: 0,
    });
    let has_user = regs.sp != 0;
    // The kernel-stack memo's key for this user context; 0: none (always walk).
    let copied_key = if has_user && stack_copy::capture(now, pid_tgid, regs, frames) {
        (regs.ip ^ regs.sp.rotate_left(32)) | 1
    } else {
        0
    };
    let copied = copied_key != 0;
    let (user_stack, user_key) = if copied {
        (0, copied_key)
    } else {
        let key = walk_user_stack(ctx);
        (key, key)
    };
    let kernel_stack = kernel_stack_for(ctx, user_key, now);
    let task_memcg = task::current_memcg_id().unwrap_or_else(|_| {
        counters::add(Counter::TaskMemcgErrors, 1);
        0
    });
    let (user_sp, user_stack_top) = if has_user && !copied && user_stack != 0 {
        let top = task::user_stack_top(regs.sp).unwrap_or_else(|_| {
            counters::add(Counter::UserStackTopErrors, 1);
            [0; LEAF_STACK_WORDS]
        });
        (regs.sp, top)
    } else {
        (0, [0; LEAF_STACK_WORDS])
    };
    let entry = PageAlloc {
        ts_ns: now,
        task_memcg,
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        kernel_stack,
        user_stack,
        gfp_flags: gfp as u32,
        order: order as u16,
        user_copied: u8::from(copied),
        reserved: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        user_sp,
        user_stack_top,
    };

    counters::add(Counter::SampledAllocs, 1);
    let mut count = frames.count;
    if count > u64::from(MAX_SAMPLED_PER_ALLOC) {
        counters::add(
            Counter::HighOrderTruncated,
            count - u64::from(MAX_SAMPLED_PER_ALLOC),
        );
        count = u64::from(MAX_SAMPLED_PER_ALLOC);
    }
    let superblocks = SUPERBLOCKS.load();
    // One path through each iteration (every exit leaves the loop): the verifier walks this
    // loop once per state it enters with, and a count that differed between a success and a
    // failure branch made states it could not merge, past the 6.1 verifier's 1M-instruction
    // budget. A lookup only fails out of range, which the check before it excludes.
    let mut recorded = 0;
    while recorded < u64::from(MAX_SAMPLED_PER_ALLOC) && recorded < count {
        let superblock = frames.first_superblock + recorded;
        if superblock >= superblocks {
            counters::add(Counter::OutOfRange, count - recorded);
            break;
        }
        let Some(slot) = PAGE_ALLOCS.get_ptr_mut(superblock as u32) else {
            break;
        };
        // SAFETY: map value pointer of the right type.
        unsafe { *slot = entry };
        recorded += 1;
    }
    counters::add(Counter::SampledFrames, recorded);
}
