//! The config file's tables: one per detector, the event store's, and the filters.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::serde_forms::{duration, one_or_many};

/// The leak detector: forecasts each cgroup's memory from a trend over `lookback`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeakConfig {
    pub enabled: bool,
    /// How often the detector runs.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How much history the trend is fitted on.
    #[serde(with = "duration")]
    pub lookback: Duration,
    /// How far ahead the forecast must cross `threshold` × limit to raise a leak.
    #[serde(with = "duration")]
    pub horizon: Duration,
    /// Share of the memory limit the forecast must cross, in (0, 1].
    pub threshold: f64,
    /// Fewest samples in `lookback` for a trend to count (at least 3).
    pub min_samples: usize,
    /// Slower growth is never a leak.
    pub min_growth_bytes_per_hour: u64,
    /// A leak in a cgroup of native processes (no allocation profile of their own): how long
    /// the agent traces their allocator for the event's evidence, once per event; "0s": never
    /// (the evidence then says how to run a trace by hand). Every allocator call of the traced
    /// processes traps while traced, so the window is short and its cost bounded below.
    #[serde(with = "duration")]
    pub allocation_trace: Duration,
    /// CPUs such a trace may cost the processes (calls per second x measured cost per call)
    /// before it stops itself (checked every 250 ms).
    pub allocation_trace_budget_cpus: f64,
    /// Growth expected of some workloads (a cache that fills to its configured size, a heap
    /// sized at start-up): up to `up_to_bytes` it raises nothing.
    pub allow: Vec<Allowance>,
}

/// Growth allowed to the cgroups a rule matches: their working set may grow to `up_to_bytes`
/// before the detector forecasts it (beyond it, growth is unexpected again). Every criterion
/// given must match; at least one is given.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Allowance {
    /// A glob over the cgroup's path: the hierarchy path (`/kubepods/**/pod*`) or as the shell
    /// shows it (`/sys/fs/cgroup/...`); `*` stays within one level, `**` crosses levels.
    pub cgroup: Option<String>,
    /// A pod's namespace.
    pub namespace: Option<String>,
    /// A glob over a pod's name (`redis-*`).
    pub pod: Option<String>,
    /// How far the cgroup's memory may grow.
    pub up_to_bytes: u64,
}

impl Default for LeakConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_hours(1),
            lookback: Duration::from_hours(6),
            horizon: Duration::from_hours(2),
            threshold: 0.9,
            min_samples: 10,
            min_growth_bytes_per_hour: 1 << 20,
            allocation_trace: Duration::from_secs(10),
            allocation_trace_budget_cpus: 0.05,
            allow: Vec::new(),
        }
    }
}

/// File-cache pressure: page cache in a limited cgroup's working set heading for the limit, or
/// reclaim that cannot keep up (page cache read back in as fast as it is evicted).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileCacheConfig {
    pub enabled: bool,
    /// How many of the largest cached files to report, 1..=50.
    pub top_files: usize,
    /// A limited cgroup at its threshold thrashes when the page cache it reads back in soon
    /// after reclaim evicted it comes to this share of its limit per hour (1.0: a limit's worth
    /// an hour); 0 turns the check off.
    pub refaults_per_hour: f64,
}

impl Default for FileCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            top_files: 5,
            refaults_per_hour: 1.0,
        }
    }
}

/// The restart detector: containers that restart repeatedly within a window.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    pub enabled: bool,
    /// How often the detector runs.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// The window restarts are counted in.
    #[serde(with = "duration")]
    pub window: Duration,
    /// Restarts of one container within `window` that make its group abnormal (at least 1).
    pub min_restarts: u32,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_mins(30),
            window: Duration::from_mins(30),
            min_restarts: 2,
        }
    }
}

/// Event bookkeeping.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// An event recovered less than this ago is reopened instead of a new one raised.
    #[serde(with = "duration")]
    pub silence: Duration,
    /// Most events kept (at least 1); the oldest recovered ones are dropped beyond it.
    pub max_events: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            silence: Duration::from_mins(30),
            max_events: 10_000,
        }
    }
}

/// Which subjects raise events. An empty list allows everything.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    pub hosts: Vec<String>,
    pub namespaces: Vec<NamespaceFilter>,
}

/// Namespaces allowed, optionally only in one cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceFilter {
    pub cluster_name: Option<String>,
    /// One name or a list (`namespace = "a"` or `namespace = ["a", "b"]`); never empty.
    #[serde(deserialize_with = "one_or_many")]
    pub namespace: Vec<String>,
}

impl Filters {
    /// Whether events on `host` are allowed: always when `hosts` is empty.
    pub fn host_allowed(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }

    /// A subject with a known namespace passes when some entry names it (and its
    /// `cluster_name`, when the entry has one, equals `cluster`); a subject without a namespace
    /// (not a pod) passes only when no namespace filter is configured.
    pub fn namespace_allowed(&self, cluster: Option<&str>, namespace: Option<&str>) -> bool {
        if self.namespaces.is_empty() {
            return true;
        }
        let Some(namespace) = namespace else {
            return false;
        };
        self.namespaces.iter().any(|f| {
            f.namespace.iter().any(|n| n == namespace)
                && f.cluster_name.as_deref().is_none_or(|c| Some(c) == cluster)
        })
    }
}
