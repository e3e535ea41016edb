//! The event engine: detectors that read the history (usage series, lifecycle records) and the
//! latest census, and raise deduplicated events with the evidence attached: *leak suspected*
//! and *file cache pressure* (seed 000), *abnormal restarts* (seed 001).
//!
//! Detectors run on their schedules on the engine's own thread, and on demand (`memlens events
//! check`); events live in the history database, so a restart of the agent keeps them.

pub mod event;
pub mod leak;
pub mod restarts;
pub mod store;
pub mod trend;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use self::event::{Dimensions, Event, EventKind, Finding, Status};
use crate::{
    attribution::{
        query::{self, LeakSources, LeaksQuery},
        report::LeakEntry,
    },
    cgroup::{kube::PodDirectory, Workload},
    config::Config,
    history::{Reader, Store, StoreError},
    model::{unix_ms, CgroupRow, Snapshot, Snapshots},
};

/// What detectors read.
pub struct Context<'a> {
    pub now_ms: u64,
    pub snapshot: &'a Snapshot,
    pub reader: &'a Reader,
    pub config: &'a Config,
    pub host: &'a str,
    pub memory_root: &'a Path,
    /// The node's memory: the limit of a cgroup that has none.
    pub mem_total: u64,
    pub pods: &'a PodDirectory,
    /// The stacks of a cgroup growing most over a window (symbolized), at most n.
    pub growing_stacks: &'a dyn Fn(&str, Duration, usize) -> Vec<LeakEntry>,
}

