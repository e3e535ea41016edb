//! The leak detector (seed 000): per cgroup, a robust trend of usage over the lookback window and
//! its forecast over the horizon; when the forecast crosses the threshold share of the limit, the
//! growth is split into anon and page cache: anon growth is a suspected leak (with the stacks that
//! grow), page-cache growth is file-cache pressure (with the files).

use std::collections::HashMap;

use memlens_types::{
    cgroups::CgroupRow,
    event::{EventKind, Evidence, Finding, Severity},
    evidence::{GrowthEvidence, LimitSource},
    history::Sample,
    Bytes,
};

use crate::{
    trend::{theil_sen, Fit},
    Context,
};

/// Most samples read per cgroup (evenly thinned beyond).
const MAX_POINTS: usize = 2000;
/// Points of the usage series kept in the evidence, for the chart.
const SERIES_POINTS: usize = 120;
/// Top processes by memory in the evidence.
const TOP_PROCESSES: usize = 10;
/// Top growing stacks in the evidence.
const TOP_STACKS: usize = 5;
/// A parent's finding is left to its child when the child accounts for this share of its
/// growth (one leak, one event).
const CHILD_SHARE: f64 = 0.5;

/// A cgroup whose forecast crosses its threshold, before evidence is gathered.
struct Candidate<'a> {
    row: &'a CgroupRow,
    kind: EventKind,
    slope: f64,
    evidence: GrowthEvidence,
}

/// Runs the detector over every cgroup of the snapshot.
pub fn detect(cx: &Context<'_>) -> Vec<Finding> {
    let leak = &cx.config.leak;
    let mut candidates: Vec<Candidate<'_>> = cx
        .rows
        .iter()
        .filter(|row| cx.allowed(row))
        .filter_map(|row| evaluate(cx, row))
        .filter(|c| c.kind == EventKind::LeakSuspected || cx.config.file_cache.enabled)
        .filter(|c| c.kind == EventKind::FileCachePressure || leak.enabled)
        .collect();
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
    candidates
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
        .collect()
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
    let what = match c.kind {
        EventKind::LeakSuspected => "memory leak suspected",
        _ => "page cache grows",
    };
    let summary = format!(
        "{what} in {}: +{}/h (anon +{}/h, file +{}/h), {} of {} limit, reaches it {}",
        e.cgroup,
        Bytes(e.growth_bytes_per_hour.max(0.0) as u64),
        Bytes(e.anon_growth_bytes_per_hour.max(0.0) as u64),
        Bytes(e.file_growth_bytes_per_hour.max(0.0) as u64),
        Bytes(e.usage_bytes),
        Bytes(e.limit_bytes),
        when(e.time_to_limit_seconds),
    );
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

/// The limit a cgroup runs into: the smallest of its own and its ancestors', else the node's.
fn effective_limit(cx: &Context<'_>, row: &CgroupRow) -> (u64, LimitSource) {
    let by_path: HashMap<&str, Option<u64>> = cx
        .rows
        .iter()
        .map(|r| (r.path.as_str(), r.limit_bytes))
        .collect();
    let mut best = row.limit_bytes.map(|l| (l, LimitSource::Cgroup));
    let mut path = row.path.as_str();
    while let Some((parent, _)) = path.rsplit_once('/') {
        let parent = if parent.is_empty() { "/" } else { parent };
        if let Some(Some(limit)) = by_path.get(parent) {
            if best.as_ref().is_none_or(|(l, _)| limit < l) {
                best = Some((*limit, LimitSource::Ancestor(parent.to_string())));
            }
        }
        if parent == "/" {
            break;
        }
        path = parent;
    }
    match best {
        Some((limit, source)) if limit < cx.mem_total => (limit, source),
        _ => (cx.mem_total, LimitSource::Host),
    }
}

fn fit(samples: &[Sample], t0: u64, value: impl Fn(&Sample) -> u64) -> Option<Fit> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.ts_ms.saturating_sub(t0) as f64 / 1000.0, value(s) as f64))
        .collect();
    theil_sen(&points)
}

