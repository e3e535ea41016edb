//! Struct layouts from the running kernel's BTF (`/sys/kernel/btf/vmlinux`), for the offsets the
//! kernel programs need (Rust eBPF has no CO-RE, so the agent relocates by hand).

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use memlens_common::{
    filemap::FilemapOffsets, lifecycle::LifecycleOffsets, offsets::TaskMemcgOffsets,
};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "this kernel exposes no BTF ({VMLINUX_BTF} is missing): memlens needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 are), or a BTF file for \
         this kernel given with --btf (e.g. from BTFHub)"
    )]
    Missing,
    #[error("the BTF file {0} does not exist")]
    MissingFile(String),
    #[error("cannot parse BTF from {0}: {1}")]
    Parse(String, String),
    #[error("BTF has no {0}")]
    NotFound(String),
}

/// The kernel's BTF, with the lookups memlens needs.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    /// The running kernel's BTF, or the file `path` when given.
    pub fn load(path: Option<&Path>) -> Result<KernelBtf, BtfError> {
        let file = path.unwrap_or(Path::new(VMLINUX_BTF));
        if !file.exists() {
            return Err(match path {
                Some(p) => BtfError::MissingFile(p.display().to_string()),
                None => BtfError::Missing,
            });
        }
        let btf = Btf::from_file(file)
            .map_err(|e| BtfError::Parse(file.display().to_string(), e.to_string()))?;
        Ok(KernelBtf { btf })
    }

    /// The definition of `struct name` (not a forward declaration).
    fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        self.btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NotFound(format!("struct {name}")))?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NotFound(format!("struct {name}")))
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Result<u64, BtfError> {
        Ok(self.find_struct(name)?.size() as u64)
    }

    /// Byte offset of member `member` in `struct name`, looking through unnamed struct and union
    /// members (where the kernel nests many fields).
    pub fn member_offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let s = self.find_struct(name)?;
        self.find_member(&s, member, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NotFound(format!("member {member} in struct {name}")))
    }

    fn find_member(&self, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = base_bits + m.bit_offset();
            if name == member {
                return Some(bits);
            }
            if name.is_empty() {
                if let Some(inner) = self.composite_of(m) {
                    if let Some(found) = self.find_member(&inner, member, bits) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// The struct or union a member's type resolves to, through typedefs and qualifiers.
    fn composite_of(&self, member: &dyn BtfType) -> Option<btf_rs::Struct> {
        let mut t = self.btf.resolve_chained_type(member).ok()?;
        for _ in 0..8 {
            t = match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(x) => self.btf.resolve_chained_type(&x).ok()?,
                Type::Const(x) => self.btf.resolve_chained_type(&x).ok()?,
                Type::Volatile(x) => self.btf.resolve_chained_type(&x).ok()?,
                _ => return None,
            };
        }
        None
    }

    /// Value of enumerator `member` of `enum name`.
    pub fn enum_value(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NotFound(format!("enum {name}")))?;
        for t in types {
            if let Type::Enum(en) = t {
                for m in &en.members {
                    if self.btf.resolve_name(m).is_ok_and(|n| n == member) {
                        return Ok(m.val());
                    }
                }
            }
        }
        Err(BtfError::NotFound(format!(
            "enumerator {member} of enum {name}"
        )))
    }

    /// Offsets for the page-cache programs.
    pub fn filemap_offsets(&self) -> Result<FilemapOffsets, BtfError> {
        let kmem = self.enum_value("page_memcg_data_flags", "MEMCG_DATA_KMEM")?;
        // Flags are the bits below __NR_MEMCG_DATA_FLAGS; pointers are 8-byte aligned anyway.
        let mask = self
            .enum_value("page_memcg_data_flags", "__NR_MEMCG_DATA_FLAGS")
            .map_or(7, |n| n.saturating_sub(1) | 7);
        Ok(FilemapOffsets {
            folio_flags: self.member_offset("folio", "flags")?,
            folio_flags_1: self.member_offset("folio", "_flags_1")?,
            folio_mapping: self.member_offset("folio", "mapping")?,
            folio_memcg_data: self.member_offset("folio", "memcg_data")?,
            mapping_host: self.member_offset("address_space", "host")?,
            inode_ino: self.member_offset("inode", "i_ino")?,
            inode_sb: self.member_offset("inode", "i_sb")?,
            sb_dev: self.member_offset("super_block", "s_dev")?,
            objcg_memcg: self.member_offset("obj_cgroup", "memcg")?,
            memcg_css: self.member_offset("mem_cgroup", "css")?,
            css_serial_nr: self.member_offset("cgroup_subsys_state", "serial_nr")?,
            pg_head: self.enum_value("pageflags", "PG_head")?,
            memcg_data_kmem: kmem,
            memcg_data_mask: mask,
            valid: 1,
        })
    }

    /// The task fields the lifecycle programs read (the tracepoint fields come from tracefs).
    pub fn lifecycle_task_offsets(&self) -> Result<LifecycleOffsets, BtfError> {
        Ok(LifecycleOffsets {
            task_pid: self.member_offset("task_struct", "pid")?,
            task_tgid: self.member_offset("task_struct", "tgid")?,
            task_exit_code: self.member_offset("task_struct", "exit_code")?,
            task_signal: self.member_offset("task_struct", "signal")?,
            signal_group_exit_code: self.member_offset("signal_struct", "group_exit_code")?,
            task_real_parent: self.member_offset("task_struct", "real_parent")?,
            ..LifecycleOffsets::default()
        })
    }

    /// Offsets of `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id`.
    pub fn task_memcg_offsets(&self) -> Result<TaskMemcgOffsets, BtfError> {
        let memory_id = self.enum_value("cgroup_subsys_id", "memory_cgrp_id")?;
        let subsys = self.member_offset("css_set", "subsys")?;
        Ok(TaskMemcgOffsets {
            task_cgroups: self.member_offset("task_struct", "cgroups")?,
            css_set_memory_subsys: subsys + 8 * memory_id,
            css_cgroup: self.member_offset("cgroup_subsys_state", "cgroup")?,
            cgroup_kn: self.member_offset("cgroup", "kn")?,
            kernfs_node_id: self.member_offset("kernfs_node", "id")?,
            valid: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets of this machine's kernel, checked by hand against KERNEL.md; the test only runs
    /// where the running kernel exposes BTF.
    #[test]
    fn offsets_from_the_running_kernel() {
        let Ok(btf) = KernelBtf::load(None) else {
            return;
        };
        let task = btf.task_memcg_offsets().expect("task offsets");
        assert_eq!(task.valid, 1);
        let files = btf.filemap_offsets().expect("filemap offsets");
        assert_eq!(
            files.folio_memcg_data,
            btf.member_offset("page", "memcg_data").expect("page")
        );
        assert!(files.pg_head > 0 && files.pg_head < 64);
        assert_eq!(files.memcg_data_kmem, 2);
        assert_eq!(files.memcg_data_mask & 3, 3);
        assert_eq!(btf.struct_size("page").expect("page"), 64);
    }
}
