//! Leak queries: the stacks of a census that match a cgroup, pod or process, with growth over a
//! window, symbolized. The API serves them; the event engine attaches them as evidence.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    history::History,
    report::{self, LeakEntry, LeakFilter},
};
use crate::{
    cgroup::Workload,
    model::{Snapshot, Snapshots},
    symbolize::service::SymbolService,
    units::MemcgId,
};

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    BadRequest(String),
    /// The pinned census is no longer kept.
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Query of `GET /v1/leaks` (and its `/pprof` and `/flamegraph` forms).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaksQuery {
    /// A memory cgroup (id, path, or end of path) and its descendants.
    pub cgroup: Option<String>,
    /// A pod, by UID (or its beginning).
    pub pod: Option<String>,
    pub pid: Option<u32>,
    /// Growth window, e.g. `10m` (default 10m, at most 24h).
    pub since: Option<String>,
    /// Stacks per list (default 10, at most 1000).
    pub top: Option<usize>,
    /// Answer from the census taken at this time (`taken_at_unix_ms` of an earlier answer), so
    /// several requests describe the same instant.
    pub at: Option<u64>,
}

/// `GET /v1/leaks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LeaksResponse {
    pub taken_at_unix_ms: u64,
    pub sample_shift: u32,
    /// The window asked for, and the one history could cover (shorter while the agent is young).
    pub requested_window_seconds: f64,
    pub window_seconds: f64,
    /// Held bytes of all matching stacks.
    pub held_bytes: u64,
    pub matching_stacks: usize,
    /// Distinct stacks merged into "other" entries by the cap, in this census.
    pub overflow_stacks: u64,
    /// Largest growth first.
    pub by_growth: Vec<LeakEntry>,
    /// Most held first.
    pub by_held: Vec<LeakEntry>,
}

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
pub fn run(
    snapshots: &Snapshots,
    sources: &LeakSources,
    query: &LeaksQuery,
    export: bool,
) -> Result<(LeaksResponse, Vec<LeakEntry>), QueryError> {
    let snapshot = match query.at {
        None => snapshots.latest(),
        Some(at) => snapshots.at(at).ok_or_else(|| {
            QueryError::Gone(format!(
                "the census taken at {at} is no longer kept; ask again without `at`"
            ))
        })?,
    };
    let parsed = parse(&snapshot, query).map_err(QueryError::BadRequest)?;
    let view = Arc::clone(&snapshot.leaks);
    let matched = {
        let history = sources
            .history
            .read()
            .map_err(|_| QueryError::Internal("history lock poisoned".to_string()))?;
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
    let mut lists = sources
        .symbols
        .call(move |symbols| {
            lists
                .iter()
                .map(|rows| {
                    report::entries(&symbolizer_view, rows, window, page_size, &cgroups, symbols)
                })
                .collect::<Vec<Vec<LeakEntry>>>()
        })
        .map_err(|e| QueryError::Unavailable(e.to_string()))?
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

/// A cgroup's memory at one instant: what a process ending there (an OOM kill, a crash) left
/// behind, recorded with the lifecycle record because the census moves on within seconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryAt {
    /// The census the figures come from (the last one before the end).
    pub taken_at_unix_ms: u64,
    pub usage_bytes: u64,
    pub anon_bytes: u64,
    pub file_bytes: u64,
    pub limit_bytes: Option<u64>,
    /// Stacks holding the most memory in the cgroup and its descendants.
    pub top_stacks: Vec<LeakEntry>,
    /// Files with the most page cache charged to it.
    pub top_files: Vec<crate::attribution::files::CachedFile>,
}

/// The memory of the cgroup at `cgroup_path` in the newest census taken at or before `unix_ms`
/// (None when no kept census has the cgroup).
#[must_use]
pub fn memory_at(
    snapshots: &Snapshots,
    sources: &LeakSources,
    cgroup_path: &str,
    unix_ms: u64,
    top: usize,
) -> Option<MemoryAt> {
    let snapshot = snapshots.before(unix_ms)?;
    let row = snapshot.cgroups.iter().find(|r| r.path == cgroup_path)?;
    let query = LeaksQuery {
        cgroup: Some(cgroup_path.to_string()),
        top: Some(top),
        at: Some(snapshot.taken_at_unix_ms),
        ..LeaksQuery::default()
    };
    let top_stacks = match run(snapshots, sources, &query, false) {
        Ok((answer, _)) => answer.by_held,
        Err(e) => {
            tracing::debug!("no stacks for {cgroup_path}: {e}");
            Vec::new()
        }
    };
    let top_files = snapshot
        .files
        .by_memcg
        .get(&row.id)
        .map(|c| c.top.iter().take(top).cloned().collect())
        .unwrap_or_default();
    Some(MemoryAt {
        taken_at_unix_ms: snapshot.taken_at_unix_ms,
        usage_bytes: row.usage_bytes,
        anon_bytes: row.anon_bytes,
        file_bytes: row.file_bytes,
        limit_bytes: row.limit_bytes,
        top_stacks,
        top_files,
    })
}

/// One of a cgroup's largest stacks, labelled by its innermost named functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupStack {
    pub cgroup: String,
    /// `f < g < h`: innermost first, at most [`STACK_LABEL_FRAMES`] named frames.
    pub stack: String,
    pub bytes: u64,
}

