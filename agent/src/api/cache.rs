//! `/v1/cache`: the working set explained, and the files whose page cache a cgroup is charged for.

use axum::{
    extract::{rejection::QueryRejection, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};

use memlens_types::{
    cgroups::CgroupRow,
    files::{CacheCgroup, CacheQuery, CacheResponse, CachedFileShare},
    Bytes, Workload,
};

use super::{
    server::{accept_query, error, top_asked},
    AppState,
};

const DEFAULT_TOP: usize = 10;
const MAX_TOP: usize = 50;
/// Cgroups answered when no cgroup or pod is asked for (the ones with the most page cache).
const DEFAULT_CGROUPS: usize = 10;

pub async fn cache(
    State(state): State<AppState>,
    query: Result<Query<CacheQuery>, QueryRejection>,
) -> Response {
    let query = match accept_query(query) {
        Ok(q) => q,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let top = match top_asked(query.top, DEFAULT_TOP, MAX_TOP) {
        Ok(n) => n,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let view = state.views.latest();
    let snapshot = &view.snapshot;
    if view.files.by_memcg.is_empty()
        && snapshot
            .cgroups
            .iter()
            .all(|r| r.file_attributed_bytes.is_none())
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the page-cache probes are not attached (see `memlens status`)".into(),
        );
    }
    let mut rows: Vec<&CgroupRow> = match (&query.cgroup, &query.pod) {
        (Some(wanted), _) => view.select(wanted),
        (None, Some(uid)) => snapshot
            .cgroups
            .iter()
            .filter(|r| matches!(&r.workload, Workload::Pod { pod_uid, container_id: None, .. } if pod_uid.starts_with(uid.as_str())))
            .collect(),
        (None, None) => {
            let mut all: Vec<&CgroupRow> = snapshot.cgroups.iter().collect();
            all.sort_by(|a, b| b.file_bytes.cmp(&a.file_bytes).then(a.path.cmp(&b.path)));
            all.truncate(DEFAULT_CGROUPS);
            all
        }
    };
    if rows.is_empty() {
        let what = query
            .cgroup
            .as_ref()
            .map(ToString::to_string)
            .or(query.pod.clone())
            .unwrap_or_default();
        return error(
            StatusCode::NOT_FOUND,
            format!("no memory cgroup or pod matches {what:?}"),
        );
    }
    rows.truncate(DEFAULT_CGROUPS);
    let cgroups = rows
        .into_iter()
        .map(|row| {
            let files = view.files.by_memcg.get(&row.id);
            let top: Vec<CachedFileShare> = files
                .map(|f| f.top.iter().take(top).cloned().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|file| CachedFileShare {
                    share_of_file_cache: share(file.bytes, row.file_bytes),
                    file,
                })
                .collect();
            let attributed = files.map_or(0, |f| f.attributed.0);
            CacheCgroup {
                diagnosis: diagnosis(row, top.first()),
                id: row.id,
                path: row.path.clone(),
                name: row.name.clone(),
                pod: state.pod_of(&row.workload),
                attributed_bytes: attributed,
                attributed_share: share(attributed, row.file_bytes),
                cached_files: files.map_or(0, |f| f.files),
                files: top,
                usage_bytes: row.usage_bytes,
                working_set_bytes: row.working_set_bytes,
                anon_bytes: row.anon_bytes,
                file_bytes: row.file_bytes,
                active_file_bytes: row.active_file_bytes,
                inactive_file_bytes: row.inactive_file_bytes,
                kernel_bytes: row.kernel_bytes,
                file_dirty_bytes: row.file_dirty_bytes,
                file_writeback_bytes: row.file_writeback_bytes,
                shmem_bytes: row.shmem_bytes,
                slab_reclaimable_bytes: row.slab_reclaimable_bytes,
                slab_unreclaimable_bytes: row.slab_unreclaimable_bytes,
                sock_bytes: row.sock_bytes,
                limit_bytes: row.limit_bytes,
            }
        })
        .collect();
    Json(CacheResponse {
        taken_at_unix_ms: snapshot.taken_at_unix_ms,
        tracked_pairs: view.files.entries,
        pairs_below_zero: view.files.below_zero,
        cgroups,
    })
    .into_response()
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// "working set 811.0 MiB: 52.5 MiB anon, 758.4 MiB active file cache, 4.3 MiB kernel; of the
/// file cache, /var/log/app.log holds 750.0 MiB (87%)".
fn diagnosis(row: &CgroupRow, top: Option<&CachedFileShare>) -> String {
    let mut text = format!(
        "working set {} (usage {} minus {} inactive file cache): {} anon, {} active file cache, {} kernel",
        Bytes(row.working_set_bytes),
        Bytes(row.usage_bytes),
        Bytes(row.inactive_file_bytes),
        Bytes(row.anon_bytes),
        Bytes(row.active_file_bytes),
        Bytes(row.kernel_bytes),
    );
    if let Some(top) = top {
        text.push_str(&format!(
            "; of its {} file cache, {} holds {} ({:.0}%)",
            Bytes(row.file_bytes),
            top.file.display(),
            Bytes(top.file.bytes),
            top.share_of_file_cache * 100.0
        ));
    }
    text
}
