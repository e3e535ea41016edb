//! Loads and attaches the kernel programs, sized and relocated for the running kernel, and says
//! which mechanism each capability ended up using.

mod attach;
pub mod btf;
mod calibrate;
mod kernel;
mod page_allocs;
pub mod pinning;
pub mod tracefs;

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

pub use attach::ProbeError;
use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    Ebpf, EbpfLoader,
};
use memlens_common::{
    counters::Counter,
    filemap::FileKey,
    offsets::TaskMemcgOffsets,
    page::{StackFrames, MAX_SAMPLE_SHIFT},
    stack_copy::{StackCopy, STACK_COPY_MAX},
};
pub use page_allocs::PageAllocTable;

use memlens_types::{status::ProgramStats, Pfn};

use memlens_model::StackTable;

use crate::{
    collectors::{lifecycle::LifecycleRing, stack_copies::StackCopyRing},
    physmem,
};

/// The kernel programs, built by `cargo xtask build-ebpf` (via build.rs) for this very binary.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memlens.bpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "memlens agent needs root: it loads kernel programs (CAP_BPF, CAP_PERFMON) and reads \
         /proc/kpagecgroup (CAP_SYS_ADMIN); run it as root, e.g. `sudo memlens agent`"
    )]
    NotRoot,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("{0}: {1}")]
    Ebpf(&'static str, String),
    #[error("the kernel program {0} is missing from the embedded object (a build problem)")]
    MissingProgram(&'static str),
    #[error("cannot find vmemmap_base: {0}")]
    Calibration(String),
    #[error(
        "cannot attach to the page allocator ({0}); memlens needs the kmem:mm_page_alloc \
         tracepoint (CONFIG_TRACEPOINTS=y)"
    )]
    NoPageProbe(String),
    #[error("cannot read {0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("cannot detach the programs a previous agent left attached: {0}")]
    Pin(#[from] pinning::PinError),
}

/// One-line form of an aya error: the verifier log goes to the debug log, not the user's
/// terminal.
fn ebpf_err(what: &'static str, e: impl std::fmt::Display) -> LoadError {
    let text = e.to_string();
    tracing::debug!("{what}: {text}");
    LoadError::Ebpf(what, text.lines().next().unwrap_or_default().to_string())
}

/// What the agent asks of the programs.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// log2 of frames per sampled frame (6: one page in 64).
    pub sample_shift: u32,
    /// Upper bound on `PAGE_ALLOCS` entries; the shift is raised until the frame range fits.
    pub max_sample_entries: u64,
    /// Entries of the stack map.
    pub stack_entries: u32,
    /// Reuse a CPU's kernel stack for the same user stack within this many ns (0: never).
    pub kernel_stack_reuse_ns: u64,
    /// BTF of the running kernel, when not at /sys/kernel/btf/vmlinux.
    pub btf: Option<PathBuf>,
    /// Entries of the page-cache map: distinct (memory cgroup, file) pairs.
    pub file_entries: u32,
    /// Bytes of the lifecycle ring buffer (a power of two).
    pub lifecycle_buffer: u32,
    /// Bytes of user stack copied per sampled allocation for unwinding (0: off; at most
    /// `STACK_COPY_MAX`).
    pub stack_copy_bytes: u32,
    /// Bytes of the stack-copy ring buffer (a power of two).
    pub stack_copy_buffer: u32,
    /// Where the maps and links are pinned to outlive the agent (see [`pinning`]); None: they
    /// go with it.
    pub pin_dir: Option<PathBuf>,
}

/// How the programs were loaded: the facts behind `memlens status`.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The kernel's release and optional facilities (see `kernel::describe`).
    pub kernel: String,
    /// The attachment in use for page allocations.
    pub page_probe: String,
    /// Why the preferred attachment was not used, if it was not.
    pub page_probe_fallback: Option<String>,
    pub vmemmap_base: Option<String>,
    pub page_struct_size: u64,
    /// Offsets of the task -> memory cgroup walk, or why they are unknown.
    pub task_memcg_offsets: Result<TaskMemcgOffsets, ProbeError>,
    /// Effective sampling: one frame in `2^sample_shift`.
    pub sample_shift: u32,
    /// Requested shift, when it had to be raised to bound the map.
    pub requested_sample_shift: u32,
    pub end_pfn: u64,
    pub sample_entries: u64,
    pub stack_entries: u32,
    /// Kernel memory of the maps, in bytes.
    pub map_bytes: u64,
    /// Set when RLIMIT_MEMLOCK could not be raised (harmless on kernels >= 5.11).
    pub memlock_warning: Option<String>,
    /// The page-cache probes in use, or why there are none.
    pub filemap_probe: Result<String, ProbeError>,
    /// The lifecycle probes in use, or why there are none.
    pub lifecycle_probe: Result<String, ProbeError>,
    pub file_entries: u32,
    /// Bytes of stack copied per sample for unwinding (0: frame pointers only).
    pub stack_copy_bytes: u32,
    /// Whether the records outlive the agent (pinned), or why not.
    pub pinning: Result<pinning::PinReport, String>,
}

