//! Process and cgroup lifecycle: process exits with their status, OOM victims, cgroup
//! creation and removal, sent to the agent through a ring buffer so none is missed between two
//! samples of a cumulative counter.
//!
//! These are classic tracepoints: rare events, where the record's ready-made fields (the OOM
//! victim's resident memory, the cgroup's path) are worth more than the raw tracepoint's lower
//! dispatch cost.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
    EbpfContext, Global,
};
use memlens_common::{
    counters::Counter,
    lifecycle::{LifecycleEvent, LifecycleKind, LifecycleOffsets, PATH_BYTES, RSS_UNKNOWN},
};

use crate::{counters, task};

#[no_mangle]
static LIFECYCLE_OFFSETS: Global<LifecycleOffsets> = Global::new(LifecycleOffsets {
    exit_group_dead: -1,
    oom_pid: 0,
    oom_anon_rss: -1,
    oom_file_rss: -1,
    oom_shmem_rss: -1,
    cgroup_root: 0,
    cgroup_level: 0,
    cgroup_id: 0,
    cgroup_path: 0,
    task_pid: 0,
    task_tgid: 0,
    task_exit_code: 0,
    task_signal: 0,
    signal_group_exit_code: 0,
    task_real_parent: 0,
    valid: 0,
});

/// Sized by the agent (bytes, a power of two).
#[map]
static LIFECYCLE: RingBuf = RingBuf::with_byte_size(4096, 0);

#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }
}

/// Reserves an event, lets `fill` write it, submits it; a full ring buffer is counted.
#[inline(always)]
fn emit(fill: impl FnOnce(&mut LifecycleEvent)) {
    let Some(mut entry) = LIFECYCLE.reserve::<LifecycleEvent>(0) else {
        counters::add(Counter::LifecycleDropped, 1);
        return;
    };
    // SAFETY: a reserved, exclusively owned slot of the right size; every byte is written
    // before submit.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    *event = LifecycleEvent {
        kind: 0,
        pid: 0,
        // SAFETY: no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        memcg: 0,
        exit_code: 0,
        group_exit_code: 0,
        anon_rss: 0,
        file_rss: 0,
        shmem_rss: 0,
        parent_memcg: 0,
        comm: [0; 16],
        path: [0; PATH_BYTES],
    };
    fill(event);
    entry.submit(0);
}

/// match-kernel: include/trace/events/sched.h TRACE_EVENT(sched_process_exit) (comm, pid, prio,
/// group_dead); include/linux/sched.h task_struct.exit_code, .signal; signal_struct.group_exit_code
#[tracepoint]
pub fn process_exit(ctx: TracePointContext) -> i32 {
    let o = LIFECYCLE_OFFSETS.load();
    if o.valid == 0 {
        return 0;
    }
    // SAFETY: the exiting task is the current one at this tracepoint.
    let task = unsafe { bpf_get_current_task() };
    let (Ok(pid), Ok(tgid)) = (read::<i32>(task, o.task_pid), read::<i32>(task, o.task_tgid)) else {
        return 0;
    };
    let process_ends = match u32::try_from(o.exit_group_dead) {
        // SAFETY: the offset comes from this tracepoint's format file.
        Ok(at) => unsafe { ctx.read_at::<u8>(at as usize) }.is_ok_and(|dead| dead != 0),
        Err(_) => pid == tgid,
    };
    if !process_ends {
        return 0;
    }
    let exit_code = read::<i32>(task, o.task_exit_code).unwrap_or(0);
    let group_exit_code = read::<u64>(task, o.task_signal)
        .and_then(|signal| read::<i32>(signal, o.signal_group_exit_code))
        .unwrap_or(0);
    emit(|e| {
        e.kind = LifecycleKind::Exit as u32;
        e.pid = tgid as u32;
        e.memcg = task::current_memcg_id().unwrap_or(0);
        e.exit_code = exit_code;
        e.group_exit_code = group_exit_code;
        e.parent_memcg = read::<u64>(task, o.task_real_parent)
            .and_then(task::task_memcg_id)
            .unwrap_or(0);
        e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    });
    0
}

/// A resident-memory field of `mark_victim`'s record, or [`RSS_UNKNOWN`] when the kernel's
/// record has no such field (offset -1).
///
/// # Safety
/// `offset`, when not negative, comes from this tracepoint's format file.
#[inline(always)]
unsafe fn read_rss(ctx: &TracePointContext, offset: i32) -> Result<u64, i32> {
    match u32::try_from(offset) {
        // SAFETY: the caller's.
        Ok(offset) => unsafe { ctx.read_at::<u64>(offset as usize) },
        Err(_) => Ok(RSS_UNKNOWN),
    }
}

/// match-kernel: include/trace/events/oom.h TRACE_EVENT(mark_victim) (pid, comm, total_vm,
/// anon_rss, file_rss, shmem_rss, uid, pgtables, oom_score_adj)
#[tracepoint]
pub fn oom_victim(ctx: TracePointContext) -> i32 {
    let o = LIFECYCLE_OFFSETS.load();
    if o.valid == 0 {
        return 0;
    }
    // SAFETY: offsets from this tracepoint's format file.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(o.oom_pid as usize),
            read_rss(&ctx, o.oom_anon_rss),
            read_rss(&ctx, o.oom_file_rss),
            read_rss(&ctx, o.oom_shmem_rss),
        )
    };
    let (Ok(pid), Ok(anon), Ok(file), Ok(shmem)) = fields else {
        return 0;
    };
    emit(|e| {
        e.kind = LifecycleKind::OomVictim as u32;
        e.pid = pid as u32;
        e.memcg = task::current_memcg_id().unwrap_or(0);
        e.anon_rss = anon;
        e.file_rss = file;
        e.shmem_rss = shmem;
    });
    0
}

/// match-kernel: include/trace/events/cgroup.h DECLARE_EVENT_CLASS(cgroup) (root, level, id,
/// path)
#[tracepoint]
pub fn cgroup_mkdir(ctx: TracePointContext) -> i32 {
    cgroup_event(&ctx, LifecycleKind::CgroupMkdir);
    0
}

#[tracepoint]
pub fn cgroup_rmdir(ctx: TracePointContext) -> i32 {
    cgroup_event(&ctx, LifecycleKind::CgroupRmdir);
    0
}

#[inline(always)]
fn cgroup_event(ctx: &TracePointContext, kind: LifecycleKind) {
    let o = LIFECYCLE_OFFSETS.load();
    if o.valid == 0 {
        return;
    }
    // SAFETY: offsets from this tracepoint's format file.
    let fields = unsafe {
        (
            ctx.read_at::<i32>(o.cgroup_root as usize),
            ctx.read_at::<i32>(o.cgroup_level as usize),
            ctx.read_at::<u64>(o.cgroup_id as usize),
            ctx.read_at::<u32>(o.cgroup_path as usize),
        )
    };
    let (Ok(root), Ok(level), Ok(id), Ok(loc)) = fields else {
        return;
    };
    // __data_loc: the low 16 bits are the offset of the string in the record.
    let path_at = ctx.as_ptr() as u64 + u64::from(loc & 0xffff);
    emit(|e| {
        e.kind = kind as u32;
        e.memcg = id;
        e.exit_code = root;
        e.group_exit_code = level;
        // SAFETY: reads a NUL-terminated string from the tracepoint record, bounded by the buffer.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(path_at as *const u8, &mut e.path) };
    });
}
