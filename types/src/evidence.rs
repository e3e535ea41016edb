//! The evidence each kind of event carries: why it was raised, in figures.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    allocations::AllocationEntry, files::CachedFile, leaks::LeakEntry, lifecycle::MemoryAt,
};

/// Where the limit a forecast is compared with comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from", content = "path")]
pub enum LimitSource {
    /// The cgroup's own limit.
    Cgroup,
    /// An ancestor's (smaller) limit.
    Ancestor(String),
    /// No limit: the node's memory.
    Host,
}

/// The memory a growth forecast follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrowthMeasure {
    /// All of the cgroup's usage (events raised before the measures below existed).
    #[default]
    Usage,
    /// Usage minus inactive page cache, as kubelet and cAdvisor compute it: what a limit's
    /// reclaim cannot simply drop. Followed against a cgroup's own or an ancestor's limit.
    WorkingSet,
    /// The working set minus active page cache (anonymous memory, shmem and tmpfs, kernel
    /// memory): followed against the node's memory, where the node's reclaim takes any page
    /// cache, active or not, before it runs out.
    Unreclaimable,
}

impl fmt::Display for GrowthMeasure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrowthMeasure::Usage => "usage",
            GrowthMeasure::WorkingSet => "working set",
            GrowthMeasure::Unreclaimable => "unreclaimable memory",
        })
    }
}

/// The kernel's reclaim counters over the window a finding looked at: how often usage hit the
/// limit (each a reclaim, routine when page cache fills a cgroup), went over `memory.high`, was
/// OOM-killed, and how much page cache was read back soon after reclaim evicted it. None where
/// the kernel does not count it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReclaimSignals {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_hits: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_events: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refaulted_bytes: Option<u64>,
}

/// A process of the cgroup and its resident memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    pub pid: u32,
    pub comm: String,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
}

/// Why a cgroup's growth was flagged (leak suspected, file-cache pressure).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrowthEvidence {
    pub cgroup: String,
    pub evaluated_at_unix_ms: u64,
    pub lookback_seconds: f64,
    pub horizon_seconds: f64,
    pub samples: usize,
    pub usage_bytes: u64,
    pub limit_bytes: u64,
    pub limit_source: LimitSource,
    pub threshold_bytes: u64,
    /// Why it was raised, in a sentence.
    #[serde(default)]
    pub reason: String,
    /// What the growth, forecast and series below follow.
    #[serde(default)]
    pub measure: GrowthMeasure,
    /// The measure's latest value.
    #[serde(default)]
    pub measured_bytes: u64,
    pub growth_bytes_per_hour: f64,
    /// The growth over the last third of the window: a series levelling off has slowed down.
    #[serde(default)]
    pub recent_growth_bytes_per_hour: f64,
    pub anon_growth_bytes_per_hour: f64,
    /// Growth of the page cache in the measure (active file, shmem).
    pub file_growth_bytes_per_hour: f64,
    /// Share of pairwise slopes that rise: 1.0 for steady growth, ~0.5 for noise.
    pub rising_share: f64,
    /// The kernel's reclaim counters over the window.
    #[serde(default)]
    pub reclaim: ReclaimSignals,
    /// The allowance (`leak.allow`) the cgroup matched, when it has one: growth it was allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<String>,
    /// The trend's value at the end of the horizon.
    pub forecast_bytes: u64,
    pub time_to_threshold_seconds: Option<f64>,
    pub time_to_limit_seconds: Option<f64>,
    /// The measure over the lookback window, (unix ms, bytes), thinned.
    pub series: Vec<(u64, u64)>,
    /// The trend from now to the end of the horizon: two (unix ms, bytes) points.
    pub forecast: [(u64, u64); 2],
    pub top_processes: Vec<ProcessMemory>,
    /// Leak: the stacks growing most over the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_stacks: Vec<LeakEntry>,
    /// Leak: the stacks holding the most according to the processes' own allocation profiles
    /// (the Go runtime's heap profile), where one could be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_stacks: Vec<AllocationEntry>,
    /// Leak: where no process profile could be read (native programs), how to trace the
    /// allocator for the allocation-level answer: the engine does not trap every allocator call
    /// of a production process on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_trace_hint: Option<String>,
    /// File-cache pressure: the files with the most page cache.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_files: Vec<CachedFile>,
}

/// Why a container counts as restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// Chosen by the OOM killer.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// The main process exited with a non-zero status.
    Error,
    /// The main process was ended by a signal.
    Signaled,
    /// The container's cgroup was re-created in the same pod.
    Recreated,
}

impl fmt::Display for Reason {
    /// As Kubernetes names a container's last termination reason.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::OomKilled => "OOMKilled",
            Reason::Error => "Error",
            Reason::Signaled => "Signaled",
            Reason::Recreated => "Recreated",
        })
    }
}

/// One restart, as evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    pub at_unix_ms: u64,
    pub reason: Reason,
    pub oom_killed: bool,
    pub cgroup: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Kubernetes' convention: the exit status, or 128 + signal.
    pub container_exit_code: i32,
    /// The victim's resident memory at an OOM kill, else the cgroup's usage just before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_at_death_bytes: Option<u64>,
    /// The cgroup's memory just before: usage, top stacks and files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryAt>,
    /// Known only from the cgroup's own OOM-kill counter: no victim event was seen (the agent
    /// was not running, or its ring buffer overflowed), so pid, status and memory are unknown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counted_only: bool,
}

/// The evidence of an abnormal-restarts event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RestartEvidence {
    pub group: String,
    pub evaluated_at_unix_ms: u64,
    pub window_seconds: f64,
    pub members: usize,
    pub restarted_members: usize,
    pub restarted_share: f64,
    pub previous_restarted_share: f64,
    pub restarts: usize,
    pub previous_restarts: usize,
    pub oom_kills: usize,
    /// Newest first.
    pub recent: Vec<Restart>,
}
