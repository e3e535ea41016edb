//! `memlens agent`: loads the probes, starts the workers, serves the API.
//!
//! Data flows one way, and the crates make it so: kernel maps and files (`memlens-kernel`) ->
//! plain data (`memlens-model`) -> attribution (`memlens-attribution`) and the event engine
//! (`memlens-engine`) -> this binary's API, CLI and exporters.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, RwLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use memlens_attribution::{
    file_names::FileResolver, growth::GrowthHistory, query::LeakSources,
    symbol_service::SymbolService, Attribution, Views,
};
use memlens_cgroup::CgroupLayout;
use memlens_engine::Config;
use memlens_kernel::{
    collectors::{
        census::PageCensus,
        lifecycle::{Lifecycle, LifecycleStats},
        page_cache::PageCacheCollector,
        stack_gc::StackGc,
    },
    physmem::PageState,
    LoadError, LoadOptions, Probes,
};
use memlens_model::python::PythonFrames;
use memlens_pods::{LogDirs, PodDirectory};
use memlens_runtimes::{
    go_heap::GoHeapReader,
    python::{Interpreters, PythonStats},
};
use memlens_store::Store;
use memlens_symbolize::tables::SharedModuleFiles;
use memlens_unwind::{table::UnwoundTable, ProcessEnds, UnwindStats, Unwinder};

use crate::{
    api::{
        self,
        metrics::{ApiLatency, MetricsSources},
        server::InstanceLock,
        AppState,
    },
    health::{EndOnDrop, Health},
    settings::AgentArgs,
    status::StatusSource,
    workers::{
        engine::{self, CheckRequest, Engine, EngineStats},
        heap,
        lifecycle::{self, Drain},
        pacing::{self, Pacing},
        refresh::Refresher,
        unwind::{self, Unwinding},
    },
};

