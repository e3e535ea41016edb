//! Events of the engine: a kind, a subject, a status over time, the dimensions users filter on,
//! and the evidence that explains them, typed per kind.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::evidence::{GrowthEvidence, RestartEvidence};

/// What an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

/// A name that is not one of a closed set's (an event kind, a severity, a status).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {found:?} (expected one of: {expected})")]
pub struct UnknownName {
    pub what: &'static str,
    pub found: String,
    pub expected: &'static str,
}

impl FromStr for EventKind {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<EventKind, UnknownName> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "event kind",
                found: s.into(),
                expected: "leak_suspected, file_cache_pressure, abnormal_restarts",
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
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Severity, UnknownName> {
        match s {
            "warning" => Ok(Severity::Warning),
            "critical" => Ok(Severity::Critical),
            _ => Err(UnknownName {
                what: "severity",
                found: s.into(),
                expected: "warning, critical",
            }),
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
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Status, UnknownName> {
        match s {
            "open" => Ok(Status::Open),
            "recovered" => Ok(Status::Recovered),
            _ => Err(UnknownName {
                what: "status",
                found: s.into(),
                expected: "open, recovered",
            }),
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

/// An event's kind and its evidence, together: the kind decides the evidence's shape, so a
/// leak's evidence can never be read as a restart's. On the wire these are the event's `kind`
/// and `evidence` fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "evidence", rename_all = "snake_case")]
pub enum Evidence {
    LeakSuspected(Box<GrowthEvidence>),
    FileCachePressure(Box<GrowthEvidence>),
    AbnormalRestarts(Box<RestartEvidence>),
}

impl Evidence {
    #[must_use]
    pub fn kind(&self) -> EventKind {
        match self {
            Evidence::LeakSuspected(_) => EventKind::LeakSuspected,
            Evidence::FileCachePressure(_) => EventKind::FileCachePressure,
            Evidence::AbnormalRestarts(_) => EventKind::AbnormalRestarts,
        }
    }
}

/// A detector's conclusion about one subject, before it becomes (or updates) an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// What the event is about (a cgroup path, or a group such as `namespace:ns`): at most one
    /// open event per kind and subject.
    pub subject: String,
    pub severity: Severity,
    pub summary: String,
    pub dimensions: Dimensions,
    #[serde(flatten)]
    pub evidence: Evidence,
}

impl Finding {
    #[must_use]
    pub fn kind(&self) -> EventKind {
        self.evidence.kind()
    }
}

/// An event as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
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
    /// `kind` and `evidence`.
    #[serde(flatten)]
    pub evidence: Evidence,
}

impl Event {
    #[must_use]
    pub fn kind(&self) -> EventKind {
        self.evidence.kind()
    }
}

/// What one run of the detectors changed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckReport {
    pub checked_at_unix_ms: u64,
    /// The detectors that ran.
    pub detectors: Vec<String>,
    /// Events opened by this run (new, or reopened within the silence period).
    pub raised: Vec<Event>,
    /// Open events this run saw again.
    pub still_open: Vec<Event>,
    pub recovered: Vec<Event>,
    /// Cgroups whose memory grew but raised no event, and why (the fastest growing first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<HeldBack>,
    /// Why nothing ran (this host filtered out by `filters.hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A cgroup whose growth raised no event, and why: levelling off, within its allowance, page
/// cache the kernel reclaims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldBack {
    pub subject: String,
    pub kind: EventKind,
    pub growth_bytes_per_hour: f64,
    pub reason: String,
}

/// Query of `GET /v1/events`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EventKind>,
    /// Most events, newest first (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `GET /v1/events`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventsResponse {
    pub events: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{Reason, Restart};

    fn restarts() -> Evidence {
        Evidence::AbnormalRestarts(Box::new(RestartEvidence {
            group: "namespace:shop".into(),
            evaluated_at_unix_ms: 1,
            window_seconds: 1800.0,
            members: 2,
            restarted_members: 1,
            restarted_share: 0.5,
            previous_restarted_share: 0.0,
            restarts: 3,
            previous_restarts: 0,
            oom_kills: 3,
            recent: vec![Restart {
                at_unix_ms: 1,
                reason: Reason::OomKilled,
                oom_killed: true,
                cgroup: "/a".into(),
                pod_uid: None,
                container_id: None,
                pid: 7,
                comm: "leak".into(),
                exit_code: None,
                signal: Some(9),
                container_exit_code: 137,
                memory_at_death_bytes: Some(1),
                memory: None,
                counted_only: false,
            }],
        }))
    }

    #[test]
    fn kind_and_evidence_are_two_fields_on_the_wire_and_agree_when_read() {
        let event = Event {
            id: 2,
            severity: Severity::Critical,
            status: Status::Open,
            subject: "namespace:shop".into(),
            summary: "3 restarts".into(),
            first_seen_unix_ms: 1,
            last_seen_unix_ms: 2,
            recovered_unix_ms: None,
            duration_seconds: 1.0,
            dimensions: Dimensions::default(),
            evidence: restarts(),
        };
        let json = serde_json::to_value(&event).expect("json");
        assert_eq!(json["kind"], "abnormal_restarts");
        assert_eq!(json["evidence"]["recent"][0]["reason"], "OOMKilled");
        assert_eq!(json["evidence"]["oom_kills"], 3);
        let back: Event = serde_json::from_value(json.clone()).expect("read back");
        assert_eq!(back, event);
        // A restart's evidence under a leak's kind is refused, not misread.
        let mut wrong = json;
        wrong["kind"] = "leak_suspected".into();
        assert!(serde_json::from_value::<Event>(wrong).is_err());
    }
}
