//! `GET /metrics`: the Prometheus exposition of the latest snapshot, built off the async threads
//! (it symbolizes the largest stacks, from the cache when it can).
//!
//! The snapshot's series (every cgroup's, their files' and stacks') are encoded once per snapshot
//! and kept for the scrapes until the next one: scrapes come every 15 s or so, a busy node's
//! snapshots up to a minute apart, and those series were nearly all of a scrape's time (71 ms at
//! the median with 1,000 cgroups). While the TCP listener is open they are encoded as each
//! snapshot comes, not at the first scrape after it. Open events, lifecycle counts and the
//! agent's own figures change between snapshots and are encoded at each scrape.

use std::{
    sync::{atomic::Ordering, Arc, Mutex, Weak},
    time::Duration,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use memlens_attribution::{query, View};
pub use memlens_exporters::prometheus::ApiLatency;
use memlens_exporters::prometheus::{
    join, AgentFigures, CgroupLabels, Exposition, Part, RouteLabels,
};
use memlens_kernel::collectors::lifecycle::LifecycleStats;
use memlens_pods::PodDirectory;
use memlens_store::Reader;
use memlens_types::{files::CachedFile, Workload};

use super::{server::error, AppState};
use crate::workers::engine::EngineStats;

/// Files per cgroup in `memlens_file_cache_bytes`.
const TOP_FILES: usize = 5;
/// Stacks per cgroup, and cgroups, in `memlens_stack_held_bytes`.
const TOP_STACKS: usize = 3;
const STACK_CGROUPS: usize = 50;

/// What the exposition reads besides the snapshot.
#[derive(Clone)]
pub struct MetricsSources {
    pub latency: ApiLatency,
    pub lifecycle: Arc<LifecycleStats>,
    pub engine: Arc<EngineStats>,
    pub stack_entries: u64,
    pub file_entries: u64,
    pub pods: PodDirectory,
    /// The latest snapshot's series, encoded.
    pub snapshot_part: Arc<Mutex<Option<SnapshotPart>>>,
}

/// A snapshot's series and the view they were encoded from (a weak reference: the views are
/// kept by `Views`, and while this one is held no other view can take its address).
pub struct SnapshotPart {
    view: Weak<View>,
    part: Arc<Part>,
}

/// Times every request by route (bounded: the router's own patterns, or "unmatched").
pub async fn time_requests(
    State(latency): State<ApiLatency>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    latency
        .0
        .get_or_create(&RouteLabels {
            route: route.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

fn labels(pods: &PodDirectory, path: &str, workload: &Workload) -> CgroupLabels {
    let mut l = CgroupLabels {
        id: path.into(),
        ..CgroupLabels::default()
    };
    if let Workload::Pod {
        pod_uid,
        container_id,
        ..
    } = workload
    {
        if let Some(pod) = pods.lookup(pod_uid, container_id.as_deref()) {
            l.namespace = pod.namespace.into();
            l.pod = pod.pod.into();
            l.container = pod.container.unwrap_or_default().into();
        }
    }
    l
}

/// How often the newest snapshot is looked for, to encode its series before a scrape asks.
const PREBUILD_EVERY: Duration = Duration::from_secs(1);

/// Encodes each new snapshot's series as it comes (within `PREBUILD_EVERY`), so that scrapes
/// find them ready: the first scrape after a refresh otherwise waited for the encoding (50-110 ms
/// on the busy-node bench, every other scrape 5-10 ms). Run while a scraper's listener is open.
pub async fn prebuild(state: AppState) {
    let mut tick = tokio::time::interval(PREBUILD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let view = state.views.latest();
        let state = state.clone();
        match tokio::task::spawn_blocking(move || snapshot_part(&state, &view)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("metrics: {e}"),
            Err(e) => tracing::warn!("metrics: encoding the snapshot's series failed: {e}"),
        }
    }
}

/// The series of `view`'s snapshot, encoded once per view (the lock is held while encoding, so
/// a scrape and the prebuild never encode the same snapshot twice).
fn snapshot_part(state: &AppState, view: &Arc<View>) -> Result<Arc<Part>, String> {
    let Ok(mut kept) = state.metrics.snapshot_part.lock() else {
        return encode_snapshot(state, view).map(Arc::new);
    };
    if let Some(kept) = kept
        .as_ref()
        .filter(|k| Weak::ptr_eq(&k.view, &Arc::downgrade(view)))
    {
        return Ok(Arc::clone(&kept.part));
    }
    let part = Arc::new(encode_snapshot(state, view)?);
    *kept = Some(SnapshotPart {
        view: Arc::downgrade(view),
        part: Arc::clone(&part),
    });
    Ok(part)
}

fn encode_snapshot(state: &AppState, view: &View) -> Result<Part, String> {
    let pods = &state.metrics.pods;
    let snapshot = &view.snapshot;
    let mut e = Exposition::new();
    e.cgroups(&snapshot.cgroups, &|row| {
        labels(pods, &row.path, &row.workload)
    });
    let files: Vec<(&str, &CachedFile)> = snapshot
        .cgroups
        .iter()
        .filter_map(|r| Some((r.path.as_str(), view.files.by_memcg.get(&r.id)?)))
        .flat_map(|(path, f)| f.top.iter().take(TOP_FILES).map(move |file| (path, file)))
        .collect();
    e.files(&files);
    e.stacks(&query::top_stacks(
        view,
        &state.leaks,
        TOP_STACKS,
        STACK_CGROUPS,
    ));
    e.encode_part()
        .map_err(|err| format!("encoding the metrics: {err}"))
}

fn exposition(state: &AppState, view: &Arc<View>, openmetrics: bool) -> Result<String, String> {
    let snapshot_part = snapshot_part(state, view)?;
    let sources = &state.metrics;
    let pods = &sources.pods;
    let snapshot = &view.snapshot;
    let mut e = Exposition::new();
    match Reader::open(&state.db).and_then(|r| r.open_events()) {
        Ok(open) => e.events(&open),
        Err(err) => tracing::warn!("metrics: open events not counted: {err}"),
    }
    let counts = sources
        .lifecycle
        .per_cgroup
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    e.lifecycle(&counts, &|path| {
        labels(pods, path, &Workload::from_path(path))
    });
    let symbols = state.leaks.symbols.stats();
    let (symbolized, hits) = (
        symbols.symbolized.load(Ordering::Relaxed),
        symbols.hits.load(Ordering::Relaxed),
    );
    e.agent(
        &AgentFigures {
            kernel: snapshot.counters.clone(),
            census_frames: snapshot.census.as_ref().map_or(0, |c| c.frames),
            census_seconds: snapshot
                .census
                .as_ref()
                .map_or(0.0, |c| c.duration_ms as f64 / 1000.0),
            stacks_in_use: snapshot.stacks_in_use as u64,
            stack_entries: sources.stack_entries,
            file_pairs: view.files.entries as u64,
            file_entries: sources.file_entries,
            lifecycle_records: sources.lifecycle.recorded.load(Ordering::Relaxed),
            lifecycle_capped: sources.lifecycle.capped.load(Ordering::Relaxed),
            engine_runs: sources.engine.runs.load(Ordering::Relaxed),
            engine_failures: sources.engine.failures.load(Ordering::Relaxed),
            symbolized,
            symbol_cache_hits: hits,
            skipped_cgroups: snapshot.skipped_cgroups as u64,
            vanished_cgroups: snapshot.vanished_cgroups as u64,
        },
        &sources.latency,
    );
    let live = e
        .encode_part()
        .map_err(|err| format!("encoding the metrics: {err}"))?;
    Ok(join(&[&snapshot_part, &live], openmetrics))
}

/// OpenMetrics to scrapers that ask for it (Prometheus does), the classic text format otherwise.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let view = state.views.latest();
    match tokio::task::spawn_blocking(move || exposition(&state, &view, openmetrics)).await {
        Ok(Ok(text)) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics failed: {err}"),
        ),
    }
}
