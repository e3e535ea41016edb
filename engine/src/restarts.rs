//! The restart detector (seed 001): restarts per container (its main process ending abnormally,
//! an OOM kill, or a pod's container cgroup re-created) grouped per namespace (pods) or per
//! parent cgroup (anything else); a group whose share of restarted members rises over the window
//! raises *abnormal restarts*, with every restart's exit status, OOM kill and memory at death.
//!
//! OOM kills come from the kernel's own OOM event, per victim: a later SIGTERM in the same cgroup
//! is never labelled OOMKilled, and no kill between two samples is missed.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use memlens_types::{
    event::{Dimensions, Evidence, Finding, Severity},
    evidence::{Reason, Restart, RestartEvidence},
    lifecycle::{LifecycleRecord, RecordKind},
    Workload,
};

use crate::Context;

/// Most lifecycle records read per run.
const MAX_RECORDS: usize = 20_000;
/// Restarts listed per group in the evidence (the newest).
const MAX_LISTED: usize = 50;

/// What a record says about its cgroup, if it is a restart.
fn restart_of(record: &LifecycleRecord) -> Option<Restart> {
    let reason = match record.kind {
        RecordKind::OomKill => Reason::OomKilled,
        RecordKind::Exit if record.main_process && record.signal.is_some() => Reason::Signaled,
        RecordKind::Exit if record.main_process => Reason::Error,
        _ => return None,
    };
    let cgroup = record.cgroup_path.clone()?;
    let (pod_uid, container_id) = ids(&Workload::from_path(&cgroup));
    let memory_at_death = if record.oom_killed {
        Some(
            record.anon_rss_bytes.unwrap_or(0)
                + record.file_rss_bytes.unwrap_or(0)
                + record.shmem_rss_bytes.unwrap_or(0),
        )
    } else {
        record.evidence.as_ref().map(|e| e.usage_bytes)
    };
    Some(Restart {
        at_unix_ms: record.ts_ms,
        reason,
        oom_killed: record.oom_killed,
        cgroup,
        pod_uid,
        container_id,
        pid: record.pid,
        comm: record.comm.clone(),
        exit_code: record.exit_code,
        signal: record.signal,
        container_exit_code: record
            .signal
            .map_or(record.exit_code.unwrap_or(0), |s| 128 + s),
        memory_at_death_bytes: memory_at_death,
        memory: record.evidence.clone(),
        counted_only: false,
    })
}

/// Pod container cgroups created after one of the same pod was removed: re-creations.
fn recreations(records: &[LifecycleRecord]) -> Vec<Restart> {
    let mut removed: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    // Oldest first.
    for r in records.iter().rev() {
        let Some(path) = &r.cgroup_path else { continue };
        let Workload::Pod {
            pod_uid,
            container_id: Some(container_id),
            ..
        } = Workload::from_path(path)
        else {
            continue;
        };
        match r.kind {
            RecordKind::CgroupRemoved => {
                removed.insert(pod_uid);
            }
            RecordKind::CgroupCreated if removed.remove(&pod_uid) => out.push(Restart {
                at_unix_ms: r.ts_ms,
                reason: Reason::Recreated,
                oom_killed: false,
                cgroup: path.clone(),
                pod_uid: Some(pod_uid),
                container_id: Some(container_id),
                pid: 0,
                comm: String::new(),
                exit_code: None,
                signal: None,
                container_exit_code: 0,
                memory_at_death_bytes: None,
                memory: None,
                counted_only: false,
            }),
            _ => {}
        }
    }
    out
}

