//! Facts about the current task: its memory cgroup, read through BTF-derived offsets.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_task_pt_regs,
    },
    Global,
};
use memlens_common::{offsets::TaskMemcgOffsets, page::LEAF_STACK_WORDS};

/// Offsets of `task->cgroups->subsys[memory]->cgroup->kn->id`, from the running kernel's BTF.
#[no_mangle]
static TASK_MEMCG_OFFSETS: Global<TaskMemcgOffsets> = Global::new(TaskMemcgOffsets {
    task_cgroups: 0,
    css_set_memory_subsys: 0,
    css_cgroup: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    valid: 0,
});

/// Reads a kernel pointer-sized value at `base + offset`.
#[inline(always)]
fn read_u64(base: u64, offset: u32) -> Result<u64, i32> {
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }
}

/// Id of the memory cgroup whose `cgroup_subsys_state` is at `css`: `css->cgroup->kn->id`.
#[inline(always)]
pub fn memcg_id_of(css: u64) -> Result<u64, i32> {
    let offsets = TASK_MEMCG_OFFSETS.load();
    if offsets.valid == 0 {
        return Err(0);
    }
    let cgroup = read_u64(css, offsets.css_cgroup)?;
    let kn = read_u64(cgroup, offsets.cgroup_kn)?;
    read_u64(kn, offsets.kernfs_node_id)
}

/// Memory cgroup id of the current task, or an error if the offsets are unknown or a read fails.
///
/// match-kernel: include/linux/sched.h task_struct.cgroups; include/linux/cgroup-defs.h
/// css_set.subsys, cgroup_subsys_state.cgroup, cgroup.kn; include/linux/kernfs.h kernfs_node.id
#[inline(always)]
pub fn current_memcg_id() -> Result<u64, i32> {
    // SAFETY: returns the current task_struct pointer; only used through probe reads.
    task_memcg_id(unsafe { bpf_get_current_task() })
}

/// Memory cgroup id of the task at `task` (a `task_struct` address).
#[inline(always)]
pub fn task_memcg_id(task: u64) -> Result<u64, i32> {
    let offsets = TASK_MEMCG_OFFSETS.load();
    if offsets.valid == 0 {
        return Err(0);
    }
    let css_set = read_u64(task, offsets.task_cgroups)?;
    let css = read_u64(css_set, offsets.css_set_memory_subsys)?;
    memcg_id_of(css)
}

/// Offsets of `struct pt_regs` fields, from BTF (x86-64: ip 128, sp 152, bp 32).
#[no_mangle]
static PT_REGS_SP_OFFSET: Global<u32> = Global::new(152);
#[no_mangle]
static PT_REGS_IP_OFFSET: Global<u32> = Global::new(128);
#[no_mangle]
static PT_REGS_BP_OFFSET: Global<u32> = Global::new(32);

/// The user registers unwinding needs, as the task entered the kernel.
#[derive(Clone, Copy)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// The current task's user registers.
///
/// match-kernel: arch/x86/include/asm/ptrace.h struct pt_regs.ip, .sp, .bp
#[inline(always)]
pub fn user_regs() -> Result<UserRegs, i32> {
    // SAFETY: returns the current task as a BTF pointer; only passed to bpf_task_pt_regs.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: the helper returns the task's user-mode registers.
    let regs = unsafe { bpf_task_pt_regs(task) } as u64;
    if regs == 0 {
        return Err(0);
    }
    Ok(UserRegs {
        ip: read_u64(regs, PT_REGS_IP_OFFSET.load())?,
        sp: read_u64(regs, PT_REGS_SP_OFFSET.load())?,
        bp: read_u64(regs, PT_REGS_BP_OFFSET.load())?,
    })
}

/// The words on top of the user stack at `sp`.
#[inline(always)]
pub fn user_stack_top(sp: u64) -> Result<[u64; LEAF_STACK_WORDS], i32> {
    // SAFETY: bpf_probe_read_user checks the address; a bad one returns an error.
    unsafe { bpf_probe_read_user(sp as *const [u64; LEAF_STACK_WORDS]) }
}
