//! Allocation-level attribution as served (`/v1/allocations`): which code holds memory according
//! to the allocations themselves, where an allocator's reuse of freed memory makes the page-level
//! answer (`/v1/leaks`: who first touched each page) name the wrong code.

use serde::{Deserialize, Serialize};

use crate::{selector::CgroupSelector, stack::Frame};

/// Query of `GET /v1/allocations`: one process, or the processes of a cgroup or pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocationsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A memory cgroup (and its descendants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupSelector>,
    /// A pod, by UID (or its beginning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The results of allocator trace `trace` (`POST /v1/traces`) instead of the processes'
    /// own profiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<u64>,
    /// Stacks in the answer (default 10, at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
}

/// Where a process's allocation profile came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocationSource {
    /// The Go runtime's own heap profile, read from the process's memory: no probe, no cost to
    /// the process; as of the last garbage collection.
    GoRuntime,
    /// An allocator trace: user probes on the process's allocator functions, sampled by bytes,
    /// for a bounded window; allocations made in the window and which of them are still held.
    AllocatorTrace,
}

/// One process asked about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessProfile {
    pub pid: u32,
    pub comm: String,
    /// None when no profile could be read (`error` says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AllocationSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Average bytes allocated between two samples.
    pub sample_rate_bytes: u64,
    /// Estimated bytes and objects allocated and not freed, and allocated in all, over every
    /// stack of the profile.
    pub inuse_bytes: u64,
    pub inuse_objects: u64,
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
    /// Distinct stacks in the profile, and stacks left out by the reader's bound.
    pub stacks: usize,
    pub dropped_stacks: u64,
    /// How long the agent took to read the profile from the process's memory (the process is
    /// not stopped or slowed: the agent only reads).
    #[serde(default)]
    pub read_seconds: f64,
}

/// One stack of one process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationEntry {
    pub pid: u32,
    pub comm: String,
    /// Estimated from the samples (Horvitz-Thompson: each sample weighs the inverse of its
    /// chance of being sampled).
    pub inuse_bytes: u64,
    pub inuse_objects: u64,
    pub alloc_bytes: u64,
    pub alloc_objects: u64,
    /// Innermost first.
    pub user_stack: Vec<Frame>,
}

/// `GET /v1/allocations`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllocationsResponse {
    pub taken_at_unix_ms: u64,
    pub processes: Vec<ProcessProfile>,
    /// Processes the query named beyond the most read at once (the largest are read).
    #[serde(default)]
    pub processes_left_out: usize,
    /// The stacks holding the most (in-use bytes) over the processes, most first.
    pub by_inuse: Vec<AllocationEntry>,
}

/// Query of `POST /v1/traces`: trace the allocator of one process, or of the processes of a
/// cgroup or pod, for a bounded window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Length of the window in seconds (default 30, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Mean bytes allocated between two samples (default 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_bytes: Option<u64>,
    /// The trace stops itself when its measured cost (allocator calls per second x cost per
    /// call) exceeds this many CPUs (default 0.5: half a CPU over every traced thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_cpus: Option<f64>,
}

/// Whether a trace is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceState {
    Running,
    Finished,
}

/// Why a trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceEnd {
    /// Its window ran out.
    Completed,
    /// Asked to stop.
    Stopped,
    /// Every traced process exited.
    ProcessesExited,
    /// Its measured cost went past its budget.
    OverBudget,
    /// The agent is shutting down.
    AgentStopping,
}

/// One process of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TracedProcess {
    pub pid: u32,
    pub comm: String,
    /// The allocator probed ("glibc", "jemalloc", ...) and the object that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Functions probed (entry, and return for those that allocate).
    pub probes: usize,
    /// Why it is not traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// It exited during the trace.
    #[serde(default)]
    pub exited: bool,
}

/// What a trace did and cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceStatus {
    pub id: u64,
    pub state: TraceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<TraceEnd>,
    pub started_unix_ms: u64,
    pub seconds: f64,
    pub elapsed_seconds: f64,
    pub sample_bytes: u64,
    pub budget_cpus: f64,
    /// Measured before the trace on this machine: what the probes add to one allocating call
    /// (entry and return) and to one freeing call (entry), in microseconds.
    pub alloc_call_cost_us: f64,
    pub free_call_cost_us: f64,
    pub processes: Vec<TracedProcess>,
    /// Allocator calls seen, and the rate over the last second.
    pub alloc_calls: u64,
    pub free_calls: u64,
    pub calls_per_second: f64,
    /// Calls per second x cost per call, in CPUs: over the last second and over the trace.
    pub cost_cpus: f64,
    pub mean_cost_cpus: f64,
    /// Allocations sampled, and sampled blocks freed.
    pub samples: u64,
    pub sampled_frees: u64,
    /// Samples lost: the event buffer was full, the block table was full (its free unseen),
    /// the stack could not be copied (kept without a stack), beyond the agent's bounds.
    pub lost_ring_full: u64,
    pub lost_live_full: u64,
    pub stack_copy_errors: u64,
    pub dropped_samples: u64,
}