/// OOM kills a leaf cgroup counted since `start` beyond the victims recorded there: kills the
/// agent did not see (it was down), so none is missed between two looks.
fn unseen_kills(cx: &Context<'_>, records: &[LifecycleRecord], start: u64) -> Vec<Restart> {
    let parents: HashSet<&str> = cx
        .rows
        .iter()
        .filter_map(|r| {
            r.path
                .rsplit_once('/')
                .map(|(p, _)| if p.is_empty() { "/" } else { p })
        })
        .collect();
    let mut out = Vec::new();
    for row in cx.rows {
        // Leaves only: on cgroup v2 a parent's counter includes its children's.
        let Some(now) = row
            .oom_kills
            .filter(|_| !parents.contains(row.path.as_str()))
        else {
            continue;
        };
        let Ok(series) = cx.sources.series(&row.path, start, 1000) else {
            continue;
        };
        let Some(first) = series.first().and_then(|s| s.oom_kills) else {
            continue;
        };
        let seen = records
            .iter()
            .filter(|r| {
                r.kind == RecordKind::OomKill
                    && r.ts_ms >= start
                    && r.cgroup_path.as_deref() == Some(row.path.as_str())
            })
            .count() as u64;
        for k in seen..now.saturating_sub(first) {
            // When the counter first showed this kill (now, if no sample has yet).
            let at = series
                .iter()
                .find(|s| s.oom_kills.is_some_and(|c| c > first + k))
                .map_or(cx.now_ms, |s| s.ts_ms);
            let (pod_uid, container_id) = ids(&row.workload);
            out.push(Restart {
                at_unix_ms: at,
                reason: Reason::OomKilled,
                oom_killed: true,
                cgroup: row.path.clone(),
                pod_uid,
                container_id,
                pid: 0,
                comm: String::new(),
                exit_code: None,
                signal: Some(9),
                container_exit_code: 137,
                memory_at_death_bytes: None,
                memory: None,
                counted_only: true,
            });
        }
    }
    out
}

fn ids(workload: &Workload) -> (Option<String>, Option<String>) {
    match workload {
        Workload::Pod {
            pod_uid,
            container_id,
            ..
        } => (Some(pod_uid.clone()), container_id.clone()),
        Workload::Container { container_id, .. } => (None, Some(container_id.clone())),
        _ => (None, None),
    }
}

/// The group a restarted cgroup belongs to, the member it stands for, and the group's dimensions.
fn group_of(cx: &Context<'_>, restart: &Restart) -> (String, String, Dimensions) {
    let mut dims = Dimensions {
        host: cx.host.to_string(),
        cluster: cx.config.cluster.clone(),
        ..Dimensions::default()
    };
    if let Some(uid) = &restart.pod_uid {
        if let Some(pod) = cx.sources.pod(uid, None) {
            dims.namespace = Some(pod.namespace.clone());
            return (format!("namespace:{}", pod.namespace), uid.clone(), dims);
        }
        dims.pod_uid = Some(uid.clone());
        return (format!("pod:{uid}"), restart.cgroup.clone(), dims);
    }
    let parent = match restart.cgroup.rsplit_once('/') {
        Some(("", _)) | None => "/".to_string(),
        Some((parent, _)) => parent.to_string(),
    };
    dims.cgroup = Some(parent.clone());
    (parent, restart.cgroup.clone(), dims)
}

/// Members a group has now: pods of the namespace, or the parent's child cgroups.
fn members_now(cx: &Context<'_>, group: &str) -> BTreeSet<String> {
    cx.rows
        .iter()
        .filter_map(|row| {
            if let Some(ns) = group.strip_prefix("namespace:") {
                let Workload::Pod {
                    pod_uid,
                    container_id: None,
                    ..
                } = &row.workload
                else {
                    return None;
                };
                return (cx.sources.pod(pod_uid, None)?.namespace == ns).then(|| pod_uid.clone());
            }
            if let Some(uid) = group.strip_prefix("pod:") {
                return matches!(&row.workload, Workload::Pod { pod_uid, container_id: Some(_), .. } if pod_uid == uid)
                    .then(|| row.path.clone());
            }
            let prefix = format!("{}/", group.trim_end_matches('/'));
            let rest = row.path.strip_prefix(&prefix)?;
            (!rest.is_empty() && !rest.contains('/')).then(|| row.path.clone())
        })
        .collect()
}

#[derive(Default)]
struct Group {
    dims: Option<Dimensions>,
    now: Vec<Restart>,
    previous: usize,
    members_now: BTreeSet<String>,
    members_previous: BTreeSet<String>,
}

