//! Loads and attaches the kernel programs, sized and relocated for the running kernel, and says
//! which mechanism each capability ended up using.

mod attach;
pub mod btf;
mod calibrate;
mod kernel;
mod maps;
mod options;
mod page_allocs;
pub mod pinning;
mod sizing;
pub mod tracefs;

use std::sync::Arc;

pub use attach::ProbeError;
use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    Ebpf, EbpfLoader,
};
pub use maps::{KernelCounters, StackMap};
use memlens_common::{filemap::FileKey, page::MAX_SAMPLE_SHIFT, stack_copy::STACK_COPY_MAX};
use options::ebpf_err;
pub use options::{FilemapProbe, LoadError, LoadOptions, LoadReport};
pub use page_allocs::PageAllocTable;

use memlens_types::status::ProgramStats;

use crate::{
    collectors::{lifecycle::LifecycleRing, stack_copies::StackCopyRing},
    physmem,
    python_maps::{MapGuard, PythonMaps, PYTHON_PROCESSES, PYTHON_THREADS},
};

/// The kernel programs, built by `cargo xtask build-ebpf` (via build.rs) for this very binary.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memlens.bpf.o"));

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
    /// The CPython processes whose Python frames the programs walk.
    pub python: PythonMaps,
    /// The always-on programs' `PYTHON` map among them.
    _python_map: Option<MapGuard>,
    pub report: LoadReport,
    /// The programs' pinned links (they stay attached after the agent, through their pins).
    _pinned_links: Vec<aya::programs::links::PinnedLink>,
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
        let memlock_warning = sizing::raise_memlock_rlimit();
        let end_pfn = physmem::end_pfn().map_err(|e| LoadError::Io("/proc/zoneinfo", e))?;
        let (sample_shift, sample_entries) = sizing::size_samples(end_pfn, options)?;
        let sample_seed = sizing::sample_seed(options);
        let layout = pinning::Layout {
            sample_shift,
            sample_seed,
            sample_entries,
            stack_entries: options.stack_entries,
            file_entries: options.file_entries,
            lifecycle_buffer: options.lifecycle_buffer,
            stack_copy_buffer: options.stack_copy_buffer,
        };
        // Before anything else allocates: a previous agent's programs are still attached.
        if let Some(root) = &options.pin_dir {
            if let Err(e) = pinning::name_agent_in_kept(root, &layout.key()) {
                tracing::warn!(
                    "the previous agent's programs copy this agent's stacks until its own attach: \
                     {e}"
                );
            }
        }
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
            .override_global("SAMPLE_SEED", &sample_seed, true)
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
            .map_max_entries("STACK_COPIES", options.stack_copy_buffer)
            .map_max_entries("PYTHON", PYTHON_PROCESSES)
            .map_max_entries("PYTHON_THREADS", PYTHON_THREADS);
        if let Ok(pins) = &pins {
            for name in pinning::KEPT_MAPS {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| ebpf_err("loading the kernel programs", e))?;
        let named = match ebpf.map_mut(pinning::AGENT_MAP) {
            Some(map) => Array::try_from(map).and_then(pinning::name_agent),
            None => Err(MapError::InvalidName {
                name: pinning::AGENT_MAP.into(),
            }),
        };
        if let Err(e) = named {
            tracing::warn!("the programs copy the agent's own stacks too: {e}");
        }
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
            (Ok(_), Ok(_)) => {
                let classic = match (&vmemmap_base, options.filemap_probe) {
                    (_, FilemapProbe::Raw) => Err("--filemap-probe raw".to_string()),
                    (Ok(_), FilemapProbe::Auto) => attach::filemap_record_matches(),
                    (Err(e), FilemapProbe::Auto) => {
                        Err(format!("struct page addresses unknown: {e}"))
                    }
                };
                attach::filemap(&mut ebpf, classic, pins.as_mut().ok())
            }
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
        let python = PythonMaps::default();
        let python_map = match ebpf.take_map("PYTHON") {
            Some(map) => {
                Some(python.add(HashMap::try_from(map).map_err(|e| ebpf_err("opening PYTHON", e))?))
            }
            None => None,
        };
        let stacks = StackMap(
            HashMap::try_from(
                ebpf.take_map("STACKS")
                    .ok_or(LoadError::MissingProgram("STACKS map"))?,
            )
            .map_err(|e| ebpf_err("opening STACKS", e))?,
        );

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
            sample_seed,
            end_pfn: end_pfn.0,
            sample_entries,
            stack_entries: options.stack_entries,
            map_bytes: sizing::map_bytes(sample_entries, options),
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
            python,
            _python_map: python_map,
            report,
            _pinned_links: pinned_links,
        })
    }
}