/// The programs' per-CPU counters (see `memlens_common::counters`), readable from any thread.
pub struct KernelCounters(PerCpuArray<MapData, u64>);

impl KernelCounters {
    /// Every counter, summed over CPUs.
    #[must_use]
    pub fn totals(&self) -> BTreeMap<String, u64> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let total = self
                    .0
                    .get(&(c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
                    .unwrap_or(0);
                (c.name().to_string(), total)
            })
            .collect()
    }
}

/// The loaded, attached programs and the maps the collectors read.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    pub page_allocs: PageAllocTable,
    pub counters: Arc<KernelCounters>,
    pub stacks: StackMap,
    /// Net page-cache pages per (memory cgroup, file), when the page-cache probes are attached.
    pub file_pages: Option<HashMap<MapData, FileKey, i64>>,
    /// Process exits, OOM victims, cgroup mkdir/rmdir, when the lifecycle probes are attached.
    pub lifecycle: Option<LifecycleRing>,
    /// User stack copies of sampled allocations, when copying is on.
    pub stack_copies: Option<StackCopyRing>,
    pub report: LoadReport,
    /// The programs' pinned links (they stay attached after the agent, through their pins).
    _pinned_links: Vec<aya::programs::links::PinnedLink>,
}

/// The programs' stack map: stack key (a hash of the stack) to instruction addresses.
pub struct StackMap(pub(crate) HashMap<MapData, u64, StackFrames>);

impl StackTable for StackMap {
    fn addresses(&self, key: u64) -> Option<Vec<u64>> {
        let frames = self.0.get(&key, 0).ok()?;
        Some(
            frames
                .ips
                .iter()
                .copied()
                .take_while(|&ip| ip != 0)
                .collect(),
        )
    }
}

impl Probes {
    /// Run count and time of memlens' own programs, read live from their descriptors (no walk
    /// of the host's programs). The kernel only measures them while
    /// `kernel.bpf_stats_enabled=1` (two clock reads per run), so they are zero otherwise.
    #[must_use]
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .map(|info| ProgramStats {
                name: info.name_as_str().unwrap_or("?").to_string(),
                run_count: info.run_count(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
            })
            .collect()
    }

