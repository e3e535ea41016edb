//! Process exits, OOM kills and cgroups created and removed, as recorded (`/v1/lifecycle`).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{files::CachedFile, leaks::LeakEntry, selector::CgroupSelector, workload::Workload};

/// What a lifecycle record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A process ended other than with status 0 (normal exits are not kept).
    Exit,
    /// The OOM killer killed a process.
    OomKill,
    CgroupCreated,
    CgroupRemoved,
}

impl RecordKind {
    pub const ALL: [RecordKind; 4] = [
        RecordKind::Exit,
        RecordKind::OomKill,
        RecordKind::CgroupCreated,
        RecordKind::CgroupRemoved,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Exit => "exit",
            RecordKind::OomKill => "oom_kill",
            RecordKind::CgroupCreated => "cgroup_created",
            RecordKind::CgroupRemoved => "cgroup_removed",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record kind this memlens does not know (written by a newer one).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown lifecycle record kind {0:?}")]
pub struct UnknownRecordKind(pub String);

impl FromStr for RecordKind {
    type Err = UnknownRecordKind;

    fn from_str(s: &str) -> Result<RecordKind, UnknownRecordKind> {
        RecordKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownRecordKind(s.to_string()))
    }
}

/// A cgroup's memory at one instant: what a process ending there (an OOM kill, a crash) left
/// behind, recorded with the lifecycle record because the census moves on within seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemoryAt {
    /// The census the figures come from (the last one before the end).
    pub taken_at_unix_ms: u64,
    pub usage_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// Stacks holding the most memory in the cgroup and its descendants.
    pub top_stacks: Vec<LeakEntry>,
    /// Files with the most page cache charged to it.
    pub top_files: Vec<CachedFile>,
}

/// One lifecycle record, as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LifecycleRecord {
    pub ts_ms: u64,
    pub kind: RecordKind,
    pub pid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    /// Exit status, when the process exited (rather than being killed by a signal).
    pub exit_code: Option<i32>,
    /// The signal that ended the process.
    pub signal: Option<i32>,
    /// Chosen by the OOM killer (known from the kernel's own OOM event).
    pub oom_killed: bool,
    /// The cgroup's main process: its parent is in another memory cgroup (a container's init,
    /// started by its runtime or supervisor from outside). Its abnormal end is a restart.
    pub main_process: bool,
    /// OOM kills: the victim's resident memory when it was chosen.
    pub anon_rss_bytes: Option<u64>,
    pub file_rss_bytes: Option<u64>,
    pub shmem_rss_bytes: Option<u64>,
    /// For OOM kills and main-process ends: the cgroup's memory just before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<MemoryAt>,
}

/// Most lifecycle records or events in one answer.
pub const MAX_RECORDS: usize = 10_000;

/// Query of `GET /v1/lifecycle`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleQuery {
    /// A memory cgroup (and its descendants); default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupSelector>,
    /// How far back, e.g. `1h` (default 1h).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub since: Option<Duration>,
    /// Most records, newest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    pub record: LifecycleRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}
