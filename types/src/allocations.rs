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
