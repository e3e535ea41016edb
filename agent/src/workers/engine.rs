//! The event engine's thread: runs the detectors ([`memlens_engine`]) on their schedules and on
//! request, with what they read from the database and the latest census, and keeps what they
//! find in the database as deduplicated events.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use memlens_attribution::{
    allocations::{self, ProcessInput},
    query::{self, LeakSources},
    View, Views,
};
use memlens_engine::{Config, Context, Due, SourceError, Sources};
use memlens_pods::PodDirectory;
use memlens_runtimes::go_heap::GoHeapReader;
use memlens_store::{Reader, Store, StoreError};
use memlens_types::{
    allocations::{AllocationEntry, TraceEnd},
    event::{CheckReport, Event, EventKind, Status},
    evidence::ProcessMemory,
    files::CachedFile,
    history::Sample,
    leaks::{LeakEntry, LeaksQuery},
    lifecycle::LifecycleRecord,
    pod::PodMeta,
    unix_ms, CgroupSelector, MemcgId,
};

use crate::{
    health::{EndOnDrop, Heartbeat},
    traces::{TraceResults, TraceSpec, Traces},
};

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
    pub views: Arc<Views>,
    pub leaks: LeakSources,
    pub memory_root: PathBuf,
    /// Go processes' heap profiles, for leak evidence.
    pub go_heap: Arc<Mutex<GoHeapReader>>,
    /// Allocator traces of native processes, for leak evidence.
    pub traces: Arc<Traces>,
    /// Bytes of stack such a trace copies per sample.
    pub stack_copy_bytes: u32,
    pub stats: Arc<EngineStats>,
    pub pods: PodDirectory,
    pub heartbeat: Arc<Heartbeat>,
}

/// Processes (the largest by resident memory) whose allocation profiles a leak's evidence reads.
const PROFILED_PROCESSES: usize = 8;
/// Longest growth window asked of the leak history.
const MAX_STACK_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Most open events of a kind considered at once.
const MAX_OPEN: usize = 100_000;
/// How often the thread looks at the stop flag while idle.
const IDLE: Duration = Duration::from_millis(200);

/// What the detectors read, from the database and the census they run on.
struct EngineSources<'a> {
    reader: &'a Reader,
    views: &'a Views,
    leaks: &'a LeakSources,
    view: &'a View,
    memory_root: &'a Path,
    go_heap: &'a Mutex<GoHeapReader>,
    traces: &'a Arc<Traces>,
    stack_copy_bytes: u32,
    pods: &'a PodDirectory,
}

impl Sources for EngineSources<'_> {
    fn series(&self, path: &str, since_ms: u64, limit: usize) -> Result<Vec<Sample>, SourceError> {
        Ok(self.reader.series(path, since_ms, limit)?)
    }

    fn lifecycle(&self, since_ms: u64, limit: usize) -> Result<Vec<LifecycleRecord>, SourceError> {
        Ok(self.reader.lifecycle(None, since_ms, limit)?)
    }

    fn growing_stacks(&self, path: &str, window: Duration, top: usize) -> Vec<LeakEntry> {
        let query = LeaksQuery {
            cgroup: Some(CgroupSelector::Path(path.to_string())),
            since: Some(window.min(MAX_STACK_WINDOW)),
            top: Some(top),
            at: Some(self.view.snapshot.taken_at_unix_ms),
            ..LeaksQuery::default()
        };
        query::run(self.views, self.leaks, &query, false)
            .map(|(answer, _)| answer.by_growth)
            .unwrap_or_else(|e| {
                tracing::debug!("no stacks for {path}: {e}");
                Vec::new()
            })
    }

    fn allocation_stacks(&self, path: &str, top: usize) -> Vec<AllocationEntry> {
        let dir = self.memory_root.join(path.trim_start_matches('/'));
        let pids: Vec<u32> = memlens_procfs::process::top_by_memory(&dir, PROFILED_PROCESSES)
            .iter()
            .map(|p| p.pid)
            .collect();
        let inputs: Vec<ProcessInput> = match crate::profiles::read(self.go_heap, &pids) {
            Ok(inputs) => inputs.into_iter().filter(|i| i.profile.is_ok()).collect(),
            Err(e) => {
                tracing::debug!("no allocation profiles for {path}: {e}");
                return Vec::new();
            }
        };
        if inputs.is_empty() {
            return Vec::new();
        }
        let taken_at = unix_ms();
        self.leaks
            .symbols
            .call(move |symbols| allocations::answer(&inputs, top, symbols, taken_at).by_inuse)
            .unwrap_or_default()
    }

    fn allocation_trace(
        &self,
        path: &str,
        top: usize,
        window: Duration,
        budget_cpus: f64,
    ) -> (Vec<AllocationEntry>, String) {
        // One trace per cgroup while its results are in memory: the event's later runs read it.
        if let Some(id) = self.traces.latest_for(path) {
            let status = self.traces.status(id);
            return match (self.traces.results(id), status) {
                (Ok(TraceResults::Finished(mut answer)), Ok(status)) => {
                    answer.by_inuse.truncate(top);
                    let end = match status.end {
                        Some(TraceEnd::OverBudget) => format!(
                            "stopped itself past its budget of {:.2} CPUs after {:.1} s: stacks \
                             from what it saw",
                            status.budget_cpus, status.elapsed_seconds
                        ),
                        _ => format!("{:.0} s", status.elapsed_seconds),
                    };
                    (
                        answer.by_inuse,
                        format!(
                            "allocation stacks from allocator trace {id} of the cgroup's \
                             largest processes ({end}, {} samples, {:.2} us per allocating \
                             call while traced)",
                            status.samples, status.alloc_call_cost_us
                        ),
                    )
                }
                _ => (
                    Vec::new(),
                    format!(
                        "allocator trace {id} of the cgroup's largest processes is running; its \
                         stacks join this evidence at the detector's next run"
                    ),
                ),
            };
        }
        let dir = self.memory_root.join(path.trim_start_matches('/'));
        let pids: Vec<u32> = memlens_procfs::process::top_by_memory(&dir, PROFILED_PROCESSES)
            .iter()
            .map(|p| p.pid)
            .collect();
        let spec = TraceSpec {
            pids,
            seconds: window.as_secs_f64(),
            sample_bytes: crate::api::DEFAULT_SAMPLE_BYTES,
            budget_cpus,
            stack_copy_bytes: self.stack_copy_bytes,
            label: Some(path.to_string()),
        };
        match self.traces.start(spec) {
            Ok(status) => (
                Vec::new(),
                format!(
                    "allocator trace {} of the cgroup's largest processes started for {:.0} s \
                     (stops itself past {:.2} CPUs; {:.2} us per allocating call while traced); \
                     its stacks join this evidence at the detector's next run",
                    status.id, status.seconds, status.budget_cpus, status.alloc_call_cost_us
                ),
            ),
            Err(e) => (Vec::new(), format!("no allocator trace: {e}")),
        }
    }

    fn top_files(&self, memcg: MemcgId, top: usize) -> Vec<CachedFile> {
        self.view
            .files
            .by_memcg
            .get(&memcg)
            .map(|f| f.top.iter().take(top).cloned().collect())
            .unwrap_or_default()
    }

    fn top_processes(&self, path: &str, top: usize) -> Vec<ProcessMemory> {
        let dir = self.memory_root.join(path.trim_start_matches('/'));
        memlens_procfs::process::top_by_memory(&dir, top)
    }

    fn pod(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        self.pods.lookup(pod_uid, container_id)
    }
}

