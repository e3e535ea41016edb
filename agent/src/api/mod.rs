//! The agent's local HTTP API (over a Unix socket), its wire types and its client.
//!
//! One HTTP stack (axum/hyper) so that later endpoints and `/metrics` share one server.

mod cache;
pub mod client;
mod events;
mod leaks;
pub mod metrics;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::attribution::query::LeaksResponse;
use crate::{
    attribution::files::CachedFile,
    cgroup::Workload,
    loader::ProgramStats,
    model::{CensusSummary, CgroupRow},
    units::MemcgId,
};

/// Where the agent listens by default.
pub const DEFAULT_SOCKET: &str = "/run/memlens/memlens.sock";

/// Largest number of rows one `/v1/top` answer carries.
pub const MAX_TOP_ROWS: usize = 10_000;

/// State of one capability, for `memlens status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapabilityState {
    Ok,
    Degraded,
    Unavailable,
}

/// One line of `memlens status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Capability {
    pub name: String,
    pub state: CapabilityState,
    pub detail: String,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusResponse {
    pub version: String,
    pub pid: u32,
    pub started_at_unix_ms: u64,
    pub capabilities: Vec<Capability>,
    /// Kernel programs' counters (drops and failures included), summed over CPUs.
    pub counters: BTreeMap<String, u64>,
    /// Run count and total run time per attached program (while `kernel.bpf_stats_enabled=1`).
    pub programs: Vec<ProgramStats>,
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

/// Query of `GET /v1/top`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopQuery {
    /// At most this many rows (default and maximum: `MAX_TOP_ROWS`).
    pub limit: Option<usize>,
    /// Only the cgroup with this id, or whose path is or ends with this.
    pub cgroup: Option<String>,
}

/// Body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Query of `GET /v1/cache`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheQuery {
    /// A memory cgroup: id, path or end of path (files of its descendants included).
    pub cgroup: Option<String>,
    /// A pod, by UID (or its beginning).
    pub pod: Option<String>,
    /// Files per cgroup (default 10, at most 50).
    pub top: Option<usize>,
}

/// `GET /v1/cache`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheResponse {
    pub taken_at_unix_ms: u64,
    /// (cgroup, file) pairs the kernel counts.
    pub tracked_pairs: usize,
    /// Pairs below zero: page cache older than the agent, evicted since.
    pub pairs_below_zero: usize,
    pub cgroups: Vec<CacheCgroup>,
}

/// One cgroup's working set explained, with its top files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheCgroup {
    pub id: MemcgId,
    pub path: String,
    pub name: String,
    /// One sentence: what the working set is made of, and the biggest file.
    pub diagnosis: String,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub kernel_bytes: u64,
    pub file_dirty_bytes: u64,
    pub file_writeback_bytes: u64,
    pub shmem_bytes: u64,
    pub slab_reclaimable_bytes: Option<u64>,
    pub slab_unreclaimable_bytes: Option<u64>,
    pub sock_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Page cache the probes attributed to files, and its share of `file_bytes`.
    pub attributed_bytes: u64,
    pub attributed_share: f64,
    /// Distinct files with cache here.
    pub cached_files: usize,
    pub files: Vec<CachedFileShare>,
}

/// A file's page cache and its share of the cgroup's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CachedFileShare {
    #[serde(flatten)]
    pub file: CachedFile,
    pub share_of_file_cache: f64,
}

/// Most samples one `/v1/history` answer carries.
pub const MAX_HISTORY_POINTS: usize = 10_000;

/// Query of `GET /v1/history`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The memory cgroup: id, path or end of path (or the path of one that is gone).
    pub cgroup: String,
    /// How far back, e.g. `6h` (default 1h).
    pub since: Option<String>,
    /// Most samples (evenly thinned; default 1000, at most 10,000).
    pub limit: Option<usize>,
}

/// `GET /v1/history`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub path: String,
    /// Oldest first.
    pub samples: Vec<crate::history::Sample>,
}

/// Most lifecycle records or events in one answer.
pub const MAX_RECORDS: usize = 10_000;

/// Query of `GET /v1/lifecycle`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleQuery {
    /// A memory cgroup path (and its descendants); default: all.
    pub cgroup: Option<String>,
    /// How far back, e.g. `1h` (default 1h).
    pub since: Option<String>,
    /// Most records, newest first (default 100).
    pub limit: Option<usize>,
}

/// `GET /v1/lifecycle`: process exits, OOM kills, cgroups created and removed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LifecycleResponse {
    pub records: Vec<LifecycleEntry>,
}

/// A lifecycle record and what its cgroup is (pod, container, unit), from the path.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LifecycleEntry {
    #[serde(flatten)]
    pub record: crate::history::LifecycleRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

/// Query of `GET /v1/events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// `open` or `recovered`.
    pub status: Option<String>,
    /// `leak_suspected`, `file_cache_pressure` or `abnormal_restarts`.
    pub kind: Option<String>,
    /// Most events, newest first (default 100).
    pub limit: Option<usize>,
}

/// `GET /v1/events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsResponse {
    pub events: Vec<crate::engine::event::Event>,
}
