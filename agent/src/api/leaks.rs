//! `/v1/leaks` and its pprof and flame graph forms.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use memlens_attribution::query::{self, QueryError};
use memlens_exporters as exporters;
use memlens_types::leaks::{LeakEntry, LeaksQuery, LeaksResponse};

use super::{
    server::{accept_query, error},
    AppState,
};

type Failure = (StatusCode, String);

fn run(
    state: &AppState,
    q: &LeaksQuery,
    export: bool,
) -> Result<(LeaksResponse, Vec<LeakEntry>), Failure> {
    query::run(&state.views, &state.leaks, q, export).map_err(|e| {
        let code = match e {
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Gone(_) => StatusCode::GONE,
            QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, e.to_string())
    })
}

/// Runs `answer` off the async threads (queries symbolize) and turns its outcome into a response.
async fn answer(
    query: Result<Query<LeaksQuery>, QueryRejection>,
    answer: impl FnOnce(LeaksQuery) -> Result<Response, Failure> + Send + 'static,
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

pub async fn leaks(
    State(state): State<AppState>,
    query: Result<Query<LeaksQuery>, QueryRejection>,
) -> Response {
    answer(query, move |q| {
        Ok(Json(run(&state, &q, false)?.0).into_response())
    })
    .await
}

pub async fn pprof(
    State(state): State<AppState>,
    query: Result<Query<LeaksQuery>, QueryRejection>,
) -> Response {
    answer(query, move |q| {
        let (response, entries) = run(&state, &q, true)?;
        let window_ns = (response.window_seconds * 1e9) as i64;
        let bytes = exporters::pprof::encode(&entries, response.taken_at_unix_ms, window_ns)
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding the profile: {e}"),
                )
            })?;
        Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
    })
    .await
}

pub async fn flamegraph(
    State(state): State<AppState>,
    query: Result<Query<LeaksQuery>, QueryRejection>,
) -> Response {
    answer(query, move |q| {
        let (_, entries) = run(&state, &q, true)?;
        let svg =
            exporters::flamegraph::svg(&entries, "memlens: held memory by stack").map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("drawing the flame graph: {e}"),
                )
            })?;
        Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
    })
    .await
}
