//! A cgroup's recorded memory over time (`/v1/history`), as the history database keeps it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::selector::CgroupSelector;

/// One cgroup at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub ts_ms: u64,
    pub cgroup_id: u64,
    pub usage_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub active_file_bytes: u64,
    pub inactive_file_bytes: u64,
    pub working_set_bytes: u64,
    pub kernel_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub held_bytes: Option<u64>,
    /// The cgroup's own count of OOM kills so far.
    #[serde(default)]
    pub oom_kills: Option<u64>,
    /// The file with the most page cache in the cgroup, and its bytes.
    #[serde(default)]
    pub top_file: Option<String>,
    #[serde(default)]
    pub top_file_bytes: Option<u64>,
    /// The kernel's reclaim counters so far (see [`CgroupRow`](crate::cgroups::CgroupRow)).
    #[serde(default)]
    pub limit_hits: Option<u64>,
    #[serde(default)]
    pub high_events: Option<u64>,
    #[serde(default)]
    pub refaulted_bytes: Option<u64>,
}

/// Most samples one `/v1/history` answer carries.
pub const MAX_HISTORY_POINTS: usize = 10_000;

/// Query of `GET /v1/history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// The memory cgroup (or the path of one that is gone).
    pub cgroup: CgroupSelector,
    /// How far back, e.g. `6h` (default 1h).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub since: Option<Duration>,
    /// Most samples (evenly thinned; default 1000, at most 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /v1/history`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub path: String,
    /// Oldest first.
    pub samples: Vec<Sample>,
}
