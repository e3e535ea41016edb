//! Page-cache accounting shared with the kernel programs: pages per (memory cgroup, file).

/// A file's page cache charged to one memory cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// Memory cgroup id the pages are charged to (0: not charged to any).
    pub memcg: u64,
    /// Inode number.
    pub ino: u64,
    /// The kernel's `dev_t` of the file's super block (`major << 20 | minor`).
    pub dev: u32,
    pub reserved: u32,
}

/// The record of the classic tracepoints `filemap:mm_filemap_add_to_page_cache` and
/// `mm_filemap_delete_from_page_cache` on 64-bit kernels that give the folio's order (6.x):
/// the kernel has already read the inode number and device, so the program reads only the
/// folio's memory cgroup. The program reads it at these fixed offsets (a tracepoint program may
/// read its record only at offsets known when it is verified); the agent checks them against the
/// tracepoint's `format` file and uses the raw tracepoints where they differ.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilemapRecord {
    /// `common_type`, `common_flags`, `common_preempt_count`, `common_pid`.
    pub common: u64,
    /// The (head) frame of the folio.
    pub pfn: u64,
    pub i_ino: u64,
    pub index: u64,
    pub s_dev: u32,
    /// The folio's order.
    pub order: u8,
}

/// Offsets the page-cache programs follow, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilemapOffsets {
    /// `folio.flags`
    pub folio_flags: u32,
    /// `folio._flags_1` (its low byte is the order of a large folio)
    pub folio_flags_1: u32,
    /// `folio.mapping`
    pub folio_mapping: u32,
    /// `folio.memcg_data`
    pub folio_memcg_data: u32,
    /// `address_space.host`
    pub mapping_host: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `inode.i_sb`
    pub inode_sb: u32,
    /// `super_block.s_dev`
    pub sb_dev: u32,
    /// `obj_cgroup.memcg`
    pub objcg_memcg: u32,
    /// `mem_cgroup.css`
    pub memcg_css: u32,
    /// `cgroup_subsys_state.serial_nr`: never reused within a boot, unlike the memory a removed
    /// cgroup's `mem_cgroup` leaves for the next one.
    pub css_serial_nr: u32,
    /// Bit number of `PG_head` in the folio flags.
    pub pg_head: u32,
    /// `MEMCG_DATA_KMEM`: `memcg_data` points to an `obj_cgroup`.
    pub memcg_data_kmem: u32,
    /// Low bits of `memcg_data` that are flags, not pointer.
    pub memcg_data_mask: u32,
    /// Non-zero when everything above was resolved.
    pub valid: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain #[repr(C)] data, no padding holes (u64, u64, u32, u32).
    unsafe impl aya::Pod for super::FileKey {}
    // SAFETY: plain #[repr(C)] data of u32 fields.
    unsafe impl aya::Pod for super::FilemapOffsets {}
}
