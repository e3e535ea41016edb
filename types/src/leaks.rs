//! Leak attribution as served: which stacks hold memory and which grow (`/v1/leaks`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    pod::PodMeta,
    selector::CgroupSelector,
    stack::{Frame, LeafCaller, StackStop, UnwindMethod},
    units::{MemcgId, PageKind},
};

/// One stack of an answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeakEntry {
    pub cgroup_id: MemcgId,
    pub cgroup: String,
    /// Kubernetes names of its pod and container, when the agent knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodMeta>,
    /// The process holding the most of this stack; 0 for a cgroup's "other stacks" entry.
    pub pid: u32,
    pub comm: String,
    pub process_alive: bool,
    /// How many processes hold this stack: the same code path in several processes of one
    /// binary is one entry (unless the query asks for `per_process`).
    #[serde(default = "one")]
    pub process_count: usize,
    /// The processes holding it, the largest holders first (at most [`MAX_ENTRY_PROCESSES`]);
    /// empty when only one does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessHeld>,
    /// Anonymous memory (leak candidate), file (page cache) or kernel.
    pub kind: PageKind,
    pub held_bytes: u64,
    /// Estimated live allocations.
    pub objects: u64,
    /// Held now minus held at the start of the window (negative: shrinking).
    pub growth_bytes: i64,
    pub growth_bytes_per_second: f64,
    /// Stacks merged by the cap on distinct stacks.
    pub other: bool,
    /// How a frame-pointer stack's innermost caller was established.
    pub leaf_caller: Option<LeafCaller>,
    /// How the user stack was unwound (absent without a user stack).
    #[serde(default)]
    pub unwound_by: Option<UnwindMethod>,
    /// Why the user stack ends before the program's or thread's entry.
    #[serde(default)]
    pub stack_stop: Option<StackStop>,
    /// The user stack ends before the program's or thread's entry (`stack_stop` says why).
    pub truncated: bool,
    /// Innermost first.
    pub user_stack: Vec<Frame>,
    pub kernel_stack: Vec<Frame>,
}

fn one() -> usize {
    1
}

/// Most processes listed in one entry.
pub const MAX_ENTRY_PROCESSES: usize = 16;

/// A process's share of a stack held by several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessHeld {
    pub pid: u32,
    pub comm: String,
    pub alive: bool,
    pub held_bytes: u64,
}

/// Query of `GET /v1/leaks` (and its `/pprof` and `/flamegraph` forms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaksQuery {
    /// A memory cgroup and its descendants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupSelector>,
    /// A pod, by UID (or its beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Keep each process's stacks apart (by default the same stack in several processes of one
    /// binary is one entry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_process: bool,
    /// Growth window, e.g. `10m` (default 10m, at most 24h).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub since: Option<Duration>,
    /// Stacks per list (default 10, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
    /// Answer from the census taken at this time (`taken_at_unix_ms` of an earlier answer), so
    /// several requests describe the same instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
}

/// `GET /v1/leaks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaksResponse {
    pub taken_at_unix_ms: u64,
    pub sample_shift: u32,
    /// The window asked for, and the one history could cover (shorter while the agent is young).
    pub requested_window_seconds: f64,
    pub window_seconds: f64,
    /// Held bytes of all matching stacks.
    pub held_bytes: u64,
    pub matching_stacks: usize,
    /// Distinct stacks merged into "other" entries by the cap, in this census.
    pub overflow_stacks: u64,
    /// Largest growth first.
    pub by_growth: Vec<LeakEntry>,
    /// Most held first.
    pub by_held: Vec<LeakEntry>,
}

/// One of a cgroup's largest stacks, labelled by its innermost named functions (for metrics,
/// whose cardinality must stay bounded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupStack {
    pub cgroup: String,
    /// `f < g < h`: innermost first, at most [`STACK_LABEL_FRAMES`] named frames.
    pub stack: String,
    pub bytes: u64,
}

/// Named frames in a stack label.
pub const STACK_LABEL_FRAMES: usize = 3;
