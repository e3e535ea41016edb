//! `memlens agent`: loads the probes, refreshes the model on a timer, serves the API.
//!
//! Data flows one way: kernel maps and files -> collectors -> model (a [`Snapshot`]) -> API.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, RwLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    api::{
        metrics::MetricsSources,
        server::{self, AppState, InstanceLock, LeakSources},
    },
    attribution::{files, history::History, query, Attribution},
    cgroup::CgroupVersion,
    cgroup::{
        self,
        kube::{LogDirs, PodDirectory},
        CgroupLayout,
    },
    collectors::{
        filecache::FileCacheCollector,
        files::FileResolver,
        lifecycle::{self, memory_hierarchy_id, Lifecycle, LifecycleStats},
        pages::PageCensus,
        stacks::StackGc,
    },
    config::Config,
    engine::{self, CheckRequest, Engine, EngineStats},
    exporters::prometheus::ApiLatency,
    history::Store,
    loader::{LoadError, LoadOptions, Probes},
    model::{self, Snapshot, Snapshots},
    physmem::PageState,
    status::StatusSource,
    symbolize::service::SymbolService,
    units::PageSize,
};

/// Settings of the agent (from flags).
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub socket: PathBuf,
    pub load: LoadOptions,
    pub refresh: Duration,
    pub max_cgroups: usize,
    /// Cap on distinct stacks per census.
    pub max_stacks: u64,
    pub db: PathBuf,
    pub history_interval: Duration,
    pub retention: Duration,
    /// The event engine's settings.
    pub config: Config,
    /// Where to serve `/metrics` and `/healthz` over TCP (off when None).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub fn run(settings: &AgentSettings) -> Result<()> {
    // Before anything touches /run or /var/lib: without root the answer is "run as root".
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot.into());
    }
    // Claim the socket before touching the kernel: a second agent fails here, cleanly.
    let _lock = InstanceLock::acquire(&settings.socket)?;
    let store = Store::open(&settings.db, settings.retention)?;
    tracing::info!("history in {}", settings.db.display());
    let layout = CgroupLayout::detect()?;
    tracing::info!("cgroups: {layout}");
    match layout.memory_cgroup_of("self") {
        Ok(own) => tracing::info!("the agent itself is in memory cgroup {own}"),
        Err(e) => tracing::warn!("cannot tell the agent's own memory cgroup: {e}"),
    }
    let probes = Probes::load(&settings.load)?;
    let census = match PageState::open() {
        Ok(state) => Ok(PageCensus::new(state, probes.report.sample_shift)),
        Err(e) => {
            let why = format!(
                "cannot open /proc/kpagecgroup and /proc/kpageflags ({e}); held-page estimates \
                 need a kernel with CONFIG_PROC_PAGE_MONITOR=y"
            );
            tracing::warn!("{why}");
            Err(why)
        }
    };
    let mut probes = probes;
    let lifecycle_ring = probes.lifecycle.take();
    let lifecycle_stats = Arc::new(LifecycleStats::default());
    let engine_stats = Arc::new(EngineStats::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Pod and container names: the Kubernetes API when in a cluster, else the kubelet's logs.
    let pods = PodDirectory::start(LogDirs::default(), Some(runtime.handle().clone()));
    let status = StatusSource::new(
        probes.report.clone(),
        Arc::clone(&probes.counters),
        layout.clone(),
        census.as_ref().err().cloned(),
        Arc::clone(&lifecycle_stats),
        (Arc::clone(&engine_stats), schedule(&settings.config)),
        pods.clone(),
    );
    let memory_hierarchy = memory_hierarchy_id(layout.version == CgroupVersion::V2);
    let memory_root = layout.memory_root.clone();

    let max_stacks = usize::try_from(settings.max_stacks).unwrap_or(usize::MAX);
    let leaks = LeakSources {
        history: Arc::new(RwLock::new(History::new(
            HISTORY_FINE_SPAN,
            HISTORY_COARSE_SPAN,
            max_stacks.min(HISTORY_MAX_STACKS),
        ))),
        symbols: SymbolService::start().context("cannot start the symbolizer thread")?,
    };
    let mut refresher = Refresher {
        layout,
        probes,
        stack_gc: StackGc::default(),
        last_gc: None,
        stacks_in_use: 0,
        history_snapshots: (0, 0),
        census: census.ok(),
        attribution: Attribution::new(max_stacks),
        leaks: leaks.clone(),
        file_cache: FileCacheCollector::default(),
        file_names: FileResolver::default(),
        store,
        history_interval: settings.history_interval,
        last_recorded: None,
        max_cgroups: settings.max_cgroups,
        page_size: PageSize::system(),
    };
    let snapshots = Arc::new(Snapshots::new(refresher.snapshot()));
    let published = Arc::clone(&snapshots);
    let stop_lifecycle = Arc::new(AtomicBool::new(false));
    let lifecycle_worker = match lifecycle_ring {
        Some(ring) => Some(lifecycle::spawn(
            ring,
            death_evidence(Arc::clone(&snapshots), leaks.clone()),
            &settings.db,
            settings.retention,
            Arc::clone(&snapshots),
            Lifecycle::new(memory_hierarchy),
            Arc::clone(&lifecycle_stats),
            Arc::clone(&stop_lifecycle),
        )?),
        None => None,
    };
    let (check_tx, check_rx) = mpsc::channel::<CheckRequest>();
    let engine = Engine {
        config: settings.config.clone(),
        host: settings
            .config
            .host
            .clone()
            .unwrap_or_else(|| "localhost".into()),
        db: settings.db.clone(),
        store: Store::open(&settings.db, settings.retention)?,
        snapshots: Arc::clone(&snapshots),
        leaks: leaks.clone(),
        memory_root,
        stats: Arc::clone(&engine_stats),
        pods: pods.clone(),
    };
    let engine_worker = engine::spawn(engine, check_rx, Arc::clone(&stop_lifecycle))
        .context("cannot start the event engine")?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = settings.refresh;
    let worker = thread::Builder::new()
        .name("refresh".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                published.publish(refresher.snapshot());
            }
        })
        .context("cannot start the refresh thread")?;

    let metrics = MetricsSources {
        latency: ApiLatency::default(),
        lifecycle: Arc::clone(&lifecycle_stats),
        engine: Arc::clone(&engine_stats),
        stack_entries: u64::from(settings.load.stack_entries),
        file_entries: u64::from(settings.load.file_entries),
        pods,
    };
    let served = runtime.block_on(serve(settings, snapshots, status, leaks, check_tx, metrics));
    let _ = stop_tx.send(());
    let _ = worker.join();
    stop_lifecycle.store(true, Ordering::Relaxed);
    if let Some(worker) = lifecycle_worker {
        let _ = worker.join();
    }
    let _ = engine_worker.join();
    tracing::info!("stopped");
    served
}

