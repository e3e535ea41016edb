//! What one cgroup's recent memory says: growth heading for its limit (a leak, or page cache
//! in the working set), reclaim that cannot keep up, or growth that raises nothing, and why.
//!
//! Usage alone misleads: page cache the kernel reclaims on demand grows until something needs
//! the memory, and a cache or heap warming up grows until it levels off. So the forecast
//! follows the memory reclaim cannot simply drop, against the limit that applies:
//! - under a cgroup's own or an ancestor's limit, the working set (usage minus inactive page
//!   cache, as kubelet computes it);
//! - under the node's memory alone, the working set minus active page cache too (anonymous
//!   memory, shmem and tmpfs, kernel memory): the node's reclaim takes any page cache first.
//!
//! A forecast is not extended further ahead than [`MAX_EXTRAPOLATION`] times the history it
//! stands on, at the slower of the window's rate and its last third's (a series slowing down is
//! not forecast at its early pace), and a series whose last third grew at less than
//! [`LEVELLING_SHARE`] of the window's rate is levelling off. The kernel's reclaim counters over the window go into the
//! evidence; page cache read back in soon after eviction (refaults) at the limit is thrashing,
//! file-cache pressure even without growth.

use std::collections::HashMap;

use memlens_types::{
    cgroups::CgroupRow,
    event::EventKind,
    evidence::{GrowthEvidence, GrowthMeasure, LimitSource, ReclaimSignals},
    history::Sample,
    Bytes,
};

use crate::{
    allowance::Allowed,
    trend::{theil_sen, Fit},
    Context,
};

/// Most samples read per cgroup (evenly thinned beyond).
const MAX_POINTS: usize = 2000;
/// Points of the series kept in the evidence, for the chart.
const SERIES_POINTS: usize = 120;
/// A forecast reaches at most this many times the span of the samples it is fitted on: ten
/// minutes of growth say little about the next two hours, and a cache warming up grows like a
/// leak for a while. (At twice the span, a cache of random keys warming to 60% of its limit
/// was forecast past 90% of it.)
pub const MAX_EXTRAPOLATION: f64 = 1.0;
/// A series whose last third grows at less than this share of the whole window's rate is
/// levelling off (a cache or heap settling at its size), not leaking.
pub const LEVELLING_SHARE: f64 = 0.25;

/// What a cgroup's samples concluded.
pub(crate) enum Verdict {
    /// Heading for the limit, or thrashing: an event, once the evidence is gathered.
    Raise {
        kind: EventKind,
        slope_per_s: f64,
        /// For reclaim that cannot keep up, rather than for growth.
        thrashing: bool,
        evidence: Box<GrowthEvidence>,
    },
    /// Growth that raises nothing, and why.
    HeldBack {
        kind: EventKind,
        growth_bytes_per_hour: f64,
        reason: String,
    },
    /// Nothing worth a word.
    Quiet,
}

/// The measure a sample gives.
fn measured(measure: GrowthMeasure, s: &Sample) -> u64 {
    let working_set = s.usage_bytes.saturating_sub(s.inactive_file_bytes);
    match measure {
        GrowthMeasure::Usage => s.usage_bytes,
        GrowthMeasure::WorkingSet => working_set,
        GrowthMeasure::Unreclaimable => working_set.saturating_sub(s.active_file_bytes),
    }
}

/// The page cache a sample's measure holds: all of it for usage, active file and shmem for the
/// working set, shmem (tmpfs) alone for what reclaim cannot drop.
fn file_part(measure: GrowthMeasure, s: &Sample) -> u64 {
    let in_working_set = s.file_bytes.saturating_sub(s.inactive_file_bytes);
    match measure {
        GrowthMeasure::Usage => s.file_bytes,
        GrowthMeasure::WorkingSet => in_working_set,
        GrowthMeasure::Unreclaimable => in_working_set.saturating_sub(s.active_file_bytes),
    }
}

fn fit(samples: &[Sample], t0: u64, value: impl Fn(&Sample) -> u64) -> Option<Fit> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.ts_ms.saturating_sub(t0) as f64 / 1000.0, value(s) as f64))
        .collect();
    theil_sen(&points)
}

/// How much a counter rose over `samples` (None when no sample has it).
fn rise(samples: &[Sample], counter: impl Fn(&Sample) -> Option<u64>) -> Option<u64> {
    let mut values = samples.iter().filter_map(counter);
    let first = values.next()?;
    Some(values.next_back().unwrap_or(first).saturating_sub(first))
}

fn reclaim_signals(samples: &[Sample]) -> ReclaimSignals {
    ReclaimSignals {
        limit_hits: rise(samples, |s| s.limit_hits),
        high_events: rise(samples, |s| s.high_events),
        oom_kills: rise(samples, |s| s.oom_kills),
        refaulted_bytes: rise(samples, |s| s.refaulted_bytes),
    }
}

