//! The API server: axum on a Unix socket (mode 0600), one instance per socket.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use memlens_store::Reader;
use memlens_types::{
    api::{self, Endpoint, ErrorBody},
    cgroups::{CgroupRow, TopQuery, TopResponse, MAX_TOP_ROWS},
    history::{HistoryQuery, HistoryResponse, MAX_HISTORY_POINTS},
    status::StatusResponse,
};

use super::{allocations, cache, events, leaks, traces, AppState};
use crate::health::Health;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another memlens agent is already running{pid} (it holds {lock}); stop it first, or give this one another --socket")]
    AlreadyRunning { pid: String, lock: PathBuf },
    #[error("cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Exclusive claim on a socket path: an flock'ed `<socket>.lock` holding our pid.
pub struct InstanceLock {
    _file: File,
}

impl InstanceLock {
    pub fn acquire(socket: &Path) -> Result<InstanceLock, ServerError> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let lock = PathBuf::from(format!("{}.lock", socket.display()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io_err(&lock))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            let pid = if pid.is_empty() {
                String::new()
            } else {
                format!(" (pid {pid})")
            };
            return Err(ServerError::AlreadyRunning { pid, lock });
        }
        file.set_len(0).map_err(io_err(&lock))?;
        file.rewind().map_err(io_err(&lock))?;
        write!(file, "{}", std::process::id()).map_err(io_err(&lock))?;
        Ok(InstanceLock { _file: file })
    }
}

/// Binds the socket (replacing a stale one: the lock proves no agent uses it) with mode 0600.
pub fn bind(socket: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(socket)(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(io_err(socket))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(socket))?;
    listener.set_nonblocking(true).map_err(io_err(socket))?;
    tokio::net::UnixListener::from_std(listener).map_err(io_err(socket))
}

/// The metrics listener's routes (TCP): the exposition and the health check, nothing else (the
/// full API stays on the root-only Unix socket).
pub fn metrics_router(state: AppState) -> Router {
    finish(
        Router::new(),
        state,
        "this listener serves /metrics and /healthz; the API is on the Unix socket".into(),
    )
}

/// The API's routes (Unix socket).
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route(api::Status::ROUTE, get(status))
        .route(api::Top::ROUTE, get(top))
        .route(api::Cache::ROUTE, get(cache::cache))
        .route(api::History::ROUTE, get(history))
        .route(api::Leaks::ROUTE, get(leaks::leaks))
        .route(api::LeaksPprof::ROUTE, get(leaks::pprof))
        .route(api::LeaksFlamegraph::ROUTE, get(leaks::flamegraph))
        .route(api::Allocations::ROUTE, get(allocations::allocations))
        .route(api::AllocationsPprof::ROUTE, get(allocations::pprof))
        .route(
            api::AllocationsFlamegraph::ROUTE,
            get(allocations::flamegraph),
        )
        .route(api::Traces::ROUTE, post(traces::start))
        .route(api::TraceById::ROUTE, get(traces::show))
        .route(api::TraceStop::ROUTE, post(traces::stop))
        .route(api::Lifecycle::ROUTE, get(events::lifecycle))
        .route(api::Events::ROUTE, get(events::list))
        .route(api::EventsCheck::ROUTE, post(events::check))
        .route(api::EventById::ROUTE, get(events::show));
    let not_found = format!("no such endpoint; see {}", api::ROUTES.join(", "));
    finish(routes, state, not_found)
}

/// Adds what every listener serves (`/healthz`, `/metrics`), times every request by route, and
/// answers anything else with `not_found`.
fn finish(routes: Router<AppState>, state: AppState, not_found: String) -> Router {
    let latency = state.metrics.latency.clone();
    routes
        .route("/healthz", get(healthz))
        .route("/metrics", get(super::metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            latency,
            super::metrics::time_requests,
        ))
        .fallback(move || {
            let message = not_found.clone();
            async move { error(StatusCode::NOT_FOUND, message) }
        })
        .with_state(state)
}

/// Default window of `/v1/history` and `/v1/lifecycle`.
pub(super) const DEFAULT_SINCE: std::time::Duration = std::time::Duration::from_secs(3600);

/// The query, or what is wrong with it (for a 400 answer).
pub(super) fn accept_query<Q>(query: Result<Query<Q>, QueryRejection>) -> Result<Q, String> {
    query
        .map(|Query(q)| q)
        .map_err(|e| format!("bad query: {}", e.body_text()))
}

/// An answer that could not be given: its status and message.
pub(super) type Failure = (StatusCode, String);