/// What the engine runs when, for `memlens status`.
fn schedule(config: &Config) -> String {
    let every = |d: Duration| humantime::format_duration(d).to_string();
    let leak = if config.leak.enabled || config.file_cache.enabled {
        format!(
            "leak detector every {} (lookback {}, horizon {}, threshold {:.0}% of the limit)",
            every(config.leak.interval),
            every(config.leak.lookback),
            every(config.leak.horizon),
            config.leak.threshold * 100.0
        )
    } else {
        "leak detector off".into()
    };
    let restarts = if config.restarts.enabled {
        format!(
            "restart detector every {} (window {})",
            every(config.restarts.interval),
            every(config.restarts.window)
        )
    } else {
        "restart detector off".into()
    };
    format!("{leak}, {restarts}")
}

/// The cgroup's memory just before a record (top stacks and files), from the kept censuses.
fn death_evidence(snapshots: Arc<Snapshots>, leaks: LeakSources) -> lifecycle::EvidenceFn {
    Box::new(move |record| {
        let path = record.cgroup_path.as_deref()?;
        let memory = query::memory_at(&snapshots, &leaks, path, record.ts_ms, EVIDENCE_TOP)?;
        serde_json::to_value(memory).ok()
    })
}

/// Stacks and files kept as evidence of a process' end.
const EVIDENCE_TOP: usize = 5;