/// Growth history: every census for this long...
const HISTORY_FINE_SPAN: Duration = Duration::from_secs(600);
/// ...and one a minute for this long.
const HISTORY_COARSE_SPAN: Duration = Duration::from_secs(6 * 3600);
/// Most stacks kept per history snapshot.
const HISTORY_MAX_STACKS: usize = 5000;
/// How long the lifecycle drain and the engine's loop may go without a round (they beat every
/// 100 ms and 200 ms when well; a long engine run, with evidence symbolized, stays well within).
const LIFECYCLE_BOUND: Duration = Duration::from_secs(60);
const ENGINE_BOUND: Duration = Duration::from_secs(600);
/// The unwinder beats at least every 100 ms; reading a large binary's tables takes longer.
const UNWIND_BOUND: Duration = Duration::from_secs(60);

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(socket: PathBuf, args: &AgentArgs, config: Config) -> Result<()> {
    check_retention(args, &config)?;
    heap::limit_arenas();
    // Before anything touches /run or /var/lib: without root the answer is "run as root".
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LoadError::NotRoot.into());
    }
    // Claim the socket before touching the kernel: a second agent fails here, cleanly.
    let _lock = InstanceLock::acquire(&socket)?;
    let mut store = Store::open(&args.db, args.retention)?;
    tracing::info!("history in {}", args.db.display());
    let layout = CgroupLayout::detect()?;
    tracing::info!("cgroups: {layout}");
    match layout.memory_cgroup_of("self") {
        Ok(own) => tracing::info!("the agent itself is in memory cgroup {own}"),
        Err(e) => tracing::warn!("cannot tell the agent's own memory cgroup: {e}"),
    }
    let load = LoadOptions {
        sample_shift: args.sample_shift,
        max_sample_entries: args.max_sample_entries,
        stack_entries: args.stack_entries,
        kernel_stack_reuse_ns: u64::try_from(args.kernel_stack_reuse.as_nanos())
            .unwrap_or(u64::MAX),
        btf: args.btf.clone(),
        file_entries: args.file_entries,
        lifecycle_buffer: args.lifecycle_buffer,
        stack_copy_bytes: args.stack_copy,
        stack_copy_buffer: args.stack_copy_buffer,
        pin_dir: args.pin_dir.0.clone(),
        sample_seed: args.sample_seed,
        filemap_probe: args.filemap_probe.into(),
    };
    let mut probes = Probes::load(&load)?;
    let resumed = probes.report.pinning.as_ref().is_ok_and(|p| p.resumed);
    let census = match PageState::open() {
        Ok(state) => Ok(PageCensus::new(
            state,
            probes.report.sample_shift,
            probes.report.sample_seed,
            usize::try_from(args.census_frames).unwrap_or(usize::MAX),
        )),
        Err(e) => {
            let why = format!(
                "cannot open /proc/kpagecgroup and /proc/kpageflags ({e}); held-page estimates \
                 need a kernel with CONFIG_PROC_PAGE_MONITOR=y"
            );
            tracing::warn!("{why}");
            Err(why)
        }
    };
    let lifecycle_ring = probes.lifecycle.take();
    let unwind_stats = Arc::new(UnwindStats::default());
    let process_ends = lifecycle_ring
        .is_some()
        .then(|| Arc::new(ProcessEnds::default()));
    let mut restored_stacks = 0;
    // Binaries' unwind tables, read once for the unwinder and the leaf rules.
    let tables = SharedModuleFiles::default();
    // The Python frames saved stacks name come back before the stacks.
    let python_frames = Arc::new(PythonFrames::default());
    match store.load_python_frames() {
        Ok(saved) => python_frames.restore(saved),
        Err(e) => tracing::warn!("saved Python frames not restored: {e}"),
    }
    let python_stats = Arc::new(PythonStats::default());
    let mut interpreters = Interpreters::new(
        Arc::clone(&python_frames),
        Box::new(probes.python.clone()),
        Arc::clone(&python_stats),
    );
    // Processes a previous agent named that are gone: their pids may be taken again.
    interpreters.forget_unmet(|tgid| std::path::Path::new(&format!("/proc/{tgid}")).exists());
    // Shared by the unwinder and the allocator traces' unwinders.
    let interpreters = Arc::new(Mutex::new(interpreters));
    let unwinding = probes.stack_copies.take().map(|ring| {
        let mut table = UnwoundTable::new(probes.report.sample_entries);
        restored_stacks = resume_stacks(&mut store, resumed, &mut table);
        Arc::new(Mutex::new(Unwinding::new(
            ring,
            Unwinder::new(
                Arc::clone(&unwind_stats),
                process_ends.clone(),
                Arc::clone(&tables),
            )
            .with_python(Arc::clone(&interpreters)),
            table,
        )))
    });
    // The unwinder drains the stack copies from here on: the ring filled while no agent read it
    // (a restart), and the first refresh below takes a while on a busy node.
    let mut health = Health::default();
    let stop = Arc::new(AtomicBool::new(false));
    let unwind_worker = match &unwinding {
        Some(unwinding) => Some(
            unwind::spawn(
                Arc::clone(unwinding),
                health.worker("unwind", UNWIND_BOUND),
                Arc::clone(&stop),
            )
            .context("cannot start the unwinder thread")?,
        ),
        None => None,
    };
    let lifecycle_stats = Arc::new(LifecycleStats::default());
    let engine_stats = Arc::new(EngineStats::default());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Pod and container names: the Kubernetes API when in a cluster, else the kubelet's logs.
    let pods = PodDirectory::start(
        LogDirs {
            pods: args.kubelet_logs.join("pods"),
            containers: args.kubelet_logs.join("containers"),
        },
        pods_runtime(&runtime),
    );
    let max_stacks = usize::try_from(args.max_stacks).unwrap_or(usize::MAX);
    let leaks = LeakSources {
        history: Arc::new(RwLock::new(GrowthHistory::new(
            HISTORY_FINE_SPAN,
            HISTORY_COARSE_SPAN,
            max_stacks.min(HISTORY_MAX_STACKS),
        ))),
        symbols: SymbolService::start(heap::release_free_memory, Arc::clone(&python_frames))
            .context("cannot start the symbolizer thread")?,
    };
    let traces = Arc::new(
        crate::traces::Traces::new(
            &args.db,
            args.retention,
            leaks.symbols.clone(),
            (probes.python.clone(), Arc::clone(&interpreters)),
        )
        .context("cannot read the recorded allocator traces")?,
    );
    let mut pacing = Pacing::new(args.refresh, args.cpu_budget);
    let status = StatusSource {
        report: probes.report.clone(),
        counters: Arc::clone(&probes.counters),
        layout: layout.clone(),
        census_unavailable: census.as_ref().err().cloned(),
        lifecycle: Arc::clone(&lifecycle_stats),
        engine: Arc::clone(&engine_stats),
        unwind: unwinding.is_some().then(|| Arc::clone(&unwind_stats)),
        python: (Arc::clone(&python_stats), Arc::clone(&python_frames)),
        schedule: config.schedule(),
        pods: pods.clone(),
        leaks: leaks.clone(),
        traces: Arc::clone(&traces),
        started_at_unix_ms: memlens_types::unix_ms(),
        restored_stacks,
        refresh: (args.refresh, args.cpu_budget, Arc::clone(&pacing.cycle_ms)),
    };
    // A census of a large host at a fine rate can take a while: the bound leaves room for it.
    let refresh_bound = args
        .refresh
        .saturating_mul(5)
        .max(pacing::MAX_CYCLE.saturating_mul(2));
    let refresh_beat = health.worker("refresh", refresh_bound);
    let memory_hierarchy = memlens_cgroup::memory_hierarchy_id(layout.version);
    let memory_root = layout.memory_root.clone();
    let go_heap = Arc::new(Mutex::new(GoHeapReader::default()));
    let pinned = probes.report.pinning.clone();
    let probes_pinned = pinned.is_ok();
    let mut refresher = Refresher {
        mounts: layout.mount_points().into(),
        layout,
        probes,
        census: census.ok(),
        attribution: Attribution::new(max_stacks, tables),
        unwinding: unwinding.clone(),
        leaks: leaks.clone(),
        store,
        history_interval: args.history_interval,
        max_cgroups: args.max_cgroups,
        page_size: memlens_procfs::system::page_size(),
        stack_gc: StackGc::default(),
        last_gc: None,
        stacks_in_use: 0,
        file_cache: PageCacheCollector::default(),
        file_names: FileResolver::default(),
        last_recorded: None,
        save_unwound: probes_pinned,
        last_save: None,
        python_frames: Arc::clone(&python_frames),
    };
    let views = Arc::new(Views::new(refresher.view()));
    let published = Arc::clone(&views);
    let lifecycle_worker = match lifecycle_ring {
        Some(ring) => Some(lifecycle::spawn(
            Drain {
                ring,
                lifecycle: Lifecycle::new(memory_hierarchy),
                views: Arc::clone(&views),
                leaks: leaks.clone(),
                stats: Arc::clone(&lifecycle_stats),
                heartbeat: health.worker("lifecycle", LIFECYCLE_BOUND),
                ends: unwinding.as_ref().and(process_ends),
            },
            &args.db,
            args.retention,
            Arc::clone(&stop),
        )?),
        None => None,
    };
    let (check_tx, check_rx) = mpsc::channel::<CheckRequest>();
    let engine = Engine {
        host: config.host.clone().unwrap_or_else(|| "localhost".into()),
        config,
        db: args.db.clone(),
        store: Store::open(&args.db, args.retention)?,
        views: Arc::clone(&views),
        leaks: leaks.clone(),
        memory_root: memory_root.clone(),
        go_heap: Arc::clone(&go_heap),
        traces: Arc::clone(&traces),
        stack_copy_bytes: args.stack_copy,
        stats: Arc::clone(&engine_stats),
        pods: pods.clone(),
        heartbeat: health.worker("engine", ENGINE_BOUND),
    };
    let engine_worker = engine::spawn(engine, check_rx, Arc::clone(&stop))
        .context("cannot start the event engine")?;
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let args_refresh = args.refresh;
    let worker = thread::Builder::new()
        .name("refresh".into())
        .spawn(move || {
            let _ended = EndOnDrop(Arc::clone(&refresh_beat));
            let mut wait = args_refresh;
            while heap::wait_trimming(&stop_rx, wait) {
                wait = pacing.refresh(|| {
                    published.publish(refresher.view());
                    heap::release_free_memory();
                });
                refresh_beat.beat();
            }
            refresher.finish();
        })
        .context("cannot start the refresh thread")?;

    let state = AppState {
        views,
        db: args.db.clone(),
        status: Arc::new(status),
        leaks,
        checks: check_tx,
        metrics: MetricsSources {
            latency: ApiLatency::default(),
            lifecycle: lifecycle_stats,
            engine: engine_stats,
            stack_entries: u64::from(args.stack_entries),
            file_entries: u64::from(args.file_entries),
            pods,
            snapshot_part: Arc::default(),
        },
        health,
        memory_root,
        go_heap,
        traces: Arc::clone(&traces),
        stack_copy_bytes: args.stack_copy,
    };
    let served = runtime.block_on(api::serve(&socket, args.metrics_addr, state));
    let stopping = Instant::now();
    tracing::info!("stopping");
    traces.stop_all();
    // The refresh thread's last drain and save come after every other thread stopped: stack
    // copies keep arriving until the next agent reads them, and the ring holds seconds of them.
    stop.store(true, Ordering::Relaxed);
    for worker in [lifecycle_worker, unwind_worker, Some(engine_worker)]
        .into_iter()
        .flatten()
    {
        let _ = worker.join();
    }
    let _ = stop_tx.send(());
    let _ = worker.join();
    if let Ok(pins) = &pinned {
        tracing::info!(
            "the kernel programs stay attached, their records kept in {} for the next agent \
             (`memlens unload` detaches them)",
            pins.dir.display()
        );
    }
    tracing::info!("stopped in {} ms", stopping.elapsed().as_millis());
    served
}