fn per_hour(bytes: f64) -> String {
    format!("{}/h", Bytes(bytes.max(0.0) as u64))
}

/// The limit a cgroup runs into: the smallest of its own and its ancestors', else the node's.
pub(crate) fn effective_limit(cx: &Context<'_>, row: &CgroupRow) -> (u64, LimitSource) {
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

/// Judges the cgroup of `row` from its samples; `allowed` is the allowance it matched.
pub(crate) fn assess(cx: &Context<'_>, row: &CgroupRow, allowed: Option<&Allowed>) -> Verdict {
    let leak = &cx.config.leak;
    let since = cx
        .now_ms
        .saturating_sub(u64::try_from(leak.lookback.as_millis()).unwrap_or(u64::MAX));
    let samples = match cx.sources.series(&row.path, since, MAX_POINTS) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("leak detector: no history for {}: {e}", row.path);
            return Verdict::Quiet;
        }
    };
    let samples = since_last_reset(&samples);
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return Verdict::Quiet;
    };
    if samples.len() < leak.min_samples {
        return Verdict::Quiet;
    }
    let (limit, limit_source) = effective_limit(cx, row);
    let measure = match limit_source {
        LimitSource::Host => GrowthMeasure::Unreclaimable,
        _ => GrowthMeasure::WorkingSet,
    };
    let t0 = first.ts_ms;
    let Some(trend) = fit(samples, t0, |s| measured(measure, s)) else {
        return Verdict::Quiet;
    };
    let reclaim = reclaim_signals(samples);
    let threshold = limit as f64 * leak.threshold;
    let now = cx.now_ms.saturating_sub(t0) as f64 / 1000.0;
    let span = last.ts_ms.saturating_sub(t0) as f64 / 1000.0;
    // The growth split into anon and page cache, and what kind of event it makes: fitted only
    // for cgroups that get this far (most do not grow).
    let split = std::cell::OnceCell::new();
    let parts = || {
        *split.get_or_init(|| {
            (
                fit(samples, t0, |s| s.anon_bytes).map_or(0.0, |f| f.slope_per_hour()),
                fit(samples, t0, |s| file_part(measure, s)).map_or(0.0, |f| f.slope_per_hour()),
            )
        })
    };
    let kind = || {
        let (anon, file) = parts();
        if anon >= file {
            EventKind::LeakSuspected
        } else {
            EventKind::FileCachePressure
        }
    };
    // The last third of the window: a series levelling off grows far slower there.
    let recent_from = last.ts_ms.saturating_sub((span * 1000.0 / 3.0) as u64);
    let recent_at = samples.partition_point(|s| s.ts_ms < recent_from);
    let recent_fit = std::cell::OnceCell::new();
    let recent = || {
        *recent_fit.get_or_init(|| {
            fit(&samples[recent_at..], t0, |s| measured(measure, s))
                .map_or(trend.slope_per_hour(), |f| f.slope_per_hour())
        })
    };
    // The pace a forecast goes on at: the slower of the window's and its last third's.
    let forecast_at =
        |reach: f64| trend.value_at(now) + trend.slope_per_s.min(recent() / 3600.0) * reach;
    let evidence = |reason: String, reach: f64| {
        let step = samples.len().div_ceil(SERIES_POINTS).max(1);
        let at = |reach: f64| {
            (
                t0 + ((now + reach) * 1000.0) as u64,
                forecast_at(reach).max(0.0) as u64,
            )
        };
        Box::new(GrowthEvidence {
            cgroup: row.path.clone(),
            evaluated_at_unix_ms: cx.now_ms,
            lookback_seconds: leak.lookback.as_secs_f64(),
            horizon_seconds: leak.horizon.as_secs_f64(),
            samples: samples.len(),
            usage_bytes: last.usage_bytes,
            limit_bytes: limit,
            limit_source: limit_source.clone(),
            threshold_bytes: threshold as u64,
            reason,
            measure,
            measured_bytes: measured(measure, last),
            growth_bytes_per_hour: trend.slope_per_hour(),
            recent_growth_bytes_per_hour: recent(),
            anon_growth_bytes_per_hour: parts().0,
            file_growth_bytes_per_hour: parts().1,
            rising_share: trend.rising_share,
            reclaim: reclaim.clone(),
            allowance: allowed.map(|a| a.description.clone()),
            forecast_bytes: forecast_at(reach).max(0.0) as u64,
            time_to_threshold_seconds: trend.time_to_reach(threshold, now),
            time_to_limit_seconds: trend.time_to_reach(limit as f64, now),
            series: samples
                .iter()
                .step_by(step)
                .chain(std::iter::once(last))
                .map(|s| (s.ts_ms, measured(measure, s)))
                .collect(),
            forecast: [at(0.0), at(reach)],
            top_processes: Vec::new(),
            top_stacks: Vec::new(),
            allocation_stacks: Vec::new(),
            allocation_trace_hint: None,
            top_files: Vec::new(),
        })
    };

    // Thrashing: at its threshold, the cgroup reads page cache back in about as fast as reclaim
    // evicts it. No growth is needed for that to hurt.
    let refaults_per_hour = reclaim
        .refaulted_bytes
        .filter(|_| span > 0.0)
        .map_or(0.0, |b| b as f64 * 3600.0 / span);
    let thrash_level = cx.config.file_cache.refaults_per_hour * limit as f64;
    if limit_source != LimitSource::Host
        && thrash_level > 0.0
        && refaults_per_hour >= thrash_level
        && last.usage_bytes as f64 >= threshold
    {
        let reason = format!(
            "reclaim cannot keep up: {} of page cache read back in soon after eviction over the \
             last {:.0} s ({}), with usage at {:.0}% of the limit",
            Bytes(reclaim.refaulted_bytes.unwrap_or(0)),
            span,
            per_hour(refaults_per_hour),
            last.usage_bytes as f64 * 100.0 / limit as f64
        );
        return Verdict::Raise {
            kind: EventKind::FileCachePressure,
            slope_per_s: trend.slope_per_s.max(0.0),
            thrashing: true,
            evidence: evidence(reason, leak.horizon.as_secs_f64()),
        };
    }

    let reach = leak.horizon.as_secs_f64().min(MAX_EXTRAPOLATION * span);
    let growing = trend.slope_per_hour() >= leak.min_growth_bytes_per_hour as f64;
    let forecast = if growing {
        forecast_at(reach)
    } else {
        trend.value_at(now)
    };
    if !growing || forecast < threshold {
        // Usage alone would have crossed: say why that is no event.
        let usage_forecast =
            fit(samples, t0, |s| s.usage_bytes).map_or(0.0, |f| f.value_at(now + reach));
        if usage_forecast < threshold {
            return Verdict::Quiet;
        }
        return Verdict::HeldBack {
            kind: kind(),
            growth_bytes_per_hour: trend.slope_per_hour(),
            reason: format!(
                "usage is forecast to reach {} of the {} {} within {}, but the growth is page \
                 cache the kernel reclaims on demand: the {measure} ({}) stays below it",
                Bytes(usage_forecast.max(0.0) as u64),
                Bytes(limit),
                limit_name(&limit_source),
                humantime::format_duration(std::time::Duration::from_secs(reach as u64)),
                Bytes(forecast.max(0.0) as u64),
            ),
        };
    }
    let recent = recent();
    if recent < LEVELLING_SHARE * trend.slope_per_hour() {
        return Verdict::HeldBack {
            kind: kind(),
            growth_bytes_per_hour: trend.slope_per_hour(),
            reason: format!(
                "levelling off: the {measure} grew {} over the last third of the window against \
                 {} over all of it",
                per_hour(recent),
                per_hour(trend.slope_per_hour())
            ),
        };
    }
    let current = measured(measure, last);
    if let Some(allowed) = allowed.filter(|a| current <= a.up_to_bytes) {
        if forecast.min(allowed.up_to_bytes as f64) < threshold {
            return Verdict::HeldBack {
                kind: kind(),
                growth_bytes_per_hour: trend.slope_per_hour(),
                reason: format!(
                    "within its allowance ({}): the {measure} is {}",
                    allowed.description,
                    Bytes(current)
                ),
            };
        }
    }
    let kind = kind();
    let what = match kind {
        EventKind::LeakSuspected => "anonymous memory",
        _ => "page cache the kernel cannot reclaim",
    };
    let reason = format!(
        "the {measure} grows {} ({what} most of it) and is forecast to cross {:.0}% of the {} {} \
         ({}) within {}",
        per_hour(trend.slope_per_hour()),
        leak.threshold * 100.0,
        Bytes(limit),
        limit_name(&limit_source),
        Bytes(threshold as u64),
        humantime::format_duration(std::time::Duration::from_secs(reach as u64)),
    );
    let mut evidence = evidence(reason, reach);
    if let Some(allowed) = allowed {
        evidence
            .reason
            .push_str(&format!("; beyond its allowance ({})", allowed.description));
    }
    Verdict::Raise {
        kind,
        slope_per_s: trend.slope_per_s,
        thrashing: false,
        evidence,
    }
}

fn limit_name(source: &LimitSource) -> String {
    match source {
        LimitSource::Cgroup => "cgroup's limit".into(),
        LimitSource::Ancestor(path) => format!("limit of {path}"),
        LimitSource::Host => "node's memory".into(),
    }
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
mod tests;
