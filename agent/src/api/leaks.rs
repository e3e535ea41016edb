//! `/v1/leaks` and its pprof and flame graph forms.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};

use super::{
    server::{accept_query, error, AppState},
    LeaksQuery, LeaksResponse,
};
use crate::{
    attribution::{
        history::History,
        report::{self, LeakEntry, LeakFilter},
    },
    cgroup::Workload,
    exporters,
    model::Snapshot,
    symbolize::service::SymbolService,
    units::MemcgId,
};

/// Longest growth window a query may ask for.
const MAX_SINCE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_SINCE: Duration = Duration::from_secs(600);
const MAX_TOP: usize = 1000;
/// Most stacks in a pprof profile or flame graph (the largest).
const MAX_EXPORT: usize = 5000;
/// Candidates symbolized per shown entry, for merging stacks equal once symbolized.
const MERGE_HEADROOM: usize = 4;

/// What leak queries read besides the snapshot.
#[derive(Clone)]
pub struct LeakSources {
    pub history: Arc<RwLock<History>>,
    pub symbols: SymbolService,
}

/// A parsed, validated query.
struct Parsed {
    filter: LeakFilter,
    since: Duration,
    top: usize,
}

fn parse(snapshot: &Snapshot, query: &LeaksQuery) -> Result<Parsed, String> {
    let since = match &query.since {
        None => DEFAULT_SINCE,
        Some(text) => {
            let d =
                humantime::parse_duration(text).map_err(|e| format!("bad since {text:?}: {e}"))?;
            if d > MAX_SINCE {
                return Err(format!("since {text:?} is longer than 24h"));
            }
            d
        }
    };
    let top = query.top.unwrap_or(10);
    if top == 0 || top > MAX_TOP {
        return Err(format!("top must be between 1 and {MAX_TOP}"));
    }
    let mut memcgs: Option<HashSet<MemcgId>> = None;
    if let Some(wanted) = &query.cgroup {
        let roots: Vec<&str> = snapshot
            .cgroups
            .iter()
            .filter(|r| {
                r.id.0.to_string() == *wanted
                    || r.path == *wanted
                    || r.path
                        .ends_with(&format!("/{}", wanted.trim_start_matches('/')))
            })
            .map(|r| r.path.as_str())
            .collect();
        if roots.is_empty() {
            return Err(format!("no memory cgroup matches {wanted:?}"));
        }
        memcgs = Some(
            snapshot
                .cgroups
                .iter()
                .filter(|r| {
                    roots.iter().any(|root| {
                        r.path == *root
                            || r.path
                                .starts_with(&format!("{}/", root.trim_end_matches('/')))
                    })
                })
                .map(|r| r.id)
                .collect(),
        );
    }
    if let Some(uid) = &query.pod {
        let pods: HashSet<MemcgId> = snapshot
            .cgroups
            .iter()
            .filter(|r| matches!(&r.workload, Workload::Pod { pod_uid, .. } if pod_uid.starts_with(uid.as_str())))
            .map(|r| r.id)
            .collect();
        if pods.is_empty() {
            return Err(format!("no pod with UID {uid:?} on this node"));
        }
        memcgs = Some(match memcgs {
            Some(m) => m.intersection(&pods).copied().collect(),
            None => pods,
        });
    }
    Ok(Parsed {
        filter: LeakFilter {
            memcgs,
            pid: query.pid,
        },
        since,
        top,
    })
}

/// Runs a query: matching stacks, sorted, symbolized. `limit` None = every stack (exports).
fn run(
    state: &AppState,
    query: &LeaksQuery,
    export: bool,
) -> Result<(LeaksResponse, Vec<LeakEntry>), (StatusCode, String)> {
    let snapshot = match query.at {
        None => state.snapshots.latest(),
        Some(at) => state.snapshots.at(at).ok_or((
            StatusCode::GONE,
            format!("the census taken at {at} is no longer kept; ask again without `at`"),
        ))?,
    };
    let parsed = parse(&snapshot, query).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    let view = Arc::clone(&snapshot.leaks);
    let matched = {
        let history = state.leaks.history.read().map_err(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "history lock poisoned".to_string(),
            )
        })?;
        report::matching(&view, &history, &parsed.filter, parsed.since)
    };
    let cgroups: HashMap<MemcgId, String> = snapshot
        .cgroups
        .iter()
        .map(|r| (r.id, r.path.clone()))
        .collect();
    let mut by_held = matched.rows.clone();
    by_held.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut by_growth = matched.rows.clone();
    by_growth.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.0.cmp(&b.0)));
    let page_size = snapshot.page_size;
    let window = matched.window;
    // Stacks that differ only in addresses within the same lines (a loop's instructions) merge
    // once symbolized, so lists are drawn from more candidates than they show.
    let candidates = parsed.top.saturating_mul(MERGE_HEADROOM);
    let lists = if export {
        vec![by_held[..by_held.len().min(MAX_EXPORT)].to_vec()]
    } else {
        vec![
            by_growth[..by_growth.len().min(candidates)].to_vec(),
            by_held[..by_held.len().min(candidates)].to_vec(),
        ]
    };
    let symbolizer_view = Arc::clone(&view);
    let mut lists = state
        .leaks
        .symbols
        .call(move |symbols| {
            lists
                .iter()
                .map(|rows| {
                    report::entries(&symbolizer_view, rows, window, page_size, &cgroups, symbols)
                })
                .collect::<Vec<Vec<LeakEntry>>>()
        })
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .into_iter();
    let mut next = || lists.next().unwrap_or_default();
    let (by_growth, by_held, exported) = if export {
        (Vec::new(), Vec::new(), next())
    } else {
        let mut growth = report::merge(next());
        growth.sort_by(|a, b| {
            b.growth_bytes
                .cmp(&a.growth_bytes)
                .then(b.held_bytes.cmp(&a.held_bytes))
        });
        growth.truncate(parsed.top);
        let mut held = report::merge(next());
        held.sort_by(|a, b| {
            b.held_bytes
                .cmp(&a.held_bytes)
                .then(b.growth_bytes.cmp(&a.growth_bytes))
        });
        held.truncate(parsed.top);
        (growth, held, Vec::new())
    };
    let response = LeaksResponse {
        taken_at_unix_ms: snapshot.taken_at_unix_ms,
        sample_shift: view.table.shift,
        requested_window_seconds: parsed.since.as_secs_f64(),
        window_seconds: matched.window.as_secs_f64(),
        held_bytes: (matched.rows.iter().map(|r| r.1).sum::<f64>() * page_size as f64) as u64,
        matching_stacks: matched.rows.len(),
        overflow_stacks: view.table.overflow_keys,
        by_growth,
        by_held,
    };
    Ok((response, exported))
}

type Failure = (StatusCode, String);

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