/// Puts back the user stacks the previous agent unwound when its kernel records were kept
/// (`resumed`), else forgets them; returns how many records got their stack back.
fn resume_stacks(store: &mut Store, resumed: bool, table: &mut UnwoundTable) -> usize {
    if !resumed {
        if let Err(e) = store.clear_unwound() {
            tracing::warn!("saved user stacks not cleared: {e}");
        }
        return 0;
    }
    match store.load_unwound() {
        Ok(saved) => {
            let n = saved.len();
            for (slot, stack) in saved {
                table.restore(slot, stack);
            }
            tracing::info!("{n} user stacks of the kept records restored");
            n
        }
        Err(e) => {
            tracing::warn!("user stacks of the kept records not restored: {e}");
            0
        }
    }
}

/// The retention must cover the detectors' windows.
fn check_retention(args: &AgentArgs, config: &Config) -> Result<()> {
    let needed = config
        .leak
        .lookback
        .max(config.restarts.window.saturating_mul(2));
    if needed > args.retention {
        anyhow::bail!(
            "--retention {} is shorter than the detectors need ({}: leak.lookback, or twice \
             restarts.window); raise --retention or shorten the windows",
            humantime::format_duration(args.retention),
            humantime::format_duration(needed)
        );
    }
    Ok(())
}

/// The runtime the Kubernetes API watch runs on (none without the `kube` feature).
#[cfg(feature = "kube")]
fn pods_runtime(runtime: &tokio::runtime::Runtime) -> Option<memlens_pods::Runtime> {
    Some(runtime.handle().clone())
}

#[cfg(not(feature = "kube"))]
fn pods_runtime(_runtime: &tokio::runtime::Runtime) -> Option<memlens_pods::Runtime> {
    None
}
