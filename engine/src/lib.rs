//! The event engine's detectors: from a cgroup's recorded memory, its lifecycle records and the
//! latest census, they conclude *leak suspected* and *file cache pressure* (seed 000) and
//! *abnormal restarts* (seed 001), as [`Finding`]s with their evidence, and say why growth that
//! raised nothing was held back. Pure logic: what they
//! read comes through [`Sources`], and the agent stores what they find (deduplicated, reopened,
//! recovered) in its database.

mod allowance;
pub mod config;
pub mod growth;
pub mod leak;
pub mod restarts;
pub mod trend;

use std::{collections::HashSet, time::Duration};

pub use config::Config;
use memlens_types::{
    allocations::AllocationEntry,
    cgroups::CgroupRow,
    event::{Dimensions, EventKind, Finding, HeldBack},
    evidence::ProcessMemory,
    files::CachedFile,
    history::Sample,
    leaks::LeakEntry,
    lifecycle::LifecycleRecord,
    pod::PodMeta,
    MemcgId, Workload,
};

/// Why a source could not answer (the database could not be read, ...).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// What the detectors read besides the latest cgroup rows.
pub trait Sources {
    /// Samples of the cgroup at `path` since `since_ms`, oldest first, at most `limit`.
    fn series(&self, path: &str, since_ms: u64, limit: usize) -> Result<Vec<Sample>, SourceError>;
    /// Lifecycle records of every cgroup since `since_ms`, newest first, at most `limit`.
    fn lifecycle(&self, since_ms: u64, limit: usize) -> Result<Vec<LifecycleRecord>, SourceError>;
    /// The stacks of the cgroup at `path` (and its descendants) growing most over `window`,
    /// symbolized, at most `top`.
    fn growing_stacks(&self, path: &str, window: Duration, top: usize) -> Vec<LeakEntry>;
    /// The stacks holding the most in the processes of the cgroup at `path` according to their
    /// own allocation profiles (the Go runtime's), at most `top`; empty when none can be read.
    fn allocation_stacks(&self, path: &str, top: usize) -> Vec<AllocationEntry>;
    /// Where the processes of the cgroup at `path` have no profile of their own: the stacks
    /// holding the most according to a trace of their allocator (`window` long, stopping past
    /// `budget_cpus`), at most `top`, and a note for people: the trace's outcome, or that one
    /// was started (its stacks join the evidence at a later run), or why there is none.
    fn allocation_trace(
        &self,
        path: &str,
        top: usize,
        window: Duration,
        budget_cpus: f64,
    ) -> (Vec<AllocationEntry>, String);
    /// The files with the most page cache charged to the cgroup, at most `top`.
    fn top_files(&self, memcg: MemcgId, top: usize) -> Vec<CachedFile>;
    /// The cgroup's processes with the most resident memory, at most `top`.
    fn top_processes(&self, path: &str, top: usize) -> Vec<ProcessMemory>;
    /// Kubernetes names of a pod (and of its container, when given).
    fn pod(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta>;
}

/// What one run of the detectors looks at.
pub struct Context<'a> {
    pub now_ms: u64,
    /// The latest census' cgroups.
    pub rows: &'a [CgroupRow],
    pub config: &'a Config,
    /// This node's name, put on every event.
    pub host: &'a str,
    /// The node's memory: the limit of a cgroup that has none.
    pub mem_total: u64,
    pub sources: &'a dyn Sources,
}

impl Context<'_> {
    /// Namespace of a pod's cgroup, when its name is known.
    fn namespace_of(&self, row: &CgroupRow) -> Option<String> {
        match &row.workload {
            Workload::Pod {
                pod_uid,
                container_id,
                ..
            } => self
                .sources
                .pod(pod_uid, container_id.as_deref())
                .map(|p| p.namespace),
            _ => None,
        }
    }

    /// Whether the configured filters let this cgroup through.
    fn allowed(&self, row: &CgroupRow) -> bool {
        self.config.filters.namespace_allowed(
            self.config.cluster.as_deref(),
            self.namespace_of(row).as_deref(),
        )
    }

    fn dimensions(&self, row: &CgroupRow) -> Dimensions {
        let mut dims = Dimensions {
            host: self.host.to_string(),
            cluster: self.config.cluster.clone(),
            cgroup: Some(row.path.clone()),
            ..Dimensions::default()
        };
        match &row.workload {
            Workload::Pod {
                pod_uid,
                container_id,
                ..
            } => {
                if let Some(pod) = self.sources.pod(pod_uid, container_id.as_deref()) {
                    dims.namespace = Some(pod.namespace);
                    dims.pod = Some(pod.pod);
                    dims.container_name = pod.container;
                }
                dims.pod_uid = Some(pod_uid.clone());
                dims.container.clone_from(container_id);
            }
            Workload::Container { container_id, .. } => {
                dims.container = Some(container_id.clone());
            }
            _ => {}
        }
        dims
    }
}

/// Which detectors a run covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The leak and file-cache detector.
    pub growth: bool,
    pub restarts: bool,
}

/// What one run concluded.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The detectors that ran.
    pub detectors: Vec<&'static str>,
    /// The kinds of event the run covers: an open event of these kinds without a finding has
    /// recovered.
    pub kinds: Vec<EventKind>,
    pub findings: Vec<Finding>,
    /// Growth that raised nothing, and why.
    pub held_back: Vec<HeldBack>,
}

/// Runs the due detectors (those the config enables). `open_restarts` are the subjects of the
/// open abnormal-restarts events: they stay open while restarts continue.
#[must_use]
pub fn check(cx: &Context<'_>, due: Due, open_restarts: &HashSet<String>) -> Run {
    let mut run = Run::default();
    if due.growth && (cx.config.leak.enabled || cx.config.file_cache.enabled) {
        run.detectors.push("leak");
        run.kinds
            .extend([EventKind::LeakSuspected, EventKind::FileCachePressure]);
        let detected = leak::detect(cx);
        run.findings.extend(detected.findings);
        run.held_back = detected.held_back;
    }
    if due.restarts && cx.config.restarts.enabled {
        run.detectors.push("restarts");
        run.kinds.push(EventKind::AbnormalRestarts);
        run.findings.extend(restarts::detect(cx, open_restarts));
    }
    run
}

impl Config {
    /// What the engine runs when, for `memlens status`.
    #[must_use]
    pub fn schedule(&self) -> String {
        let every = |d: Duration| humantime::format_duration(d).to_string();
        let leak = if self.leak.enabled || self.file_cache.enabled {
            format!(
                "leak detector every {} (lookback {}, horizon {}, threshold {:.0}% of the limit)",
                every(self.leak.interval),
                every(self.leak.lookback),
                every(self.leak.horizon),
                self.leak.threshold * 100.0
            )
        } else {
            "leak detector off".into()
        };
        let restarts = if self.restarts.enabled {
            format!(
                "restart detector every {} (window {})",
                every(self.restarts.interval),
                every(self.restarts.window)
            )
        } else {
            "restart detector off".into()
        };
        format!("{leak}, {restarts}")
    }
}
