//! Physical memory as the kernel describes it: the frame number range (`/proc/zoneinfo`) and the
//! per-frame state files `/proc/kpagecgroup` (memory cgroup a page is charged to) and
//! `/proc/kpageflags` (what kind of page it is). See the kernel's
//! Documentation/admin-guide/mm/pagemap.rst.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    sync::atomic::{AtomicBool, Ordering},
};

use memlens_types::{MemcgId, PageKind, Pfn};

pub const KPAGECGROUP: &str = "/proc/kpagecgroup";
pub const KPAGEFLAGS: &str = "/proc/kpageflags";

/// `/proc/kpageflags` bits (include/uapi/linux/kernel-page-flags.h).
mod kpf {
    pub const LRU: u64 = 1 << 5;
    pub const SLAB: u64 = 1 << 7;
    pub const MMAP: u64 = 1 << 11;
    pub const ANON: u64 = 1 << 12;
    pub const COMPOUND_HEAD: u64 = 1 << 15;
    pub const COMPOUND_TAIL: u64 = 1 << 16;
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

/// What a page is used for, from its `/proc/kpageflags` word.
#[must_use]
pub fn page_kind(flags: u64) -> PageKind {
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

/// Open handles on the per-frame state files.
pub struct PageState {
    cgroup: File,
    flags: File,
    /// Seen a charged tail page: this kernel reports tail pages' cgroups itself, so an
    /// uncharged frame needs no second look (see [`PageState::charged`]).
    tails_reported: AtomicBool,
}

impl PageState {
    /// Opens both files; fails on kernels without CONFIG_PROC_PAGE_MONITOR or without
    /// CAP_SYS_ADMIN.
    pub fn open() -> io::Result<PageState> {
        Ok(PageState {
            cgroup: File::open(KPAGECGROUP)?,
            flags: File::open(KPAGEFLAGS)?,
            tails_reported: AtomicBool::new(false),
        })
    }

    /// The memory cgroup `pfn` is charged to and its `/proc/kpageflags` word, or None when no
    /// cgroup is charged for it. For a tail page of a large folio (a transparent huge page,
    /// say) the cgroup is its head's.
    ///
    /// Kernels that read the charge from the page itself (6.1) report no cgroup for tail pages:
    /// only the head carries `memcg_data`. Kernels that read it from the folio (6.12) report the
    /// head's cgroup for every page. With THP `always`, most of a workload's anonymous memory
    /// is tail pages, so without this its held memory was under-estimated fiftyfold on 6.1.
    /// Looking closer costs a flags read per uncharged frame (most frames): it stops at the
    /// first charged tail page, which shows the kernel needs none of it.
    pub fn charged(&self, pfn: Pfn) -> io::Result<Option<(MemcgId, u64)>> {
        let id = read_u64_at(&self.cgroup, pfn)?;
        if id != 0 {
            let flags = read_u64_at(&self.flags, pfn)?;
            if flags & kpf::COMPOUND_TAIL != 0 {
                self.tails_reported.store(true, Ordering::Relaxed);
            }
            return Ok(Some((MemcgId(id), flags)));
        }
        if self.tails_reported.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let flags = read_u64_at(&self.flags, pfn)?;
        if flags & kpf::COMPOUND_TAIL == 0 {
            return Ok(None);
        }
        let Some(head) = head_of(pfn, |p| read_u64_at(&self.flags, p))? else {
            return Ok(None);
        };
        let id = read_u64_at(&self.cgroup, head)?;
        Ok((id != 0).then_some((MemcgId(id), flags)))
    }
}

/// Largest folio order looked through for a tail page's head: 1 GiB pages on x86-64.
const MAX_FOLIO_ORDER: u32 = 18;

/// The head frame of the large folio that `tail` is a tail page of, given each frame's
/// `/proc/kpageflags` word.
///
/// Folios are naturally aligned: a folio of order `o` starts at a multiple of `2^o`. Aligning
/// `tail` down to growing powers of two therefore meets only tails of the same folio until it
/// meets the head, so the first candidate flagged as a compound head is the one (at most
/// `MAX_FOLIO_ORDER` reads).
fn head_of(tail: Pfn, mut flags_at: impl FnMut(Pfn) -> io::Result<u64>) -> io::Result<Option<Pfn>> {
    for order in 1..=MAX_FOLIO_ORDER {
        let candidate = Pfn(tail.0 & !((1u64 << order) - 1));
        if flags_at(candidate)? & kpf::COMPOUND_HEAD != 0 {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
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
        let zoneinfo = include_str!("../fixtures/zoneinfo");
        // Normal zone: start 1048576 + spanned 5505024.
        assert_eq!(end_pfn_in(zoneinfo), Pfn(6_553_600));
    }

    #[test]
    fn a_tail_page_leads_to_its_folios_head() {
        // A 2 MiB folio (order 9) at frame 0x1200 beside a 16 KiB folio (order 2) at 0x1400.
        let flags = |p: Pfn| -> io::Result<u64> {
            Ok(match p.0 {
                0x1200 | 0x1400 => kpf::COMPOUND_HEAD | kpf::ANON,
                0x1201..=0x13ff | 0x1401..=0x1403 => kpf::COMPOUND_TAIL | kpf::ANON,
                _ => 0,
            })
        };
        assert_eq!(head_of(Pfn(0x1201), flags).unwrap(), Some(Pfn(0x1200)));
        assert_eq!(head_of(Pfn(0x13ff), flags).unwrap(), Some(Pfn(0x1200)));
        assert_eq!(head_of(Pfn(0x1333), flags).unwrap(), Some(Pfn(0x1200)));
        assert_eq!(head_of(Pfn(0x1403), flags).unwrap(), Some(Pfn(0x1400)));
        // A frame in no folio finds no head.
        assert_eq!(head_of(Pfn(0x2001), |_| Ok(0)).unwrap(), None);
        // A read error is passed on, not taken for "no head".
        assert!(head_of(Pfn(0x1201), |_| Err(io::Error::other("gone"))).is_err());
    }

    #[test]
    fn page_kinds_from_flags() {
        assert_eq!(page_kind(kpf::ANON | kpf::LRU | kpf::MMAP), PageKind::Anon);
        assert_eq!(page_kind(kpf::LRU), PageKind::File);
        assert_eq!(page_kind(kpf::SLAB), PageKind::Kernel);
        assert_eq!(page_kind(0), PageKind::Kernel);
    }
}
