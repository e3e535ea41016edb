//! What `memlens status` reports (`/v1/status`): one line per capability.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// State of one capability.
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

/// Cost of one kernel program, from the kernel's BPF statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStats {
    pub name: String,
    pub run_count: u64,
    pub run_time_ns: u64,
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
