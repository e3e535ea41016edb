//! What the engine raises: events with a kind, a subject, a status over time, the dimensions
//! users filter on, and the evidence that explains them.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Memory that is not page cache grows towards the limit.
    LeakSuspected,
    /// Page cache grows towards the limit (reclaimable, but it squeezes the working set).
    FileCachePressure,
    /// Containers of a group restart (or get OOM-killed) more than before.
    AbnormalRestarts,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::LeakSuspected,
        EventKind::FileCachePressure,
        EventKind::AbnormalRestarts,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LeakSuspected => "leak_suspected",
            EventKind::FileCachePressure => "file_cache_pressure",
            EventKind::AbnormalRestarts => "abnormal_restarts",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<EventKind, String> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown event kind {s:?} (leak_suspected, file_cache_pressure, abnormal_restarts)")
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl FromStr for Severity {
    type Err = String;

    fn from_str(s: &str) -> Result<Severity, String> {
        match s {
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            _ => Err(format!("unknown severity {s:?}")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Recovered,
}

impl Status {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Recovered => "recovered",
        }
    }
}

impl FromStr for Status {
    type Err = String;

    fn from_str(s: &str) -> Result<Status, String> {
        match s {
            "open" => Ok(Status::Open),
            "recovered" => Ok(Status::Recovered),
            _ => Err(format!("unknown status {s:?} (open, recovered)")),
        }
    }
}

/// Where an event happened, in the terms users filter on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dimensions {
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name, when known (Kubernetes API or the kubelet's log directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Container id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Container name, when known (Kubernetes API or the kubelet's log directories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Memory cgroup path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// A detector's conclusion about one subject, before it becomes (or updates) an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: EventKind,
    /// What the event is about (a cgroup path, or a group such as `namespace:ns`): at most one
    /// open event per kind and subject.
    pub subject: String,
    pub severity: Severity,
    pub summary: String,
    pub dimensions: Dimensions,
    pub evidence: serde_json::Value,
}

/// An event as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub kind: EventKind,
    pub severity: Severity,
    pub status: Status,
    pub subject: String,
    pub summary: String,
    pub first_seen_unix_ms: u64,
    pub last_seen_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_unix_ms: Option<u64>,
    /// Open: until the last check; recovered: until recovery.
    pub duration_seconds: f64,
    pub dimensions: Dimensions,
    pub evidence: serde_json::Value,
}
