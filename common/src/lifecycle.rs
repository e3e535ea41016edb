//! Process and cgroup lifecycle events, sent by the kernel programs through a ring buffer.

/// What happened.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleKind {
    /// A process (its last thread) exited.
    Exit = 1,
    /// The OOM killer chose a victim (`oom:mark_victim`).
    OomVictim = 2,
    /// A cgroup directory was created.
    CgroupMkdir = 3,
    /// A cgroup directory was removed.
    CgroupRmdir = 4,
}

impl LifecycleKind {
    #[must_use]
    pub fn from_u32(v: u32) -> Option<LifecycleKind> {
        match v {
            1 => Some(LifecycleKind::Exit),
            2 => Some(LifecycleKind::OomVictim),
            3 => Some(LifecycleKind::CgroupMkdir),
            4 => Some(LifecycleKind::CgroupRmdir),
            _ => None,
        }
    }
}

/// Bytes of a cgroup path carried by mkdir/rmdir events (longer paths are cut).
pub const PATH_BYTES: usize = 256;

/// One event. Fields not meaningful for a kind are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub kind: u32,
    /// Process id (thread group id) of the exiting process or the OOM victim.
    pub pid: u32,
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// Exit: the memory cgroup of the exiting process; OOM victim: that of the task whose
    /// allocation invoked the OOM killer; mkdir/rmdir: the new/removed cgroup's id.
    pub memcg: u64,
    /// Exit: `task->exit_code`; mkdir/rmdir: the hierarchy id.
    pub exit_code: i32,
    /// Exit: `task->signal->group_exit_code`; mkdir/rmdir: the cgroup's level.
    pub group_exit_code: i32,
    /// OOM victim: resident KiB by type at the kill (as the tracepoint reports them).
    pub anon_rss: u64,
    pub file_rss: u64,
    pub shmem_rss: u64,
    /// Exit: the memory cgroup of the process' parent; differs from `memcg` for a cgroup's main
    /// process (a container's init, started from outside it).
    pub parent_memcg: u64,
    pub comm: [u8; 16],
    /// mkdir/rmdir: the cgroup's path in its hierarchy, NUL-terminated.
    pub path: [u8; PATH_BYTES],
}

/// An OOM victim's resident memory the kernel's record did not give.
pub const RSS_UNKNOWN: u64 = u64::MAX;

/// Offsets the lifecycle programs need: tracepoint record fields (from `format` files) and
/// task fields (from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifecycleOffsets {
    /// `sched_process_exit`'s `group_dead` field, or -1 when the kernel's record has none (then
    /// a thread-group leader's exit stands for the process').
    pub exit_group_dead: i32,
    pub oom_pid: u32,
    /// `mark_victim`'s `anon_rss`, `file_rss` and `shmem_rss` fields, or -1 each when the
    /// kernel's record has none (before 6.8 it carried only the pid; some distributions
    /// backported them): the event then carries [`RSS_UNKNOWN`].
    pub oom_anon_rss: i32,
    pub oom_file_rss: i32,
    pub oom_shmem_rss: i32,
    pub cgroup_root: u32,
    pub cgroup_level: u32,
    pub cgroup_id: u32,
    /// `__data_loc` word of the cgroup path.
    pub cgroup_path: u32,
    /// `task_struct.pid`, `.tgid`, `.exit_code`, `.signal`; `signal_struct.group_exit_code`.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_exit_code: u32,
    pub task_signal: u32,
    pub signal_group_exit_code: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data (u32/i32/u64 and byte arrays, 8-aligned, no holes).
    unsafe impl aya::Pod for super::LifecycleEvent {}
    // SAFETY: plain #[repr(C)] data of 4-byte fields.
    unsafe impl aya::Pod for super::LifecycleOffsets {}
}