/// Runs the detector over the lifecycle records of the last two windows.
pub fn detect(cx: &Context<'_>, open_subjects: &HashSet<String>) -> Vec<Finding> {
    let config = &cx.config.restarts;
    let window = u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX);
    let start = cx.now_ms.saturating_sub(window);
    let records = match cx.sources.lifecycle(
        cx.now_ms.saturating_sub(window.saturating_mul(2)),
        MAX_RECORDS,
    ) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("restart detector: no lifecycle records: {e}");
            return Vec::new();
        }
    };
    let mut restarts: Vec<Restart> = records.iter().filter_map(restart_of).collect();
    restarts.extend(recreations(&records));
    restarts.extend(unseen_kills(cx, &records, start));
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for restart in restarts {
        let (key, member, dims) = group_of(cx, &restart);
        if !cx
            .config
            .filters
            .namespace_allowed(cx.config.cluster.as_deref(), dims.namespace.as_deref())
        {
            continue;
        }
        let group = groups.entry(key).or_default();
        group.dims = Some(dims);
        if restart.at_unix_ms >= start {
            group.members_now.insert(member);
            group.now.push(restart);
        } else {
            group.members_previous.insert(member);
            group.previous += 1;
        }
    }
    groups
        .into_iter()
        .filter_map(|(key, mut group)| {
            let restarted = group.now.len();
            if restarted < config.min_restarts as usize {
                return None;
            }
            let mut members = members_now(cx, &key);
            members.extend(group.members_now.iter().cloned());
            members.extend(group.members_previous.iter().cloned());
            let total = members.len().max(1) as f64;
            let share = group.members_now.len() as f64 / total;
            let previous_share = group.members_previous.len() as f64 / total;
            let rising = share > previous_share || restarted > group.previous;
            if !rising && !open_subjects.contains(&key) {
                return None;
            }
            group.now.sort_by_key(|r| std::cmp::Reverse(r.at_unix_ms));
            let oom_kills = group.now.iter().filter(|r| r.oom_killed).count();
            let summary = format!(
                "{restarted} restarts in {} ({oom_kills} OOM-killed) in the last {}: {} of {} members restarted (before: {})",
                key,
                humantime::format_duration(config.window),
                group.members_now.len(),
                members.len(),
                group.members_previous.len(),
            );
            let evidence = RestartEvidence {
                group: key.clone(),
                evaluated_at_unix_ms: cx.now_ms,
                window_seconds: config.window.as_secs_f64(),
                members: members.len(),
                restarted_members: group.members_now.len(),
                restarted_share: share,
                previous_restarted_share: previous_share,
                restarts: restarted,
                previous_restarts: group.previous,
                oom_kills,
                recent: group.now.into_iter().take(MAX_LISTED).collect(),
            };
            Some(Finding {
                subject: key,
                severity: if oom_kills > 0 {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                summary,
                dimensions: group.dims.unwrap_or_default(),
                evidence: Evidence::AbnormalRestarts(Box::new(evidence)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: RecordKind, path: &str, ts: u64) -> LifecycleRecord {
        LifecycleRecord {
            ts_ms: ts,
            kind,
            pid: 10,
            comm: "app".into(),
            cgroup_id: 1,
            cgroup_path: Some(path.into()),
            exit_code: None,
            signal: Some(9),
            oom_killed: kind == RecordKind::OomKill,
            main_process: true,
            anon_rss_bytes: Some(100),
            file_rss_bytes: Some(20),
            shmem_rss_bytes: Some(0),
            evidence: None,
        }
    }

    #[test]
    fn oom_kills_and_main_process_ends_are_restarts_other_exits_are_not() {
        let oom = restart_of(&record(RecordKind::OomKill, "/a/b", 1)).unwrap();
        assert_eq!(
            (
                oom.reason,
                oom.container_exit_code,
                oom.memory_at_death_bytes
            ),
            (Reason::OomKilled, 137, Some(120))
        );
        let mut term = record(RecordKind::Exit, "/a/b", 2);
        term.signal = Some(15);
        let term = restart_of(&term).unwrap();
        assert_eq!(
            (term.reason, term.oom_killed, term.container_exit_code),
            (Reason::Signaled, false, 143)
        );
        let mut child = record(RecordKind::Exit, "/a/b", 3);
        child.main_process = false;
        assert!(restart_of(&child).is_none());
    }

    #[test]
    fn a_pod_container_cgroup_recreated_is_a_restart() {
        let pod = "/kubepods/burstable/pod0f3c5c7e-8d1c-4c0e-9f5e-1a2b3c4d5e6f";
        let c1 = format!("{pod}/{}", "a".repeat(64));
        let c2 = format!("{pod}/{}", "b".repeat(64));
        // Newest first, as read.
        let records = [
            record(RecordKind::CgroupCreated, &c2, 3),
            record(RecordKind::CgroupRemoved, &c1, 2),
            record(RecordKind::CgroupCreated, &c1, 1),
        ];
        let found = recreations(&records);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].reason, found[0].at_unix_ms),
            (Reason::Recreated, 3)
        );
    }
}
