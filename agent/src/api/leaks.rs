//! `/v1/leaks` and its pprof and flame graph forms.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

use memlens_attribution::query::{self, QueryError};
use memlens_exporters as exporters;
use memlens_types::{
    leaks::{LeakEntry, LeaksQuery, LeaksResponse},
    Workload,
};

use super::{
    server::{blocking, pprof_answer, svg_answer, Failure},
    AppState,
};

fn run(
    state: &AppState,
    q: &LeaksQuery,
    export: bool,
) -> Result<(LeaksResponse, Vec<LeakEntry>), Failure> {
    let named = |(mut response, mut exported): (LeaksResponse, Vec<LeakEntry>)| {
        for e in response
            .by_growth
            .iter_mut()
            .chain(&mut response.by_held)
            .chain(&mut exported)
        {
            e.pod = state.pod_of(&Workload::from_path(&e.cgroup));
        }
        (response, exported)
    };
    query::run(&state.views, &state.leaks, q, export)
        .map(named)
        .map_err(|e| {
            if let (QueryError::BadRequest(_), Some(wanted)) = (&e, &q.cgroup) {
                let view = state.views.latest();
                if view.select(wanted).is_empty() {
                    return (StatusCode::NOT_FOUND, state.no_cgroup(&view, wanted));
                }
            }
            let code = match e {
                QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
                QueryError::Gone(_) => StatusCode::GONE,
                QueryError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, e.to_string())
        })
}

pub async fn leaks(
    State(state): State<AppState>,
    query: Result<Query<LeaksQuery>, QueryRejection>,
) -> Response {
    blocking(query, move |q| {
        Ok(Json(run(&state, &q, false)?.0).into_response())
    })
    .await
}

pub async fn pprof(
    State(state): State<AppState>,
    query: Result<Query<LeaksQuery>, QueryRejection>,
) -> Response {
    blocking(query, move |q| {
        let (response, entries) = run(&state, &q, true)?;
        let window_ns = (response.window_seconds * 1e9) as i64;
        pprof_answer(exporters::pprof::encode(
            &entries,
            response.taken_at_unix_ms,
            window_ns,
        ))
    })
    .await
}

pub async fn flamegraph(
    State(state): State<AppState>,
    query: Result<Query<LeaksQuery>, QueryRejection>,
) -> Response {
    blocking(query, move |q| {
        let (_, entries) = run(&state, &q, true)?;
        svg_answer(exporters::flamegraph::svg(
            &entries,
            "memlens: held memory by stack",
        ))
    })
    .await
}
