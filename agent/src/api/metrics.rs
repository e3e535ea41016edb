//! `GET /metrics`: the Prometheus exposition of the latest snapshot, built off the async threads
//! (it symbolizes the largest stacks, from the cache when it can).

use std::sync::{atomic::Ordering, Arc};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};

use memlens_attribution::{query, View};
pub use memlens_exporters::prometheus::ApiLatency;
use memlens_exporters::prometheus::{
    classic_text, AgentFigures, CgroupLabels, Exposition, RouteLabels,
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

fn exposition(state: &AppState, view: &View) -> Result<String, String> {
    let sources = &state.metrics;
    let pods = &sources.pods;
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
    e.encode()
        .map_err(|err| format!("encoding the metrics: {err}"))
}

/// OpenMetrics to scrapers that ask for it (Prometheus does), the classic text format otherwise.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let view = state.views.latest();
    match tokio::task::spawn_blocking(move || exposition(&state, &view)).await {
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
            classic_text(&text),
        )
            .into_response(),
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics failed: {err}"),
        ),
    }
}
