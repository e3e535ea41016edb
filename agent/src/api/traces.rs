//! `/v1/traces`: allocator traces of one process or the processes of a cgroup or pod, started,
//! watched and stopped; their results are read through `/v1/allocations?trace=ID`.

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use memlens_types::allocations::{TraceRequest, TraceStatus};

use super::{
    allocations::processes,
    server::{blocking, error, Failure},
    AppState,
};
use crate::traces::{TraceError, TraceSpec};

/// Window of a trace when the request names none, in seconds.
const DEFAULT_SECONDS: f64 = 30.0;
/// Mean bytes between samples by default: 1 in 64 KiB keeps a 40 MiB leak's estimate within
/// a few percent (its relative error is about sqrt(rate / bytes)) at a cost per sample that
/// is small beside the traps every call pays anyway.
pub(crate) const DEFAULT_SAMPLE_BYTES: u64 = 65_536;
/// Cost, in CPUs, past which a trace stops itself by default.
const DEFAULT_BUDGET_CPUS: f64 = 0.5;
/// Most processes one trace probes.
const MAX_TRACED: usize = 16;

fn failure(e: TraceError) -> Failure {
    let code = match e {
        TraceError::Busy(..) => StatusCode::CONFLICT,
        TraceError::BadRequest(_) | TraceError::NothingToTrace(_) => StatusCode::BAD_REQUEST,
        TraceError::NotFound(_) => StatusCode::NOT_FOUND,
        TraceError::Kernel(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, e.to_string())
}

pub async fn start(
    State(state): State<AppState>,
    query: Result<Query<TraceRequest>, QueryRejection>,
) -> Response {
    blocking(query, move |request| {
        let (mut pids, _) = processes(
            &state,
            request.pid,
            request.cgroup.as_ref(),
            request.pod.as_ref(),
        )?;
        pids.truncate(MAX_TRACED);
        let spec = TraceSpec {
            pids,
            seconds: request.seconds.unwrap_or(DEFAULT_SECONDS),
            sample_bytes: request.sample_bytes.unwrap_or(DEFAULT_SAMPLE_BYTES),
            budget_cpus: request.budget_cpus.unwrap_or(DEFAULT_BUDGET_CPUS),
            stack_copy_bytes: state.stack_copy_bytes,
            label: None,
        };
        let status = state.traces.start(spec).map_err(failure)?;
        Ok((StatusCode::CREATED, Json(status)).into_response())
    })
    .await
}

/// The trace id of a path, and `answer` for it; a 400 for an id that is not a number.
fn with_id(id: &str, answer: impl FnOnce(u64) -> Result<TraceStatus, TraceError>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("bad trace id {id:?}: ids are numbers"),
        );
    };
    match answer(id) {
        Ok(status) => Json(status).into_response(),
        Err(e) => {
            let (code, message) = failure(e);
            error(code, message)
        }
    }
}

pub async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    with_id(&id, |id| state.traces.status(id))
}

pub async fn stop(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    with_id(&id, |id| state.traces.stop(id))
}