async fn serve(
    settings: &AgentSettings,
    snapshots: Arc<Snapshots>,
    status: StatusSource,
    leaks: LeakSources,
    checks: mpsc::Sender<CheckRequest>,
    metrics: MetricsSources,
) -> Result<()> {
    let listener = server::bind(&settings.socket)?;
    tracing::info!("API on {}", settings.socket.display());
    let state = AppState {
        snapshots,
        db: settings.db.clone(),
        status: Arc::new(move |snapshot| status.report(snapshot)),
        leaks,
        checks,
        metrics,
    };
    if let Some(addr) = settings.metrics_addr {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        let router = server::metrics_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, router).await {
                tracing::warn!("metrics listener failed: {e}");
            }
        });
    }
    axum::serve(listener, server::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("API server failed")?;
    let _ = std::fs::remove_file(&settings.socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping");
}

/// Stack collection runs at most this often; a kernel stack reused from the per-CPU memo is at
/// most `cli::MAX_KERNEL_STACK_REUSE` old, far less than two collections apart.
const STACK_GC_INTERVAL: Duration = Duration::from_secs(10);

/// Growth history: every census for this long...
const HISTORY_FINE_SPAN: Duration = Duration::from_secs(600);
/// ...and one a minute for this long.
const HISTORY_COARSE_SPAN: Duration = Duration::from_secs(6 * 3600);
/// Most stacks kept per history snapshot.
const HISTORY_MAX_STACKS: usize = 5000;
/// Files kept per cgroup in the file-cache view.
const TOP_FILES: usize = 50;
/// New stacks of live processes symbolized in the background per refresh.
const PREFETCH_PER_REFRESH: usize = 256;

/// Owns everything one refresh reads.
struct Refresher {
    layout: CgroupLayout,
    probes: Probes,
    stack_gc: StackGc,
    last_gc: Option<Instant>,
    stacks_in_use: usize,
    history_snapshots: (usize, usize),
    census: Option<PageCensus>,
    attribution: Attribution,
    leaks: LeakSources,
    file_cache: FileCacheCollector,
    file_names: FileResolver,
    store: Store,
    history_interval: Duration,
    last_recorded: Option<Instant>,
    max_cgroups: usize,
    page_size: PageSize,
}

impl Refresher {
    fn snapshot(&mut self) -> Snapshot {
        let census = self
            .census
            .as_ref()
            .map(|c| c.take(&self.probes.page_allocs));
        if let Some(census) = &census {
            if self
                .last_gc
                .is_none_or(|t| t.elapsed() >= STACK_GC_INTERVAL)
            {
                let (in_use, deleted) = self
                    .stack_gc
                    .collect(&mut self.probes.stacks, &census.referenced_stacks);
                self.stacks_in_use = in_use;
                self.attribution.forget_stack_ids(&deleted);
                self.last_gc = Some(Instant::now());
            }
        }
        let leaks = census.as_ref().map(|census| {
            let view = self
                .attribution
                .update(census, &self.probes.stacks, model::unix_ms());
            if let Ok(mut history) = self.leaks.history.write() {
                history.record(&view.table);
                self.history_snapshots = history.len();
            }
            let view = Arc::new(view);
            let background = Arc::clone(&view);
            // Symbolize new stacks while their processes live; skipped when the symbolizer is busy.
            self.leaks.symbols.spawn(move |symbols| {
                symbols.forget_gone(&background);
                symbols.prefetch(&background, PREFETCH_PER_REFRESH);
            });
            view
        });
        let discovery = cgroup::discover(&self.layout, self.max_cgroups).unwrap_or_else(|e| {
            tracing::warn!("cannot list cgroups: {e}");
            cgroup::Discovery::default()
        });
        let mut snapshot = model::build(&self.layout, &discovery, census.as_ref(), self.page_size);
        snapshot.sample_shift = self.probes.report.sample_shift;
        snapshot.counters = self.probes.counters.totals();
        snapshot.stacks_in_use = self.stacks_in_use;
        snapshot.stacks_collected = self.stack_gc.collected;
        snapshot.leaks = leaks.unwrap_or_default();
        if let Some(map) = self.probes.file_pages.as_mut() {
            let cache = self.file_cache.collect(map);
            let view = files::build(
                &cache,
                &discovery,
                &mut self.file_names,
                self.page_size,
                TOP_FILES,
            );
            snapshot.attach_files(view);
        }
        snapshot.history_snapshots = self.history_snapshots;
        if self
            .last_recorded
            .is_none_or(|t| t.elapsed() >= self.history_interval)
        {
            self.last_recorded = Some(Instant::now());
            if let Err(e) = self.store.record(&snapshot) {
                tracing::warn!("history not recorded: {e}");
            }
        }
        snapshot
    }
}
