//! `/v1/allocations`: which code holds memory according to the processes' own allocation
//! profiles (the Go runtime's heap profile, read from the process's memory), for one process or
//! the processes of a cgroup or pod, or according to an allocator trace's samples.

use std::path::Path;

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use memlens_attribution::allocations;
use memlens_exporters as exporters;
use memlens_types::{
    allocations::{AllocationsQuery, AllocationsResponse},
    selector::CgroupSelector,
    Workload,
};

use super::{
    server::{blocking, pprof_answer, svg_answer, top_asked, Failure},
    AppState,
};
use crate::traces::TraceResults;

const DEFAULT_TOP: usize = 10;
const MAX_TOP: usize = 1000;
/// Most processes read for one query (each profile read walks the process's bucket list).
const MAX_PROCESSES: usize = 64;

/// The processes a pid, cgroup or pod names (the `MAX_PROCESSES` largest by resident memory),
/// and how many more it names.
pub(super) fn processes(
    state: &AppState,
    pid: Option<u32>,
    cgroup: Option<&CgroupSelector>,
    pod: Option<&String>,
) -> Result<(Vec<u32>, usize), Failure> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let missing = |m: String| (StatusCode::NOT_FOUND, m);
    let view = state.views.latest();
    let paths: Vec<String> = match (pid, cgroup, pod) {
        (Some(pid), None, None) => {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(missing(format!("no process {pid} on this host")));
            }
            return Ok((vec![pid], 0));
        }
        (None, Some(wanted), None) => {
            let rows = view.select(wanted);
            if rows.is_empty() {
                // A cgroup made since the last refresh: its processes are read from the
                // cgroup file system anyway, so a path that exists there is enough.
                match state.unlisted_cgroup(&view, wanted) {
                    Some(path) => vec![path],
                    None => return Err(missing(state.no_cgroup(&view, wanted))),
                }
            } else {
                rows.iter().map(|r| r.path.clone()).collect()
            }
        }
        (None, None, Some(uid)) => {
            let paths: Vec<String> = view
                .snapshot
                .cgroups
                .iter()
                .filter(|r| matches!(&r.workload, Workload::Pod { pod_uid, container_id: None, .. } if pod_uid.starts_with(uid.as_str())))
                .map(|r| r.path.clone())
                .collect();
            if paths.is_empty() {
                return Err(missing(format!("no pod with UID {uid:?} on this node")));
            }
            paths
        }
        _ => return Err(bad("ask for exactly one of pid, cgroup or pod".to_string())),
    };
    let mut pids: Vec<u32> = paths
        .iter()
        .flat_map(|p| {
            memlens_procfs::process::pids_in(&state.memory_root.join(p.trim_start_matches('/')))
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let left_out = pids.len().saturating_sub(MAX_PROCESSES);
    Ok((
        memlens_procfs::process::largest(pids, MAX_PROCESSES),
        left_out,
    ))
}

/// Answers `query` off the async threads and turns the answer into a response with `render`;
/// an export's `top` defaults to every stack.
async fn respond(
    state: AppState,
    query: Result<Query<AllocationsQuery>, QueryRejection>,
    export: bool,
    render: impl FnOnce(AllocationsResponse) -> Result<Response, Failure> + Send + 'static,
) -> Response {
    blocking(query, move |query| {
        let default = if export { MAX_TOP } else { DEFAULT_TOP };
        let top =
            top_asked(query.top, default, MAX_TOP).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
        let (inputs, left_out) = match query.trace {
            Some(id) => {
                if query.pid.is_some() || query.cgroup.is_some() || query.pod.is_some() {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "a trace's results are asked by trace alone".to_string(),
                    ));
                }
                match state
                    .traces
                    .results(id)
                    .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?
                {
                    TraceResults::Finished(mut answer) => {
                        answer.by_inuse.truncate(top);
                        return render(answer);
                    }
                    TraceResults::Running(inputs) => (inputs, 0),
                }
            }
            None => {
                let (pids, left_out) =
                    processes(&state, query.pid, query.cgroup.as_ref(), query.pod.as_ref())?;
                let inputs = crate::profiles::read(&state.go_heap, &pids)
                    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e))?;
                (inputs, left_out)
            }
        };
        let taken_at = memlens_types::unix_ms();
        let mut response = state
            .leaks
            .symbols
            .call(move |symbols| allocations::answer(&inputs, top, symbols, taken_at))
            .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
        response.processes_left_out = left_out;
        render(response)
    })
    .await
}

pub async fn allocations(
    State(state): State<AppState>,
    query: Result<Query<AllocationsQuery>, QueryRejection>,
) -> Response {
    respond(state, query, false, |r| Ok(Json(r).into_response())).await
}

pub async fn pprof(
    State(state): State<AppState>,
    query: Result<Query<AllocationsQuery>, QueryRejection>,
) -> Response {
    respond(state, query, true, |r| {
        pprof_answer(exporters::pprof::encode_allocations(
            &r.by_inuse,
            r.taken_at_unix_ms,
        ))
    })
    .await
}

pub async fn flamegraph(
    State(state): State<AppState>,
    query: Result<Query<AllocationsQuery>, QueryRejection>,
) -> Response {
    respond(state, query, true, |r| {
        svg_answer(exporters::flamegraph::allocations_svg(
            &r.by_inuse,
            "memlens: bytes in use by allocating stack",
        ))
    })
    .await
}
