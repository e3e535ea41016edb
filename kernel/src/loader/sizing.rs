//! How large the maps are: the sampling shift that bounds the record array, the kernel memory
//! the maps take, and the memlock limit of kernels that still charge it.

use memlens_common::{
    page::{PageAlloc, StackFrames, MAX_SAMPLE_SHIFT},
    stack_copy::StackCopy,
};
use memlens_types::Pfn;

use super::{pinning::fnv1a, LoadError, LoadOptions};

/// Where this boot's id is: the same for every agent of one boot, different on every boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The rotation of the sampled offsets: `--sample-seed` when given, else this boot's id hashed.
/// The kept records need the seed they were sampled with, and pins do not outlive a boot, so the
/// boot id serves every agent that may read them on; different nodes and boots get different
/// rotations, so no layout of memory is sampled the same way everywhere.
pub(super) fn sample_seed(options: &LoadOptions) -> u64 {
    options
        .sample_seed
        .unwrap_or_else(|| match std::fs::read_to_string(BOOT_ID) {
            Ok(id) => fnv1a(id.trim().as_bytes()),
            Err(e) => {
                tracing::warn!("{BOOT_ID}: {e}; sampled offsets not rotated");
                0
            }
        })
}

/// Kernel memory of one entry of the stack map: key, value, and the hash table's element header.
const STACK_ENTRY_BYTES: u64 = (size_of::<u64>() + size_of::<StackFrames>() + 48) as u64;

/// Kernel memory of the per-CPU scratch record the stack copies are assembled in.
fn stack_copy_scratch_bytes() -> u64 {
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    (size_of::<StackCopy>() * cpus) as u64
}

/// Kernel memory of the maps, in bytes (the formula of docs/benchmarks.md): records, stacks,
/// page-cache entries, the two rings, the per-CPU copy scratch and the Python processes.
pub(super) fn map_bytes(sample_entries: u64, options: &LoadOptions) -> u64 {
    sample_entries * size_of::<PageAlloc>() as u64
        + u64::from(options.stack_entries) * STACK_ENTRY_BYTES
        + u64::from(options.file_entries) * 96
        + u64::from(options.lifecycle_buffer)
        + u64::from(options.stack_copy_buffer)
        + stack_copy_scratch_bytes()
        + crate::python_maps::map_bytes()
}

/// The smallest shift >= the requested one whose array fits `max_sample_entries`.
pub(super) fn size_samples(end_pfn: Pfn, options: &LoadOptions) -> Result<(u32, u64), LoadError> {
    let mut shift = options.sample_shift;
    loop {
        let entries = (end_pfn.0 >> shift) + 1;
        if entries <= options.max_sample_entries {
            if shift != options.sample_shift {
                tracing::warn!(
                    "sampling one page in {} instead of {} to keep the sample map at {} entries",
                    1u64 << shift,
                    1u64 << options.sample_shift,
                    options.max_sample_entries
                );
            }
            return Ok((shift, entries));
        }
        shift += 1;
        if shift > MAX_SAMPLE_SHIFT {
            return Err(LoadError::Config(format!(
                "{} page frames cannot be sampled within {} entries",
                end_pfn.0, options.max_sample_entries
            )));
        }
    }
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps to it (< 5.11); a refusal is a
/// warning, since newer kernels charge the memory cgroup instead.
pub(super) fn raise_memlock_rlimit() -> Option<String> {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } == 0 {
        return None;
    }
    let e = std::io::Error::last_os_error();
    tracing::debug!("cannot raise RLIMIT_MEMLOCK: {e} (fine on kernels >= 5.11)");
    Some(format!(
        "RLIMIT_MEMLOCK not raised ({e}); fine on kernels >= 5.11"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_is_raised_until_the_map_fits() {
        let options = LoadOptions {
            sample_shift: 6,
            max_sample_entries: 1 << 17,
            stack_entries: 1,
            kernel_stack_reuse_ns: 0,
            btf: None,
            file_entries: 1,
            lifecycle_buffer: 4096,
            stack_copy_bytes: 0,
            stack_copy_buffer: 4096,
            pin_dir: None,
            sample_seed: None,
            filemap_probe: crate::loader::FilemapProbe::Auto,
        };
        // 24 GiB of 4 KiB pages fits at 1 in 64.
        assert_eq!(
            size_samples(Pfn(6_553_600), &options).unwrap(),
            (6, 102_401)
        );
        // 1 TiB does not: 1 in 2048.
        let (shift, entries) = size_samples(Pfn(1 << 28), &options).unwrap();
        assert_eq!(shift, 12);
        assert!(entries <= 1 << 17);
    }
}
