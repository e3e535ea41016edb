//! Finds the address of frame 0's `struct page` (x86-64's `vmemmap_base`), which turns the
//! raw tracepoint's `struct page *` into a page frame number.
//!
//! The symbol is not in `/proc/kallsyms` without CONFIG_KALLSYMS_ALL, and KASLR moves it. So the
//! agent asks the kernel: a tiny program records the `struct page *` of every allocation this
//! process makes while it touches fresh pages, and `/proc/self/pagemap` gives the frame numbers
//! of those pages. The one offset that pairs them all is the base.

use std::{collections::HashMap, fs::File, os::unix::fs::FileExt as _};

use aya::{maps::Array, programs::RawTracePoint, EbpfLoader};
use memlens_common::page::CalibrationSample;

use super::{ebpf_err, LoadError};

/// Pages touched; the base must explain at least half of them.
const PAGES: usize = 32;

/// Returns `vmemmap_base` for pages of `page_struct_size` bytes.
pub fn vmemmap_base(
    object: &[u8],
    btf: Option<&aya::Btf>,
    page_struct_size: u64,
) -> Result<u64, LoadError> {
    let tgid = std::process::id();
    let mut ebpf = EbpfLoader::new()
        .btf(btf)
        .override_global("CALIBRATION_TGID", &tgid, true)
        .map_max_entries("PAGE_ALLOCS", 1)
        .map_max_entries("STACKS", 1)
        .load(object)
        .map_err(|e| ebpf_err("loading the calibration program", e))?;
    let program: &mut RawTracePoint = ebpf
        .program_mut("page_alloc_calibrate")
        .ok_or(LoadError::MissingProgram("page_alloc_calibrate"))?
        .try_into()
        .map_err(|e| ebpf_err("calibration program type", e))?;
    program
        .load()
        .map_err(|e| ebpf_err("loading the calibration program", e))?;
    program
        .attach("mm_page_alloc")
        .map_err(|e| ebpf_err("attaching the calibration program to mm_page_alloc", e))?;

    let pfns = touch_fresh_pages()?;
    let samples = {
        let map = ebpf
            .map("CALIBRATION")
            .ok_or(LoadError::MissingProgram("CALIBRATION map"))?;
        let array: Array<_, CalibrationSample> =
            Array::try_from(map).map_err(|e| ebpf_err("reading calibration samples", e))?;
        let count = array.get(&0, 0).map(|h| h.page).unwrap_or(0).min(64) as u32;
        (1..=count)
            .filter_map(|i| array.get(&i, 0).ok())
            .collect::<Vec<_>>()
    };
    drop(ebpf);
    best_base(&samples, &pfns, page_struct_size)
}

/// The base that pairs the most order-0 samples with touched frames.
///
/// Touched frames are often consecutive, and then a base one `struct page` off pairs all but one
/// of them; an allocation of the process that was not a touched page (a page table) next to the
/// run makes up the last one and ties it with the true base (seen on a 6.1 guest: a base ending
/// in 0x40). The kernel places `vmemmap_base` on a boundary of at least 2 MiB (1 GiB regions
/// under KASLR), so a tie goes to the most aligned base.
fn best_base(
    samples: &[CalibrationSample],
    pfns: &[u64],
    page_struct_size: u64,
) -> Result<u64, LoadError> {
    let mut votes: HashMap<u64, usize> = HashMap::new();
    for sample in samples.iter().filter(|s| s.order == 0 && s.page != 0) {
        for &pfn in pfns {
            let base = sample.page.wrapping_sub(pfn.wrapping_mul(page_struct_size));
            *votes.entry(base).or_default() += 1;
        }
    }
    let (base, count) = votes
        .into_iter()
        .max_by_key(|&(base, n)| (n, base.trailing_zeros(), base))
        .unwrap_or((0, 0));
    if count * 2 < pfns.len() {
        return Err(LoadError::Calibration(format!(
            "{} allocations recorded for {} touched pages, best pairing explains {count}",
            samples.len(),
            pfns.len()
        )));
    }
    Ok(base)
}

/// Maps and touches `PAGES` fresh 4 KiB pages; returns their frame numbers.
fn touch_fresh_pages() -> Result<Vec<u64>, LoadError> {
    let page = usize::try_from(memlens_procfs::system::page_size().0).unwrap_or(4096);
    let len = PAGES * page;
    // SAFETY: anonymous private mapping, unmapped below; no aliasing.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(LoadError::Calibration(format!(
            "mmap: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: addr..addr+len is our mapping.
    unsafe {
        libc::madvise(addr, len, libc::MADV_NOHUGEPAGE);
        for i in 0..PAGES {
            std::ptr::write_volatile(addr.cast::<u8>().add(i * page), 1);
        }
    }
    let result = pagemap_pfns(addr as u64, PAGES, page as u64);
    // SAFETY: unmapping our own mapping.
    unsafe { libc::munmap(addr, len) };
    result
}

fn pagemap_pfns(addr: u64, pages: usize, page_size: u64) -> Result<Vec<u64>, LoadError> {
    let pagemap = File::open("/proc/self/pagemap")
        .map_err(|e| LoadError::Calibration(format!("/proc/self/pagemap: {e}")))?;
    let mut pfns = Vec::with_capacity(pages);
    for i in 0..pages as u64 {
        let mut entry = [0u8; 8];
        pagemap
            .read_exact_at(&mut entry, (addr / page_size + i) * 8)
            .map_err(|e| LoadError::Calibration(format!("/proc/self/pagemap: {e}")))?;
        let entry = u64::from_le_bytes(entry);
        let present = entry >> 63 == 1;
        let pfn = entry & ((1 << 55) - 1);
        if present && pfn != 0 {
            pfns.push(pfn);
        }
    }
    if pfns.len() < pages / 2 {
        return Err(LoadError::Calibration(
            "/proc/self/pagemap shows no frame numbers (needs CAP_SYS_ADMIN)".into(),
        ));
    }
    Ok(pfns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_that_pairs_most_samples_wins() {
        let base = 0xffff_ea00_0000_0000u64;
        let pfns: Vec<u64> = (1000..1032).collect();
        let mut samples: Vec<CalibrationSample> = pfns
            .iter()
            .map(|p| CalibrationSample {
                page: base + p * 64,
                order: 0,
            })
            .collect();
        // A page-table page and a high-order allocation that are not among the touched frames.
        samples.push(CalibrationSample {
            page: base + 77 * 64,
            order: 0,
        });
        samples.push(CalibrationSample {
            page: base + 4096 * 64,
            order: 9,
        });
        assert_eq!(best_base(&samples, &pfns, 64).unwrap(), base);
        assert!(best_base(&samples[..3], &pfns, 64).is_err());
    }

    /// Consecutive touched frames, and a page-table page allocated next to them: the base one
    /// `struct page` off explains as many pairs as the true one, and must lose the tie.
    #[test]
    fn a_base_one_page_off_loses_the_tie() {
        let base = 0xffca_8bb1_8000_0000u64;
        for neighbour in [999, 1032] {
            let pfns: Vec<u64> = (1000..1032).collect();
            let mut samples = vec![CalibrationSample {
                page: base + neighbour * 64,
                order: 0,
            }];
            samples.extend(pfns.iter().map(|p| CalibrationSample {
                page: base + p * 64,
                order: 0,
            }));
            for _ in 0..20 {
                assert_eq!(best_base(&samples, &pfns, 64).unwrap(), base);
            }
        }
    }
}
