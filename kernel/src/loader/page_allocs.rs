//! The `PAGE_ALLOCS` array, mapped into the agent's memory (`BPF_F_MMAPABLE`): a census reads
//! every entry, and one syscall per entry would cost more than the census itself.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Map, MapData};
use memlens_common::page::PageAlloc;
use memlens_model::census::AllocRecords;

use super::{ebpf_err, LoadError};

/// Read-only view of the kernel's array of sampled-page records.
pub struct PageAllocTable {
    /// Keeps the map (and so the mapping's backing) alive.
    _map: MapData,
    base: *const PageAlloc,
    entries: u64,
    mapped_len: usize,
}

// SAFETY: the mapping is read-only for us and lives as long as the table; entries are copied out
// with volatile reads, so concurrent kernel writes can at worst give a mixed entry, never UB in
// our memory.
unsafe impl Send for PageAllocTable {}
// SAFETY: as above; no interior mutation through &self.
unsafe impl Sync for PageAllocTable {}

impl PageAllocTable {
    pub(super) fn new(map: Map) -> Result<PageAllocTable, LoadError> {
        let Map::Array(data) = map else {
            return Err(LoadError::Ebpf("PAGE_ALLOCS", "is not an array map".into()));
        };
        let info = data.info().map_err(|e| ebpf_err("PAGE_ALLOCS info", e))?;
        let entries = u64::from(info.max_entries());
        let record = size_of::<PageAlloc>();
        let page = usize::try_from(memlens_procfs::system::page_size().0).unwrap_or(4096);
        let len = usize::try_from(entries)
            .ok()
            .and_then(|n| n.checked_mul(record))
            .map(|n| n.div_ceil(page) * page)
            .ok_or_else(|| LoadError::Config("PAGE_ALLOCS is too large to map".into()))?;
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE, read-only, shared.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(LoadError::Ebpf(
                "mapping PAGE_ALLOCS",
                std::io::Error::last_os_error().to_string(),
            ));
        }
        Ok(PageAllocTable {
            _map: data,
            base: addr.cast(),
            entries,
            mapped_len: len,
        })
    }

    /// Number of entries (superblocks).
    #[must_use]
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// Whether the table has no entry (never, once loaded: the frame range is never empty).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The record of superblock `index`, if in range.
    #[must_use]
    pub fn get(&self, index: u64) -> Option<PageAlloc> {
        if index >= self.entries {
            return None;
        }
        // SAFETY: index < entries, inside the mapping; PageAlloc is plain data.
        Some(unsafe { std::ptr::read_volatile(self.base.add(index as usize)) })
    }

    /// When superblock `index`'s record was written (0: never, or out of range): the field
    /// alone, one cache line instead of the record's three.
    #[must_use]
    pub fn written_at(&self, index: u64) -> u64 {
        if index >= self.entries {
            return 0;
        }
        // SAFETY: index < entries, inside the mapping; the field is a plain u64.
        unsafe {
            std::ptr::read_volatile(std::ptr::addr_of!((*self.base.add(index as usize)).ts_ns))
        }
    }
}

impl Drop for PageAllocTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.mapped_len) };
    }
}

impl AllocRecords for PageAllocTable {
    fn record(&self, superblock: u64) -> Option<PageAlloc> {
        self.get(superblock)
    }
}
