//! `memlens agent`: loads the probes, refreshes the model on a timer, serves the API.
//!
//! Data flows one way: kernel maps and files -> collectors -> model (a [`Snapshot`]) -> API.

use std::{
    path::PathBuf,
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::sync::watch;

use crate::{
    api::server::{self, AppState, InstanceLock},
    cgroup::{self, CgroupLayout},
    collectors::{pages::PageCensus, stacks::StackGc},
    loader::{LoadOptions, Probes},
    model::{self, Snapshot},
    physmem::PageState,
    status::StatusSource,
    units::PageSize,
};

/// Settings of the agent (from flags).
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub socket: PathBuf,
    pub load: LoadOptions,
    pub refresh: Duration,
    pub max_cgroups: usize,
}

pub fn run(settings: &AgentSettings) -> Result<()> {
    // Claim the socket before touching the kernel: a second agent fails here, cleanly.
    let _lock = InstanceLock::acquire(&settings.socket)?;
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
    let status = StatusSource::new(
        probes.report.clone(),
        Arc::clone(&probes.counters),
        layout.clone(),
        census.as_ref().err().cloned(),
    );

    let mut refresher = Refresher {
        layout,
        probes,
        stack_gc: StackGc::default(),
        last_gc: None,
        stacks_in_use: 0,
        census: census.ok(),
        max_cgroups: settings.max_cgroups,
        page_size: PageSize::system(),
    };
    let (tx, rx) = watch::channel(Arc::new(refresher.snapshot()));
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let interval = settings.refresh;
    let worker = thread::Builder::new()
        .name("refresh".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(interval) {
                let _ = tx.send(Arc::new(refresher.snapshot()));
            }
        })
        .context("cannot start the refresh thread")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(settings, rx, status));
    let _ = stop_tx.send(());
    let _ = worker.join();
    tracing::info!("stopped");
    served
}

async fn serve(
    settings: &AgentSettings,
    rx: watch::Receiver<Arc<Snapshot>>,
    status: StatusSource,
) -> Result<()> {
    let listener = server::bind(&settings.socket)?;
    tracing::info!("API on {}", settings.socket.display());
    let state = AppState {
        snapshot: rx,
        status: Arc::new(move |snapshot| status.report(snapshot)),
    };
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

/// Owns everything one refresh reads.
struct Refresher {
    layout: CgroupLayout,
    probes: Probes,
    stack_gc: StackGc,
    last_gc: Option<Instant>,
    stacks_in_use: usize,
    census: Option<PageCensus>,
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
                self.stacks_in_use = self
                    .stack_gc
                    .collect(&mut self.probes.stacks, &census.referenced_stacks);
                self.last_gc = Some(Instant::now());
            }
        }
        let discovery = cgroup::discover(&self.layout, self.max_cgroups).unwrap_or_else(|e| {
            tracing::warn!("cannot list cgroups: {e}");
            cgroup::Discovery::default()
        });
        let mut snapshot = model::build(&self.layout, &discovery, census.as_ref(), self.page_size);
        snapshot.sample_shift = self.probes.report.sample_shift;
        snapshot.counters = self.probes.counters.totals();
        snapshot.stacks_in_use = self.stacks_in_use;
        snapshot.stacks_collected = self.stack_gc.collected;
        snapshot
    }
}