fn evaluate<'a>(cx: &Context<'_>, row: &'a CgroupRow) -> Option<Candidate<'a>> {
    let leak = &cx.config.leak;
    let since = cx
        .now_ms
        .saturating_sub(u64::try_from(leak.lookback.as_millis()).unwrap_or(u64::MAX));
    let samples = match cx.sources.series(&row.path, since, MAX_POINTS) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("leak detector: no history for {}: {e}", row.path);
            return None;
        }
    };
    let samples = since_last_reset(&samples);
    if samples.len() < leak.min_samples {
        return None;
    }
    let t0 = samples.first()?.ts_ms;
    let usage = fit(samples, t0, |s| s.usage_bytes)?;
    if usage.slope_per_hour() < leak.min_growth_bytes_per_hour as f64 {
        return None;
    }
    let (limit, limit_source) = effective_limit(cx, row);
    let threshold = limit as f64 * leak.threshold;
    let now = cx.now_ms.saturating_sub(t0) as f64 / 1000.0;
    let horizon = leak.horizon.as_secs_f64();
    let forecast = usage.value_at(now + horizon);
    if forecast < threshold {
        return None;
    }
    let anon = fit(samples, t0, |s| s.anon_bytes).map_or(0.0, |f| f.slope_per_hour());
    let file = fit(samples, t0, |s| s.file_bytes).map_or(0.0, |f| f.slope_per_hour());
    let kind = if anon >= file {
        EventKind::LeakSuspected
    } else {
        EventKind::FileCachePressure
    };
    let step = samples.len().div_ceil(SERIES_POINTS).max(1);
    let at = |t: f64| (t0 + (t * 1000.0) as u64, usage.value_at(t).max(0.0) as u64);
    let last = samples.last()?;
    Some(Candidate {
        row,
        kind,
        slope: usage.slope_per_s,
        evidence: GrowthEvidence {
            cgroup: row.path.clone(),
            evaluated_at_unix_ms: cx.now_ms,
            lookback_seconds: leak.lookback.as_secs_f64(),
            horizon_seconds: horizon,
            samples: samples.len(),
            usage_bytes: last.usage_bytes,
            limit_bytes: limit,
            limit_source,
            threshold_bytes: threshold as u64,
            growth_bytes_per_hour: usage.slope_per_hour(),
            anon_growth_bytes_per_hour: anon,
            file_growth_bytes_per_hour: file,
            rising_share: usage.rising_share,
            forecast_bytes: forecast.max(0.0) as u64,
            time_to_threshold_seconds: usage.time_to_reach(threshold, now),
            time_to_limit_seconds: usage.time_to_reach(limit as f64, now),
            series: samples
                .iter()
                .step_by(step)
                .chain(std::iter::once(last))
                .map(|s| (s.ts_ms, s.usage_bytes))
                .collect(),
            forecast: [at(now), at(now + horizon)],
            top_processes: Vec::new(),
            top_stacks: Vec::new(),
            allocation_stacks: Vec::new(),
            allocation_trace_hint: None,
            top_files: Vec::new(),
        },
    })
}

/// A drop below this share of the peak before it is a reset (an OOM kill, a restart), not noise.
const RESET_SHARE: f64 = 0.25;

/// The samples after the last reset: memory that fell to a quarter of its earlier peak was given
/// back (the process was killed or restarted), so the growth before it says nothing about the
/// growth after. A garbage collector's sawtooth rarely falls that far and keeps its whole window.
fn since_last_reset(samples: &[Sample]) -> &[Sample] {
    let mut peak = 0u64;
    let mut start = 0;
    for (i, s) in samples.iter().enumerate() {
        if (s.usage_bytes as f64) < peak as f64 * RESET_SHARE {
            start = i;
            peak = s.usage_bytes;
        }
        peak = peak.max(s.usage_bytes);
    }
    &samples[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_ms: u64, usage: u64) -> Sample {
        Sample {
            ts_ms,
            cgroup_id: 1,
            usage_bytes: usage,
            anon_bytes: usage,
            file_bytes: 0,
            active_file_bytes: 0,
            inactive_file_bytes: 0,
            working_set_bytes: usage,
            kernel_bytes: 0,
            limit_bytes: None,
            held_bytes: None,
            oom_kills: None,
            top_file: None,
            top_file_bytes: None,
        }
    }

    #[test]
    fn growth_restarts_after_an_oom_kill_but_not_after_a_gc() {
        // Killed at 4 (256 -> 1): the fit starts over.
        let killed: Vec<Sample> = [10, 80, 160, 256, 1, 20, 40]
            .iter()
            .enumerate()
            .map(|(i, &u)| sample(i as u64, u))
            .collect();
        assert_eq!(since_last_reset(&killed).len(), 3);
        // A collector's sawtooth (falls by half) keeps every sample.
        let gc: Vec<Sample> = [100, 200, 100, 220, 110, 240]
            .iter()
            .enumerate()
            .map(|(i, &u)| sample(i as u64, u))
            .collect();
        assert_eq!(since_last_reset(&gc).len(), 6);
    }
}
