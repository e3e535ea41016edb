//! Physical memory as the kernel describes it: the frame number range (`/proc/zoneinfo`) and the
//! per-frame state files `/proc/kpagecgroup` (memory cgroup a page is charged to) and
//! `/proc/kpageflags` (what kind of page it is). See the kernel's
//! Documentation/admin-guide/mm/pagemap.rst.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use crate::units::{MemcgId, Pfn};

pub const KPAGECGROUP: &str = "/proc/kpagecgroup";
pub const KPAGEFLAGS: &str = "/proc/kpageflags";

/// `/proc/kpageflags` bits (include/uapi/linux/kernel-page-flags.h).
mod kpf {
    pub const LRU: u64 = 1 << 5;
    pub const SLAB: u64 = 1 << 7;
    pub const MMAP: u64 = 1 << 11;
    pub const ANON: u64 = 1 << 12;
    pub const PGTABLE: u64 = 1 << 26;
}

/// One past the highest page frame number of any memory zone.
pub fn end_pfn() -> io::Result<Pfn> {
    let text = std::fs::read_to_string("/proc/zoneinfo")?;
    Ok(end_pfn_in(&text))
}

fn end_pfn_in(zoneinfo: &str) -> Pfn {
    // Each zone has "spanned N" then "start_pfn: S"; the zone ends at S + N.
    let mut spanned = 0u64;
    let mut end = 0u64;
    for line in zoneinfo.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("spanned"), Some(n)) => spanned = n.parse().unwrap_or(0),
            (Some("start_pfn:"), Some(s)) => {
                let start: u64 = s.parse().unwrap_or(0);
                end = end.max(start.saturating_add(spanned));
            }
            _ => {}
        }
    }
    Pfn(end)
}

/// What a page is used for, from its flags.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PageKind {
    Anon,
    File,
    /// Slab, page tables and other kernel pages charged to a cgroup.
    Kernel,
}

impl PageKind {
    #[must_use]
    pub fn from_flags(flags: u64) -> PageKind {
        if flags & kpf::ANON != 0 {
            PageKind::Anon
        } else if flags & (kpf::SLAB | kpf::PGTABLE) != 0 {
            PageKind::Kernel
        } else if flags & (kpf::LRU | kpf::MMAP) != 0 {
            PageKind::File
        } else {
            PageKind::Kernel
        }
    }
}

/// Open handles on the per-frame state files.
pub struct PageState {
    cgroup: File,
    flags: File,
}

impl PageState {
    /// Opens both files; fails on kernels without CONFIG_PROC_PAGE_MONITOR or without
    /// CAP_SYS_ADMIN.
    pub fn open() -> io::Result<PageState> {
        Ok(PageState {
            cgroup: File::open(KPAGECGROUP)?,
            flags: File::open(KPAGEFLAGS)?,
        })
    }

    /// The memory cgroup `pfn` is charged to, if any.
    pub fn memcg(&self, pfn: Pfn) -> io::Result<Option<MemcgId>> {
        let id = read_u64_at(&self.cgroup, pfn)?;
        Ok((id != 0).then_some(MemcgId(id)))
    }

    /// The page's `/proc/kpageflags` word.
    pub fn flags(&self, pfn: Pfn) -> io::Result<u64> {
        read_u64_at(&self.flags, pfn)
    }
}

fn read_u64_at(file: &File, pfn: Pfn) -> io::Result<u64> {
    let mut word = [0u8; 8];
    match file.read_at(&mut word, pfn.0.saturating_mul(8))? {
        8 => Ok(u64::from_ne_bytes(word)),
        // Past the end of memory: no page.
        _ => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_pfn_from_a_real_zoneinfo() {
        let zoneinfo = include_str!("fixtures/zoneinfo");
        // Normal zone: start 1048576 + spanned 5505024.
        assert_eq!(end_pfn_in(zoneinfo), Pfn(6_553_600));
    }

    #[test]
    fn page_kinds_from_flags() {
        assert_eq!(
            PageKind::from_flags(kpf::ANON | kpf::LRU | kpf::MMAP),
            PageKind::Anon
        );
        assert_eq!(PageKind::from_flags(kpf::LRU), PageKind::File);
        assert_eq!(PageKind::from_flags(kpf::SLAB), PageKind::Kernel);
        assert_eq!(PageKind::from_flags(0), PageKind::Kernel);
    }
}
