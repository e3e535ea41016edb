//! Memory cgroups as `memlens top` shows them (`/v1/top`): the kernel's counters joined with the
//! page census.

use serde::{Deserialize, Serialize};

use crate::{
    files::CachedFile, pod::PodMeta, selector::CgroupSelector, units::MemcgId, workload::Workload,
};

/// One memory cgroup, as `memlens top` shows it. Bytes are integers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CgroupRow {
    /// Memory cgroup id (inode of the cgroup directory).
    pub id: MemcgId,
    /// Path in the memory hierarchy.
    pub path: String,
    /// Short label: pod/container, unit, or the path.
    pub name: String,
    pub workload: Workload,
    /// Kubernetes names of its pod and container, when the agent knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodMeta>,
    pub usage_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub kernel_bytes: u64,
    /// usage - inactive_file, as kubelet and cAdvisor compute it.
    pub working_set_bytes: u64,
    pub shmem_bytes: u64,
    pub file_dirty_bytes: u64,
    pub file_writeback_bytes: u64,
    pub swap_bytes: Option<u64>,
    /// None when unlimited.
    pub limit_bytes: Option<u64>,
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (each one a reclaim).
    pub limit_hits: Option<u64>,
    /// Times usage went over `memory.high` (v2).
    #[serde(default)]
    pub high_events: Option<u64>,
    /// Page cache read back in soon after reclaim evicted it, so far (the kernel's refault
    /// count in bytes): reclaim taking pages still in use.
    #[serde(default)]
    pub refaulted_bytes: Option<u64>,
    pub slab_reclaimable_bytes: Option<u64>,
    pub slab_unreclaimable_bytes: Option<u64>,
    pub sock_bytes: Option<u64>,
    /// The eBPF page census estimate (None when the census is unavailable).
    pub held: Option<HeldEstimate>,
    /// Page cache attributed to files by the page-cache probes (None when they are not attached).
    #[serde(default)]
    pub file_attributed_bytes: Option<u64>,
    /// The file with the most page cache in this cgroup (and its descendants).
    #[serde(default)]
    pub top_file: Option<CachedFile>,
}

/// Estimated bytes held, from the sampled frames (hierarchical, like the counters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldEstimate {
    pub bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub kernel_bytes: u64,
    /// Of `bytes`, the part allocated while the probes ran (with stacks).
    pub tracked_bytes: u64,
    /// Half-width of the 95% confidence interval of `bytes`.
    pub error95_bytes: u64,
    /// Sampled frames behind the estimate.
    pub frames: u64,
}

/// Totals of one census.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusSummary {
    pub frames: u64,
    /// Frames whose state this census read; the others' is from earlier censuses (a census
    /// past its frame budget sweeps).
    #[serde(default)]
    pub frames_read: u64,
    pub charged_frames: u64,
    pub read_errors: u64,
    pub duration_ms: u64,
}

/// Largest number of rows one `/v1/top` answer carries.
pub const MAX_TOP_ROWS: usize = 10_000;

/// Query of `GET /v1/top`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    /// At most this many rows (default and maximum: [`MAX_TOP_ROWS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Only this cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupSelector>,
}

/// `GET /v1/top`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopResponse {
    pub taken_at_unix_ms: u64,
    /// One page in `2^sample_shift` is sampled for the held estimates.
    pub sample_shift: u32,
    pub page_size: u64,
    /// Rows, largest usage first.
    pub cgroups: Vec<CgroupRow>,
    /// Rows left out by the limit.
    pub truncated: usize,
    pub census: Option<CensusSummary>,
}
