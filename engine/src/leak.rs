//! The leak detector (seed 000): per cgroup, a robust trend of the memory reclaim cannot drop
//! and its forecast against the limit that applies ([`crate::growth`]); the growth is split
//! into anon and page cache: anon growth is a suspected leak (with the stacks that grow), page
//! cache in the working set, or reclaim that cannot keep up, is file-cache pressure (with the
//! files).

use memlens_types::{
    cgroups::CgroupRow,
    event::{EventKind, Evidence, Finding, HeldBack, Severity},
    evidence::GrowthEvidence,
    Bytes, Workload,
};

use crate::{
    allowance::Allowances,
    growth::{assess, Verdict},
    Context,
};

/// Top processes by memory in the evidence.
const TOP_PROCESSES: usize = 10;
/// Top growing stacks in the evidence.
const TOP_STACKS: usize = 5;
/// A parent's finding is left to its child when the child accounts for this share of its
/// growth (one leak, one event).
const CHILD_SHARE: f64 = 0.5;
/// Most held-back cgroups a run reports (the fastest growing).
const MAX_HELD_BACK: usize = 50;

/// A cgroup whose forecast crosses its threshold, before evidence is gathered.
struct Candidate<'a> {
    row: &'a CgroupRow,
    kind: EventKind,
    slope: f64,
    /// Raised for reclaim that cannot keep up rather than for growth.
    thrashing: bool,
    evidence: GrowthEvidence,
}

/// What the detector concluded: findings, and growth it held back.
pub struct Detected {
    pub findings: Vec<Finding>,
    pub held_back: Vec<HeldBack>,
}

/// Runs the detector over every cgroup of the snapshot.
pub fn detect(cx: &Context<'_>) -> Detected {
    let leak = &cx.config.leak;
    let allowances = Allowances::new(&leak.allow);
    let enabled = |kind: EventKind| match kind {
        EventKind::LeakSuspected => leak.enabled,
        _ => cx.config.file_cache.enabled,
    };
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    let mut held_back: Vec<HeldBack> = Vec::new();
    for row in cx.rows.iter().filter(|row| cx.allowed(row)) {
        let allowed = if allowances.is_empty() {
            None
        } else {
            let pod = match &row.workload {
                Workload::Pod {
                    pod_uid,
                    container_id,
                    ..
                } => cx.sources.pod(pod_uid, container_id.as_deref()),
                _ => None,
            };
            allowances.find(&row.path, pod.as_ref())
        };
        match assess(cx, row, allowed.as_ref()) {
            Verdict::Raise {
                kind,
                slope_per_s,
                thrashing,
                evidence,
            } if enabled(kind) => candidates.push(Candidate {
                row,
                kind,
                slope: slope_per_s,
                thrashing,
                evidence: *evidence,
            }),
            Verdict::HeldBack {
                kind,
                growth_bytes_per_hour,
                reason,
            } if enabled(kind) => held_back.push(HeldBack {
                subject: row.path.clone(),
                kind,
                growth_bytes_per_hour,
                reason,
            }),
            _ => {}
        }
    }
    held_back.sort_by(|a, b| b.growth_bytes_per_hour.total_cmp(&a.growth_bytes_per_hour));
    held_back.truncate(MAX_HELD_BACK);
    // One growth, one event: a parent whose growth is mostly a flagged child's is left out.
    let flagged: Vec<(String, EventKind, f64)> = candidates
        .iter()
        .map(|c| (c.row.path.clone(), c.kind, c.slope))
        .collect();
    candidates.retain(|c| {
        let prefix = format!("{}/", c.row.path.trim_end_matches('/'));
        !flagged.iter().any(|(path, kind, slope)| {
            *kind == c.kind && path.starts_with(&prefix) && *slope >= CHILD_SHARE * c.slope
        })
    });
    let findings = candidates
        .into_iter()
        .map(|mut c| {
            let path = c.row.path.clone();
            c.evidence.top_processes = cx.sources.top_processes(&path, TOP_PROCESSES);
            let (summary, severity) = describe(&c);
            match c.kind {
                EventKind::LeakSuspected => {
                    c.evidence.top_stacks =
                        cx.sources.growing_stacks(&path, leak.lookback, TOP_STACKS);
                    c.evidence.allocation_stacks = cx.sources.allocation_stacks(&path, TOP_STACKS);
                    if c.evidence.allocation_stacks.is_empty() {
                        let by_hand = format!(
                            "the growing stacks name the code that first touched the pages; \
                             for the code that holds them, trace the allocator: memlens leaks \
                             --allocations --cgroup {path} --for 30s (every allocator call \
                             traps while traced: the cost is shown as it runs)"
                        );
                        let note = if leak.allocation_trace.is_zero() {
                            by_hand
                        } else {
                            let (stacks, note) = cx.sources.allocation_trace(
                                &path,
                                TOP_STACKS,
                                leak.allocation_trace,
                                leak.allocation_trace_budget_cpus,
                            );
                            c.evidence.allocation_stacks = stacks;
                            format!("{note}; {by_hand}")
                        };
                        c.evidence.allocation_trace_hint = Some(note);
                    }
                }
                _ => {
                    c.evidence.top_files = cx
                        .sources
                        .top_files(c.row.id, cx.config.file_cache.top_files);
                }
            }
            let evidence = Box::new(c.evidence);
            Finding {
                subject: path,
                severity,
                summary,
                dimensions: cx.dimensions(c.row),
                evidence: match c.kind {
                    EventKind::LeakSuspected => Evidence::LeakSuspected(evidence),
                    _ => Evidence::FileCachePressure(evidence),
                },
            }
        })
        .collect();
    Detected {
        findings,
        held_back,
    }
}

fn describe(c: &Candidate<'_>) -> (String, Severity) {
    let e = &c.evidence;
    let when = |s: Option<f64>| {
        s.map_or_else(
            || "beyond the horizon".to_string(),
            |s| {
                format!(
                    "in {}",
                    humantime::format_duration(std::time::Duration::from_secs(s as u64))
                )
            },
        )
    };
    let summary = if c.thrashing {
        format!(
            "page cache thrashes in {}: {} read back in soon after eviction over the window, \
             usage {} of {} limit",
            e.cgroup,
            Bytes(e.reclaim.refaulted_bytes.unwrap_or(0)),
            Bytes(e.usage_bytes),
            Bytes(e.limit_bytes),
        )
    } else {
        let what = match c.kind {
            EventKind::LeakSuspected => "memory leak suspected",
            _ => "page cache fills the working set",
        };
        format!(
            "{what} in {}: {} +{}/h (anon +{}/h, file +{}/h), {} of {} limit, reaches it {}",
            e.cgroup,
            e.measure,
            Bytes(e.growth_bytes_per_hour.max(0.0) as u64),
            Bytes(e.anon_growth_bytes_per_hour.max(0.0) as u64),
            Bytes(e.file_growth_bytes_per_hour.max(0.0) as u64),
            Bytes(e.measured_bytes),
            Bytes(e.limit_bytes),
            when(e.time_to_limit_seconds),
        )
    };
    let reaches_limit = e
        .time_to_limit_seconds
        .is_some_and(|s| s <= e.horizon_seconds);
    let severity = if c.kind == EventKind::LeakSuspected && reaches_limit {
        Severity::Critical
    } else {
        Severity::Warning
    };
    (summary, severity)
}
