//! The API server: axum on a Unix socket (mode 0600), one instance per socket.

use std::{
    fs::File,
    io::{Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};

use super::{
    cache, events, leaks, ErrorBody, HistoryQuery, HistoryResponse, StatusResponse, TopQuery,
    TopResponse, MAX_HISTORY_POINTS, MAX_TOP_ROWS,
};
pub use crate::attribution::query::LeakSources;
use crate::{
    history::Reader,
    model::{Snapshot, Snapshots},
};

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

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub snapshots: Arc<Snapshots>,
    /// The history database, read per query.
    pub db: PathBuf,
    pub status: Arc<dyn Fn(&Snapshot) -> StatusResponse + Send + Sync>,
    pub leaks: LeakSources,
    /// On-demand runs of the event engine.
    pub checks: std::sync::mpsc::Sender<crate::engine::CheckRequest>,
    pub metrics: super::metrics::MetricsSources,
}

/// The metrics listener's routes (TCP): the exposition and the health check, nothing else (the
/// full API stays on the root-only Unix socket).
pub fn metrics_router(state: AppState) -> Router {
    finish(
        Router::new(),
        state,
        "this listener serves /metrics and /healthz; the API is on the Unix socket",
    )
}

/// The API's routes (Unix socket).
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/top", get(top))
        .route("/v1/cache", get(cache::cache))
        .route("/v1/history", get(history))
        .route("/v1/leaks", get(leaks::leaks))
        .route("/v1/leaks/pprof", get(leaks::pprof))
        .route("/v1/leaks/flamegraph", get(leaks::flamegraph))
        .route("/v1/lifecycle", get(events::lifecycle))
        .route("/v1/events", get(events::list))
        .route("/v1/events/check", post(events::check))
        .route("/v1/events/{id}", get(events::show));
    finish(
        routes,
        state,
        "no such endpoint; see /v1/status, /v1/top, /v1/leaks, /v1/cache, /v1/history, \
         /v1/lifecycle, /v1/events, /metrics",
    )
}

/// Adds what every listener serves (`/healthz`, `/metrics`), times every request by route, and
/// answers anything else with `not_found`.
fn finish(routes: Router<AppState>, state: AppState, not_found: &'static str) -> Router {
    let latency = state.metrics.latency.clone();
    routes
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(super::metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            latency,
            super::metrics::time_requests,
        ))
        .fallback(move || async move { error(StatusCode::NOT_FOUND, not_found.into()) })
        .with_state(state)
}

/// The query, or what is wrong with it (for a 400 answer).
pub(super) fn accept_query<Q>(query: Result<Query<Q>, QueryRejection>) -> Result<Q, String> {
    query
        .map(|Query(q)| q)
        .map_err(|e| format!("bad query: {}", e.body_text()))
}

pub(super) fn error(code: StatusCode, message: String) -> Response {
    (code, Json(ErrorBody { error: message })).into_response()
}

async fn status(State(state): State<AppState>) -> Json<StatusResponse> {
    let snapshot = state.snapshots.latest();
    Json((state.status)(&snapshot))
}

async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let since = match humantime::parse_duration(query.since.as_deref().unwrap_or("1h")) {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad since: {e}")),
    };
    let snapshot = state.snapshots.latest();
    let wanted = &query.cgroup;
    // Cgroups that exist now, or else the path as given (history outlives cgroups).
    let path = snapshot
        .cgroups
        .iter()
        .find(|r| {
            r.id.0.to_string() == *wanted
                || r.path == *wanted
                || r.path
                    .ends_with(&format!("/{}", wanted.trim_start_matches('/')))
        })
        .map_or_else(|| wanted.clone(), |r| r.path.clone());
    let limit = query.limit.unwrap_or(1000).min(MAX_HISTORY_POINTS);
    let from = snapshot
        .taken_at_unix_ms
        .saturating_sub(since.as_millis() as u64);
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
    let snapshot = state.snapshots.latest();
    let limit = query.limit.unwrap_or(MAX_TOP_ROWS).min(MAX_TOP_ROWS);
    let matching: Vec<_> = snapshot
        .cgroups
        .iter()
        .filter(|row| match &query.cgroup {
            None => true,
            Some(wanted) => {
                row.id.0.to_string() == *wanted
                    || row.path == *wanted
                    || row
                        .path
                        .ends_with(&format!("/{}", wanted.trim_start_matches('/')))
            }
        })
        .collect();
    if let (Some(wanted), true) = (&query.cgroup, matching.is_empty()) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no memory cgroup matches {wanted:?}"),
        );
    }
    let truncated = matching.len().saturating_sub(limit);
    Json(TopResponse {
        taken_at_unix_ms: snapshot.taken_at_unix_ms,
        sample_shift: snapshot.sample_shift,
        page_size: snapshot.page_size,
        cgroups: matching.into_iter().take(limit).cloned().collect(),
        truncated,
        census: snapshot.census.clone(),
    })
    .into_response()
}