impl Engine {
    /// Runs the due detectors and records what they found.
    fn run(&mut self, due: Due) -> Result<CheckReport, StoreError> {
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
        let view = self.views.latest();
        let reader = Reader::open(&self.db)?;
        let open_restarts: HashSet<String> = reader
            .events(
                Some(Status::Open),
                Some(EventKind::AbnormalRestarts),
                MAX_OPEN,
            )?
            .into_iter()
            .map(|e| e.subject)
            .collect();
        let sources = EngineSources {
            reader: &reader,
            views: &self.views,
            leaks: &self.leaks,
            view: &view,
            memory_root: &self.memory_root,
            go_heap: &self.go_heap,
            traces: &self.traces,
            stack_copy_bytes: self.stack_copy_bytes,
            pods: &self.pods,
        };
        let cx = Context {
            now_ms,
            rows: &view.snapshot.cgroups,
            config: &self.config,
            host: &self.host,
            mem_total: memlens_procfs::system::mem_total().unwrap_or(u64::MAX),
            sources: &sources,
        };
        let run = memlens_engine::check(&cx, due, &open_restarts);
        report.detectors = run.detectors.iter().map(ToString::to_string).collect();
        for held in &run.held_back {
            tracing::debug!("no {} for {}: {}", held.kind, held.subject, held.reason);
        }
        report.held_back = run.held_back;
        let applied = self.store.apply(
            &run.kinds,
            &run.findings,
            now_ms,
            self.config.events.silence,
            self.config.events.max_events,
        )?;
        let load = |ids: &[u64]| -> Result<Vec<Event>, StoreError> {
            ids.iter()
                .filter_map(|id| reader.event(*id).transpose())
                .collect()
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
            tracing::warn!("event {} {}: {}", e.id, e.kind(), e.summary);
        }
        for e in &report.recovered {
            tracing::info!(
                "event {} {} recovered after {:.0} s",
                e.id,
                e.kind(),
                e.duration_seconds
            );
        }
        Ok(report)
    }
}

/// Starts the engine's thread: detectors on their schedules, and on request.
pub fn spawn(
    mut engine: Engine,
    requests: mpsc::Receiver<CheckRequest>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let _ended = EndOnDrop(Arc::clone(&engine.heartbeat));
            let started = Instant::now();
            let mut next_growth = started + engine.config.leak.interval;
            let mut next_restarts = started + engine.config.restarts.interval;
            while !stop.load(Ordering::Relaxed) {
                engine.heartbeat.beat();
                match requests.recv_timeout(IDLE) {
                    Ok(request) => {
                        let report = engine.run(Due {
                            growth: true,
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
                    growth: now >= next_growth,
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