/// Named frames in a stack label.
pub const STACK_LABEL_FRAMES: usize = 3;

/// The `per_cgroup` stacks holding the most memory in each of the `cgroups` cgroups holding the
/// most, symbolized (from the cache when it can), for metrics whose cardinality must be bounded.
/// Stacks that read the same once labelled are summed.
#[must_use]
pub fn top_stacks(
    snapshot: &Snapshot,
    sources: &LeakSources,
    per_cgroup: usize,
    cgroups: usize,
) -> Vec<CgroupStack> {
    let view = Arc::clone(&snapshot.leaks);
    let mut by_memcg: HashMap<MemcgId, Vec<(crate::attribution::LeakKey, f64)>> = HashMap::new();
    for (key, held) in &view.table.entries {
        if key.user != crate::attribution::OTHER {
            by_memcg
                .entry(key.memcg)
                .or_default()
                .push((*key, held.pages));
        }
    }
    let mut totals: Vec<(MemcgId, f64)> = by_memcg
        .iter()
        .map(|(m, rows)| (*m, rows.iter().map(|r| r.1).sum()))
        .collect();
    totals.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let paths: HashMap<MemcgId, String> = snapshot
        .cgroups
        .iter()
        .map(|r| (r.id, r.path.clone()))
        .collect();
    let mut chosen = Vec::new();
    for (memcg, _) in totals.into_iter().take(cgroups) {
        let Some(path) = paths.get(&memcg) else {
            continue;
        };
        let mut rows = by_memcg.remove(&memcg).unwrap_or_default();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        rows.truncate(per_cgroup);
        chosen.extend(rows.into_iter().map(|r| (path.clone(), r)));
    }
    let page_size = snapshot.page_size;
    let labelled = sources.symbols.call(move |symbols| {
        chosen
            .into_iter()
            .map(|(path, (key, pages))| {
                let names: Vec<String> = symbols
                    .user(&view, key.process, key.user)
                    .map(|s| {
                        s.frames
                            .iter()
                            .filter_map(|f| f.function.clone())
                            .take(STACK_LABEL_FRAMES)
                            .collect()
                    })
                    .unwrap_or_default();
                let stack = if names.is_empty() {
                    "[unknown]".to_string()
                } else {
                    names.join(" < ")
                };
                (path, stack, (pages * page_size as f64) as u64)
            })
            .collect::<Vec<_>>()
    });
    let mut merged: HashMap<(String, String), u64> = HashMap::new();
    for (cgroup, stack, bytes) in labelled.unwrap_or_default() {
        *merged.entry((cgroup, stack)).or_default() += bytes;
    }
    let mut out: Vec<CgroupStack> = merged
        .into_iter()
        .map(|((cgroup, stack), bytes)| CgroupStack {
            cgroup,
            stack,
            bytes,
        })
        .collect();
    out.sort_by(|a, b| a.cgroup.cmp(&b.cgroup).then(b.bytes.cmp(&a.bytes)));
    out
}
