//! What the agent asks of the loader, what the loader reports back, and how loading fails.

use std::path::PathBuf;

use memlens_common::offsets::TaskMemcgOffsets;

use super::{btf, pinning, ProbeError};

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
pub(super) fn ebpf_err(what: &'static str, e: impl std::fmt::Display) -> LoadError {
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
    /// Rotation of the sampled offsets; None: from this boot's id (see `sizing::sample_seed`).
    pub sample_seed: Option<u64>,
    /// How the page-cache programs attach.
    pub filemap_probe: FilemapProbe,
}

/// How the page-cache programs attach (see `ebpf/src/filemap.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilemapProbe {
    /// The classic tracepoints where their record can be used, else the raw ones.
    #[default]
    Auto,
    /// The raw tracepoints (the folio walked to its inode and device).
    Raw,
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
    /// Rotation of the sampled offsets, which the census needs to find the sampled frames.
    pub sample_seed: u64,
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
