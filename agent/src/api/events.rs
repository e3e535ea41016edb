//! `/v1/events` (list, one, check now) and `/v1/lifecycle`: read from the history database per
//! request, off the async threads.

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

use memlens_store::Reader;
use memlens_types::{
    event::{EventsQuery, EventsResponse},
    lifecycle::{LifecycleEntry, LifecycleQuery, LifecycleResponse, MAX_RECORDS},
    unix_ms, Workload,
};

use super::{
    server::{accept_query, error, DEFAULT_SINCE},
    AppState,
};
use crate::workers::engine::CheckRequest;

/// Runs `read` on a blocking thread against a fresh reader of the database.
async fn read<T: Send + 'static>(
    state: &AppState,
    read: impl FnOnce(&Reader) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let db = state.db.clone();
    match tokio::task::spawn_blocking(move || {
        Reader::open(&db)
            .map_err(|e| e.to_string())
            .and_then(|r| read(&r))
    })
    .await
    {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, message)),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("query failed: {e}"),
        )),
    }
}

/// The limit asked for (default 100, at most [`MAX_RECORDS`]), or what is wrong with it.
fn limit(asked: Option<usize>) -> Result<usize, String> {
    match asked.unwrap_or(100) {
        0 => Err("limit must be at least 1".into()),
        n => Ok(n.min(MAX_RECORDS)),
    }
}

pub async fn lifecycle(
    State(state): State<AppState>,
    query: Result<Query<LifecycleQuery>, QueryRejection>,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let since = query.since.unwrap_or(DEFAULT_SINCE);
    let limit = match limit(query.limit) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let from = unix_ms().saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    let cgroup = match &query.cgroup {
        None => None,
        Some(selector) => match state.views.latest().path_of(selector) {
            Some(path) => Some(path),
            None => {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no memory cgroup matches {:?}", selector.to_string()),
                )
            }
        },
    };
    match read(&state, move |r| {
        r.lifecycle(cgroup.as_deref(), from, limit)
            .map_err(|e| e.to_string())
    })
    .await
    {
        Ok(records) => Json(LifecycleResponse {
            records: records
                .into_iter()
                .map(|record| LifecycleEntry {
                    workload: record.cgroup_path.as_deref().map(Workload::from_path),
                    record,
                })
                .collect(),
        })
        .into_response(),
        Err(response) => response,
    }
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let (status, kind) = (query.status, query.kind);
    let limit = match limit(query.limit) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match read(&state, move |r| {
        r.events(status, kind, limit).map_err(|e| e.to_string())
    })
    .await
    {
        Ok(events) => Json(EventsResponse { events }).into_response(),
        Err(response) => response,
    }
}

pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad event id {id:?}: ids are numbers (see memlens events list)"),
        );
    };
    match read(&state, move |r| r.event(id).map_err(|e| e.to_string())).await {
        Ok(Some(event)) => Json(event).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no event {id}")),
        Err(response) => response,
    }
}

pub async fn check(State(state): State<AppState>) -> Response {
    let (reply, answer) = tokio::sync::oneshot::channel();
    if state.checks.send(CheckRequest { reply }).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event engine is not running".into(),
        );
    }
    match answer.await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(message)) => error(StatusCode::INTERNAL_SERVER_ERROR, message),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the event engine stopped before answering".into(),
        ),
    }
}