/// Accepts `query` and runs `answer` with it off the async threads (queries that read process
/// memory or symbolize take a while), turning its outcome into a response.
pub(super) async fn blocking<Q: Send + 'static>(
    query: Result<Query<Q>, QueryRejection>,
    answer: impl FnOnce(Q) -> Result<Response, Failure> + Send + 'static,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match tokio::task::spawn_blocking(move || answer(query)).await {
        Ok(Ok(response)) => response,
        Ok(Err((code, message))) => error(code, message),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        ),
    }
}

/// A gzip'd pprof profile as an answer, or why it could not be encoded.
pub(super) fn pprof_answer(encoded: std::io::Result<Vec<u8>>) -> Result<Response, Failure> {
    let bytes = encoded.map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the profile: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// An SVG flame graph as an answer, or why it could not be drawn.
pub(super) fn svg_answer(drawn: Result<Vec<u8>, String>) -> Result<Response, Failure> {
    let svg = drawn.map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("drawing the flame graph: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// The `top` a query asks for (`default` when it does not), or why it is outside 1..=`max`.
pub(super) fn top_asked(asked: Option<usize>, default: usize, max: usize) -> Result<usize, String> {
    match asked.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("top must be between 1 and {max}")),
    }
}

pub(super) fn error(code: StatusCode, message: String) -> Response {
    (code, Json(ErrorBody { error: message })).into_response()
}

/// `ok`, or 503 with what is wrong: a worker stopped, or silent for longer than its bound.
async fn healthz(State(state): State<AppState>) -> Response {
    health_answer(&state.health, state.leaks.symbols.is_finished())
}

/// `ok`, or what is wrong; the symbolizer thread has no rounds to beat, so only its end counts.
fn health_answer(health: &Health, symbolizer_ended: bool) -> Response {
    let mut problems = health.check().err().unwrap_or_default();
    if symbolizer_ended {
        problems.push("the symbolizer worker has stopped".into());
    }
    if problems.is_empty() {
        return "ok\n".into_response();
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("unhealthy: {}\n", problems.join("; ")),
    )
        .into_response()
}

async fn status(State(state): State<AppState>) -> Json<StatusResponse> {
    let view = state.views.latest();
    Json(state.status.report(&view))
}

async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let since = query.since.unwrap_or(DEFAULT_SINCE);
    let view = state.views.latest();
    // Cgroups that exist now, or else the path as given (history outlives cgroups).
    let Some(path) = view.path_of(&query.cgroup) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no memory cgroup matches {:?}", query.cgroup.to_string()),
        );
    };
    let limit = query.limit.unwrap_or(1000).min(MAX_HISTORY_POINTS);
    let from = view
        .snapshot
        .taken_at_unix_ms
        .saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let db = state.db.clone();
    let read = tokio::task::spawn_blocking(move || {
        Reader::open(&db)
            .and_then(|r| r.series(&path, from, limit))
            .map(|s| (path, s))
    })
    .await;
    match read {
        Ok(Ok((path, samples))) if !samples.is_empty() => {
            Json(HistoryResponse { path, samples }).into_response()
        }
        Ok(Ok((path, _))) => error(StatusCode::NOT_FOUND, format!("no history for {path:?}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        ),
    }
}

async fn top(
    State(state): State<AppState>,
    query: Result<Query<TopQuery>, QueryRejection>,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let view = state.views.latest();
    let snapshot = &view.snapshot;
    let limit = query.limit.unwrap_or(MAX_TOP_ROWS).min(MAX_TOP_ROWS);
    let matching: Vec<_> = match &query.cgroup {
        None => snapshot.cgroups.iter().collect(),
        Some(wanted) => {
            let chosen = view.select(wanted);
            if chosen.is_empty() {
                return error(StatusCode::NOT_FOUND, state.no_cgroup(&view, wanted));
            }
            chosen
        }
    };
    let truncated = matching.len().saturating_sub(limit);
    Json(TopResponse {
        taken_at_unix_ms: snapshot.taken_at_unix_ms,
        sample_shift: snapshot.sample_shift,
        page_size: snapshot.page_size,
        cgroups: matching
            .into_iter()
            .take(limit)
            .map(|row| CgroupRow {
                pod: state.pod_of(&row.workload),
                ..row.clone()
            })
            .collect(),
        truncated,
        census: snapshot.census.clone(),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn healthz_fails_when_a_worker_stops() {
        let mut health = Health::default();
        let refresh = health.worker("refresh", Duration::from_secs(60));
        assert_eq!(health_answer(&health, false).status(), StatusCode::OK);
        assert_eq!(
            health_answer(&health, true).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        refresh.end();
        let answer = health_answer(&health, false);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