    pub fn load(options: &LoadOptions) -> Result<Probes, LoadError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LoadError::NotRoot);
        }
        if options.sample_shift > MAX_SAMPLE_SHIFT {
            return Err(LoadError::Config(format!(
                "sample shift {} is above the maximum {MAX_SAMPLE_SHIFT}",
                options.sample_shift
            )));
        }
        let memlock_warning = raise_memlock_rlimit();
        let kernel_btf = btf::KernelBtf::load(options.btf.as_deref())?;
        let page_struct_size = kernel_btf.struct_size("page")?;
        let pt_regs_sp = kernel_btf.member_offset("pt_regs", "sp")?;
        let pt_regs_ip = kernel_btf.member_offset("pt_regs", "ip")?;
        let pt_regs_bp = kernel_btf.member_offset("pt_regs", "bp")?;
        // Trims main-thread stack copies at `mm->start_stack`; without them copies are longer.
        let task_mm = kernel_btf.member_offset("task_struct", "mm").unwrap_or(0);
        let mm_start_stack = kernel_btf
            .member_offset("mm_struct", "start_stack")
            .unwrap_or(0);
        if options.stack_copy_bytes as usize > STACK_COPY_MAX {
            return Err(LoadError::Config(format!(
                "stack copy of {} bytes is above the maximum {STACK_COPY_MAX}",
                options.stack_copy_bytes
            )));
        }
        let task_memcg_offsets = kernel_btf.task_memcg_offsets().map_err(ProbeError::offsets);
        let filemap_offsets = kernel_btf.filemap_offsets().map_err(ProbeError::offsets);
        if let Err(e) = &task_memcg_offsets {
            tracing::warn!("allocating task's memory cgroup will not be recorded: {e}");
        }

        let end_pfn = physmem::end_pfn().map_err(|e| LoadError::Io("/proc/zoneinfo", e))?;
        let (sample_shift, sample_entries) = size_samples(end_pfn, options)?;

        // aya's own parse of the same BTF, for the loader's relocations.
        let aya_btf = match &options.btf {
            Some(path) => Some(
                aya::Btf::parse_file(path, aya::Endianness::default())
                    .map_err(|e| btf::BtfError::Parse(path.display().to_string(), e.to_string()))?,
            ),
            None => aya::Btf::from_sys_fs().ok(),
        };

        // The raw tracepoint needs vmemmap_base; the classic one needs tracefs.
        let vmemmap_base = calibrate::vmemmap_base(EBPF_OBJECT, aya_btf.as_ref(), page_struct_size);
        let tp_fields = attach::tracepoint_fields();

        let page_struct_shift = if page_struct_size.is_power_of_two() {
            page_struct_size.trailing_zeros()
        } else {
            0
        };
        let stack_copy_buffer = u64::from(options.stack_copy_buffer);
        let layout = pinning::Layout {
            sample_shift,
            sample_entries,
            stack_entries: options.stack_entries,
            file_entries: options.file_entries,
            lifecycle_buffer: options.lifecycle_buffer,
            stack_copy_buffer: options.stack_copy_buffer,
        };
        let mut pins = match &options.pin_dir {
            None => Err("off (--pin-dir none)".to_string()),
            Some(root) => pinning::Pinning::prepare(root, &layout.key()).map_err(|e| {
                tracing::warn!("kernel records will not outlive the agent: {e}");
                e.to_string()
            }),
        };
        let mut loader = EbpfLoader::new();
        loader.btf(aya_btf.as_ref());
        let base = vmemmap_base.as_ref().copied().unwrap_or(0);
        let fields = tp_fields.as_ref().copied().unwrap_or_default();
        let offsets = task_memcg_offsets.clone().unwrap_or_default();
        let file_offsets = filemap_offsets.clone().unwrap_or_default();
        let lifecycle_offsets = attach::lifecycle_offsets(&kernel_btf);
        let life_offsets = lifecycle_offsets.clone().unwrap_or_default();
        loader
            .override_global("SAMPLE_SHIFT", &sample_shift, true)
            .override_global("SUPERBLOCKS", &sample_entries, true)
            .override_global("VMEMMAP_BASE", &base, true)
            .override_global("PAGE_STRUCT_SIZE", &page_struct_size, true)
            .override_global("PAGE_STRUCT_SHIFT", &page_struct_shift, true)
            .override_global("ALLOC_TP_FIELDS", &fields, true)
            .override_global("TASK_MEMCG_OFFSETS", &offsets, true)
            .override_global("FILEMAP_OFFSETS", &file_offsets, true)
            .override_global("LIFECYCLE_OFFSETS", &life_offsets, true)
            .override_global("PT_REGS_SP_OFFSET", &pt_regs_sp, true)
            .override_global("PT_REGS_IP_OFFSET", &pt_regs_ip, true)
            .override_global("PT_REGS_BP_OFFSET", &pt_regs_bp, true)
            .override_global("STACK_COPY_BYTES", &options.stack_copy_bytes, true)
            .override_global("STACK_COPY_BUFFER", &stack_copy_buffer, true)
            .override_global("TASK_MM_OFFSET", &task_mm, true)
            .override_global("MM_START_STACK_OFFSET", &mm_start_stack, true)
            .override_global(
                "KERNEL_STACK_REUSE_NS",
                &options.kernel_stack_reuse_ns,
                true,
            )
            .map_max_entries(
                "PAGE_ALLOCS",
                u32::try_from(sample_entries).unwrap_or(u32::MAX),
            )
            .map_max_entries("STACKS", options.stack_entries)
            .map_max_entries("FILE_PAGES", options.file_entries)
            .map_max_entries("LIFECYCLE", options.lifecycle_buffer)
            .map_max_entries("STACK_COPIES", options.stack_copy_buffer);
        if let Ok(pins) = &pins {
            for name in pinning::KEPT_MAPS {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| ebpf_err("loading the kernel programs", e))?;
        if let Ok(pins) = &pins {
            // The previous agent's programs stop just before ours start.
            let detached = pins.detach_previous()?;
            if detached > 0 {
                tracing::info!("detached the {detached} programs a previous agent left attached");
            }
        }

        let (page_probe, page_probe_fallback) = attach::page_alloc(
            &mut ebpf,
            vmemmap_base.is_ok(),
            tp_fields.as_ref().err(),
            vmemmap_base.as_ref().err(),
            pins.as_mut().ok(),
        )?;
        tracing::info!("page allocations: {page_probe}");
        if let Some(why) = &page_probe_fallback {
            tracing::warn!("page allocations use the fallback: {why}");
        }

        let page_allocs = PageAllocTable::new(
            ebpf.take_map("PAGE_ALLOCS")
                .ok_or(LoadError::MissingProgram("PAGE_ALLOCS map"))?,
        )?;
        let counters = Arc::new(KernelCounters(
            PerCpuArray::try_from(
                ebpf.take_map("COUNTERS")
                    .ok_or(LoadError::MissingProgram("COUNTERS map"))?,
            )
            .map_err(|e| ebpf_err("opening COUNTERS", e))?,
        ));
        let filemap_probe = match (&task_memcg_offsets, &filemap_offsets) {
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            (Ok(_), Ok(_)) => attach::filemap(&mut ebpf, pins.as_mut().ok()),
        };
        match &filemap_probe {
            Ok(how) => tracing::info!("page cache: {how}"),
            Err(why) => tracing::warn!("page cache not tracked: {why}"),
        }
        let file_pages = match (&filemap_probe, ebpf.take_map("FILE_PAGES")) {
            (Ok(_), Some(map)) => {
                Some(HashMap::try_from(map).map_err(|e| ebpf_err("opening FILE_PAGES", e))?)
            }
            _ => None,
        };
        let lifecycle_probe = match &lifecycle_offsets {
            Err(e) => Err(e.clone()),
            Ok(_) => attach::lifecycle(&mut ebpf, pins.as_mut().ok()),
        };
        match &lifecycle_probe {
            Ok(how) => tracing::info!("lifecycle: {how}"),
            Err(why) => tracing::warn!("process exits and OOM kills not tracked: {why}"),
        }
        let lifecycle = match (&lifecycle_probe, ebpf.take_map("LIFECYCLE")) {
            (Ok(_), Some(map)) => Some(LifecycleRing(
                RingBuf::try_from(map).map_err(|e| ebpf_err("opening LIFECYCLE", e))?,
            )),
            _ => None,
        };
        let stack_copies = match (options.stack_copy_bytes, ebpf.take_map("STACK_COPIES")) {
            (0, _) | (_, None) => None,
            (_, Some(map)) => Some(StackCopyRing(
                RingBuf::try_from(map).map_err(|e| ebpf_err("opening STACK_COPIES", e))?,
            )),
        };
        let stacks = StackMap(
            HashMap::try_from(
                ebpf.take_map("STACKS")
                    .ok_or(LoadError::MissingProgram("STACKS map"))?,
            )
            .map_err(|e| ebpf_err("opening STACKS", e))?,
        );

        let record = size_of::<memlens_common::page::PageAlloc>() as u64;
        let (pinning, pinned_links) = match pins {
            Ok(pins) => {
                let (report, links) = pins.finish();
                (Ok(report), links)
            }
            Err(why) => (Err(why), Vec::new()),
        };
        let report = LoadReport {
            kernel: kernel::describe(),
            page_probe,
            page_probe_fallback,
            vmemmap_base: vmemmap_base.ok().map(|b| format!("{b:#x}")),
            page_struct_size,
            task_memcg_offsets,
            sample_shift,
            requested_sample_shift: options.sample_shift,
            end_pfn: end_pfn.0,
            sample_entries,
            stack_entries: options.stack_entries,
            map_bytes: sample_entries * record
                + u64::from(options.stack_entries) * STACK_ENTRY_BYTES
                + u64::from(options.file_entries) * 96
                + u64::from(options.lifecycle_buffer)
                + u64::from(options.stack_copy_buffer)
                + stack_copy_scratch_bytes(),
            memlock_warning,
            filemap_probe,
            file_entries: options.file_entries,
            lifecycle_probe,
            stack_copy_bytes: options.stack_copy_bytes,
            pinning,
        };
        Ok(Probes {
            ebpf,
            page_allocs,
            counters,
            stacks,
            file_pages,
            lifecycle,
            stack_copies,
            report,
            _pinned_links: pinned_links,
        })
    }
}

/// Kernel memory of one entry of the stack map: key, value, and the hash table's element header.
const STACK_ENTRY_BYTES: u64 = (size_of::<u64>() + size_of::<StackFrames>() + 48) as u64;

/// Kernel memory of the per-CPU scratch record the stack copies are assembled in.
fn stack_copy_scratch_bytes() -> u64 {
    let cpus = aya::util::nr_cpus().unwrap_or(1);
    (size_of::<StackCopy>() * cpus) as u64
}

/// The smallest shift >= the requested one whose array fits `max_sample_entries`.
fn size_samples(end_pfn: Pfn, options: &LoadOptions) -> Result<(u32, u64), LoadError> {
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
fn raise_memlock_rlimit() -> Option<String> {
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