impl Context<'_> {
    /// Namespace of a pod's cgroup, when the kubelet's log directory names it.
    fn namespace_of(&self, row: &CgroupRow) -> Option<String> {
        match &row.workload {
            Workload::Pod {
                pod_uid,
                container_id,
                ..
            } => self
                .pods
                .lookup(pod_uid, container_id.as_deref())
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
                if let Some(pod) = self.pods.lookup(pod_uid, container_id.as_deref()) {
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

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Why nothing ran (this host filtered out by `filters.hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// Counters for `memlens status`.
#[derive(Default)]
pub struct EngineStats {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub raised: AtomicU64,
    /// How long the last run took (detectors, evidence, writes).
    pub last_run_ms: AtomicU64,
}

/// An on-demand run, answered on `reply`.
pub struct CheckRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<CheckReport, String>>,
}

/// The engine and what it reads.
pub struct Engine {
    pub config: Config,
    pub host: String,
    pub db: PathBuf,
    pub store: Store,
    pub snapshots: Arc<Snapshots>,
    pub leaks: LeakSources,
    pub memory_root: PathBuf,
    pub stats: Arc<EngineStats>,
    /// Pod and container names.
    pub pods: PodDirectory,
}

/// Which detectors a run covers.
#[derive(Clone, Copy, Debug)]
struct Due {
    growth: bool,
    restarts: bool,
}

impl Engine {
    /// Runs the due detectors and records what they found.
    fn run(&mut self, due: Due) -> Result<CheckReport, EngineError> {
        let started = Instant::now();
        let now_ms = unix_ms();
        let mut report = CheckReport {
            checked_at_unix_ms: now_ms,
            ..CheckReport::default()
        };
        if !self.config.filters.host_allowed(&self.host) {
            report.skipped = Some(format!("host {:?} is not in filters.hosts", self.host));
            return Ok(report);
        }
        let snapshot = self.snapshots.latest();
        let reader = Reader::open(&self.db)?;
        let snapshots = Arc::clone(&self.snapshots);
        let leaks = self.leaks.clone();
        let at = snapshot.taken_at_unix_ms;
        let growing = move |path: &str, since: Duration, top: usize| {
            let query = LeaksQuery {
                cgroup: Some(path.to_string()),
                since: Some(humantime::format_duration(since.min(MAX_STACK_WINDOW)).to_string()),
                top: Some(top),
                at: Some(at),
                ..LeaksQuery::default()
            };
            query::run(&snapshots, &leaks, &query, false)
                .map(|(answer, _)| answer.by_growth)
                .unwrap_or_else(|e| {
                    tracing::debug!("no stacks for {path}: {e}");
                    Vec::new()
                })
        };
        let cx = Context {
            now_ms,
            snapshot: &snapshot,
            reader: &reader,
            config: &self.config,
            host: &self.host,
            memory_root: &self.memory_root,
            mem_total: mem_total(),
            pods: &self.pods,
            growing_stacks: &growing,
        };
        let mut kinds = Vec::new();
        let mut findings: Vec<Finding> = Vec::new();
        if due.growth {
            kinds.extend([EventKind::LeakSuspected, EventKind::FileCachePressure]);
            report.detectors.push("leak".into());
            findings.extend(leak::detect(&cx));
        }
        if due.restarts && self.config.restarts.enabled {
            kinds.push(EventKind::AbnormalRestarts);
            report.detectors.push("restarts".into());
            let open: HashSet<String> = store::list(
                &reader,
                Some(Status::Open),
                Some(EventKind::AbnormalRestarts),
                MAX_OPEN,
            )?
            .into_iter()
            .map(|e| e.subject)
            .collect();
            findings.extend(restarts::detect(&cx, &open));
        }
        let applied = store::apply(
            &mut self.store,
            &kinds,
            &findings,
            now_ms,
            self.config.events.silence,
            self.config.events.max_events,
        )?;
        let load = |ids: &[u64]| -> Result<Vec<Event>, EngineError> {
            Ok(ids
                .iter()
                .filter_map(|id| store::get(&reader, *id).transpose())
                .collect::<Result<_, _>>()?)
        };
        report.raised = load(&applied.raised)?;
        report.still_open = load(&applied.updated)?;
        report.recovered = load(&applied.recovered)?;
        self.stats.runs.fetch_add(1, Ordering::Relaxed);
        self.stats.last_run_ms.store(
            u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.stats
            .raised
            .fetch_add(report.raised.len() as u64, Ordering::Relaxed);
        for e in &report.raised {
            tracing::warn!("event {} {}: {}", e.id, e.kind, e.summary);
        }
        for e in &report.recovered {
            tracing::info!(
                "event {} {} recovered after {:.0} s",
                e.id,
                e.kind,
                e.duration_seconds
            );
        }
        Ok(report)
    }
}

/// Longest growth window asked of the leak history.
const MAX_STACK_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Most open events of a kind considered at once.
const MAX_OPEN: usize = 100_000;
/// How often the thread looks at the stop flag while idle.
const IDLE: Duration = Duration::from_millis(200);

/// Starts the engine's thread: detectors on their schedules, and on request.
pub fn spawn(
    mut engine: Engine,
    requests: mpsc::Receiver<CheckRequest>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let started = Instant::now();
            let mut next_growth = started + engine.config.leak.interval;
            let mut next_restarts = started + engine.config.restarts.interval;
            let growth_enabled = engine.config.leak.enabled || engine.config.file_cache.enabled;
            while !stop.load(Ordering::Relaxed) {
                match requests.recv_timeout(IDLE) {
                    Ok(request) => {
                        let report = engine.run(Due {
                            growth: growth_enabled,
                            restarts: true,
                        });
                        if report.is_err() {
                            engine.stats.failures.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = request.reply.send(report.map_err(|e| e.to_string()));
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                let now = Instant::now();
                let due = Due {
                    growth: growth_enabled && now >= next_growth,
                    restarts: now >= next_restarts,
                };
                if !due.growth && !due.restarts {
                    continue;
                }
                if due.growth {
                    next_growth = now + engine.config.leak.interval;
                }
                if due.restarts {
                    next_restarts = now + engine.config.restarts.interval;
                }
                if let Err(e) = engine.run(due) {
                    engine.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("event engine: {e}");
                }
            }
        })
}

/// `MemTotal` of `/proc/meminfo`, in bytes (u64::MAX when unreadable: no limit).
fn mem_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib * 1024)
}
