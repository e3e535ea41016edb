//! Kernel struct field offsets, computed by the agent from the running kernel's BTF and handed
//! to the kernel programs at load time (Rust eBPF has no CO-RE relocations).

/// Offsets to walk from the current `task_struct` to the id of its memory cgroup:
/// `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id`.
///
/// That walk gives the *memory* controller's cgroup on cgroup v1, v2 and hybrid hosts alike,
/// where `bpf_get_current_cgroup_id()` only knows the v2 hierarchy (KERNEL.md).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskMemcgOffsets {
    /// `task_struct.cgroups` (`struct css_set *`).
    pub task_cgroups: u32,
    /// `css_set.subsys[memory_cgrp_id]`: `offsetof(css_set, subsys) + 8 * memory_cgrp_id`.
    pub css_set_memory_subsys: u32,
    /// `cgroup_subsys_state.cgroup` (`struct cgroup *`).
    pub css_cgroup: u32,
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (u64; equals the cgroup directory's inode number).
    pub kernfs_node_id: u32,
    /// Non-zero when all offsets above were resolved; the programs skip the walk otherwise.
    pub valid: u32,
}

#[cfg(feature = "user")]
// SAFETY: plain #[repr(C)] data of u32 fields, no padding.
unsafe impl aya::Pod for TaskMemcgOffsets {}
