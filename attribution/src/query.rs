//! Leak queries: the stacks of a census that match a cgroup, pod or process, with growth over a
//! window, symbolized. The API serves them; the event engine attaches them as evidence.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Duration,
};

use memlens_types::{
    leaks::{
        CgroupStack, LeakEntry, LeaksQuery, LeaksResponse, MAX_ENTRY_PROCESSES, STACK_LABEL_FRAMES,
    },
    lifecycle::MemoryAt,
    CgroupSelector, MemcgId, Workload,
};

use crate::{
    growth::GrowthHistory,
    report::{self, LeakFilter},
    symbol_service::SymbolService,
    LeakKey, View, Views, OTHER,
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
    pub history: Arc<RwLock<GrowthHistory>>,
    pub symbols: SymbolService,
}

/// A parsed, validated query.
struct Parsed {
    filter: LeakFilter,
    since: Duration,
    top: usize,
}

fn parse(view: &View, query: &LeaksQuery) -> Result<Parsed, String> {
    let since = query.since.unwrap_or(DEFAULT_SINCE);
    if since > MAX_SINCE {
        return Err(format!(
            "since {} is longer than 24h",
            humantime::format_duration(since)
        ));
    }
    let top = query.top.unwrap_or(10);
    if top == 0 || top > MAX_TOP {
        return Err(format!("top must be between 1 and {MAX_TOP}"));
    }
    let rows = &view.snapshot.cgroups;
    let mut memcgs: Option<HashSet<MemcgId>> = None;
    if let Some(wanted) = &query.cgroup {
        let roots: Vec<&str> = view
            .select(wanted)
            .iter()
            .map(|r| r.path.as_str())
            .collect();
        if roots.is_empty() {
            return Err(format!("no memory cgroup matches {:?}", wanted.to_string()));
        }
        memcgs = Some(
            rows.iter()
                .filter(|r| roots.iter().any(|root| is_within(&r.path, root)))
                .map(|r| r.id)
                .collect(),
        );
    }
    if let Some(uid) = &query.pod {
        let pods: HashSet<MemcgId> = rows
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
            per_process: query.per_process,
        },
        since,
        top,
    })
}

/// Whether the cgroup at `path` is `root` or below it.
fn is_within(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path == root
        || root.is_empty()
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Runs a query: matching stacks, sorted, symbolized. `limit` None = every stack (exports).
pub fn run(
    views: &Views,
    sources: &LeakSources,
    query: &LeaksQuery,
    export: bool,
) -> Result<(LeaksResponse, Vec<LeakEntry>), QueryError> {
    let snapshot = match query.at {
        None => views.latest(),
        Some(at) => views.at(at).ok_or_else(|| {
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
        .snapshot
        .cgroups
        .iter()
        .map(|r| (r.id, r.path.clone()))
        .collect();
    let mut by_held = matched.rows.clone();
    by_held.sort_by(|a, b| b.pages.total_cmp(&a.pages).then(a.key.cmp(&b.key)));
    let mut by_growth = matched.rows.clone();
    by_growth.sort_by(|a, b| b.growth.total_cmp(&a.growth).then(a.key.cmp(&b.key)));
    let page_size = snapshot.snapshot.page_size;
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
    let per_process = parsed.filter.per_process;
    let (by_growth, by_held, exported) = if export {
        let mut exported = next();
        for entry in &mut exported {
            entry.processes.truncate(MAX_ENTRY_PROCESSES);
        }
        (Vec::new(), Vec::new(), exported)
    } else {
        let mut growth = report::merge(next(), per_process);
        growth.sort_by(|a, b| {
            b.growth_bytes
                .cmp(&a.growth_bytes)
                .then(b.held_bytes.cmp(&a.held_bytes))
        });
        growth.truncate(parsed.top);
        let mut held = report::merge(next(), per_process);
        held.sort_by(|a, b| {
            b.held_bytes
                .cmp(&a.held_bytes)
                .then(b.growth_bytes.cmp(&a.growth_bytes))
        });
        held.truncate(parsed.top);
        (growth, held, Vec::new())
    };
    let response = LeaksResponse {
        taken_at_unix_ms: snapshot.snapshot.taken_at_unix_ms,
        sample_shift: view.table.shift,
        requested_window_seconds: parsed.since.as_secs_f64(),
        window_seconds: matched.window.as_secs_f64(),
        held_bytes: (matched.rows.iter().map(|r| r.pages).sum::<f64>() * page_size as f64) as u64,
        matching_stacks: matched.rows.len(),
        overflow_stacks: view.table.overflow_keys,
        by_growth,
        by_held,
    };
    Ok((response, exported))
}

/// The memory of the cgroup at `cgroup_path` in the newest census taken at or before `unix_ms`
/// (None when no kept census has the cgroup).
#[must_use]
pub fn memory_at(
    views: &Views,
    sources: &LeakSources,
    cgroup_path: &str,
    unix_ms: u64,
    top: usize,
) -> Option<MemoryAt> {
    let snapshot = views.before(unix_ms)?;
    let row = snapshot
        .snapshot
        .cgroups
        .iter()
        .find(|r| r.path == cgroup_path)?;
    let query = LeaksQuery {
        cgroup: Some(CgroupSelector::Path(cgroup_path.to_string())),
        top: Some(top),
        at: Some(snapshot.snapshot.taken_at_unix_ms),
        ..LeaksQuery::default()
    };
    let top_stacks = match run(views, sources, &query, false) {
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
        taken_at_unix_ms: snapshot.snapshot.taken_at_unix_ms,
        usage_bytes: row.usage_bytes,
        anon_bytes: row.anon_bytes,
        file_bytes: row.file_bytes,
        limit_bytes: row.limit_bytes,
        top_stacks,
        top_files,
    })
}

/// The `per_cgroup` stacks holding the most memory in each of the `cgroups` cgroups holding the
/// most, symbolized (from the cache when it can), for metrics whose cardinality must be bounded.
/// Stacks that read the same once labelled are summed.
#[must_use]
pub fn top_stacks(
    snapshot: &View,
    sources: &LeakSources,
    per_cgroup: usize,
    cgroups: usize,
) -> Vec<CgroupStack> {
    let view = Arc::clone(&snapshot.leaks);
    let mut by_memcg: HashMap<MemcgId, Vec<(LeakKey, f64)>> = HashMap::new();
    for (key, held) in &view.table.entries {
        if key.user != OTHER {
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
        .snapshot
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
    let page_size = snapshot.snapshot.page_size;
    let labelled = sources.symbols.call(move |symbols| {
        chosen
            .into_iter()
            .map(|(path, (key, pages))| {
                let names: Vec<String> = symbols
                    .user(&view, key.user)
                    .map(|s| {
                        s.frames()
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
