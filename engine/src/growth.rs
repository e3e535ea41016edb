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
    let anon = fit(samples, t0, |s| s.anon_bytes).map_or(0.0, |f| f.slope_per_hour());
    let file = fit(samples, t0, |s| file_part(measure, s)).map_or(0.0, |f| f.slope_per_hour());
    let kind = if anon >= file {
        EventKind::LeakSuspected
    } else {
        EventKind::FileCachePressure
    };
    // The last third of the window: a series levelling off grows far slower there.
    let recent_from = last.ts_ms.saturating_sub((span * 1000.0 / 3.0) as u64);
    let recent_at = samples.partition_point(|s| s.ts_ms < recent_from);
    let recent = fit(&samples[recent_at..], t0, |s| measured(measure, s))
        .map_or(trend.slope_per_hour(), |f| f.slope_per_hour());
    // The pace a forecast goes on at: the slower of the window's and its last third's.
    let pace = trend.slope_per_s.min(recent / 3600.0);
    let forecast_at = |reach: f64| trend.value_at(now) + pace * reach;
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
            recent_growth_bytes_per_hour: recent,
            anon_growth_bytes_per_hour: anon,
            file_growth_bytes_per_hour: file,
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
    let forecast = forecast_at(reach);
    if trend.slope_per_hour() < leak.min_growth_bytes_per_hour as f64 || forecast < threshold {
        // Usage alone would have crossed: say why that is no event.
        let usage_forecast =
            fit(samples, t0, |s| s.usage_bytes).map_or(0.0, |f| f.value_at(now + reach));
        if usage_forecast < threshold {
            return Verdict::Quiet;
        }
        return Verdict::HeldBack {
            kind,
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
    if recent < LEVELLING_SHARE * trend.slope_per_hour() {
        return Verdict::HeldBack {
            kind,
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
                kind,
                growth_bytes_per_hour: trend.slope_per_hour(),
                reason: format!(
                    "within its allowance ({}): the {measure} is {}",
                    allowed.description,
                    Bytes(current)
                ),
            };
        }
    }
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
mod tests {
    use std::time::Duration;

    use memlens_types::{
        allocations::AllocationEntry, evidence::ProcessMemory, files::CachedFile, leaks::LeakEntry,
        lifecycle::LifecycleRecord, pod::PodMeta, MemcgId, Workload,
    };

    use super::*;
    use crate::{Config, SourceError, Sources};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    /// This machine's memory (24 GiB).
    const MEM_TOTAL: u64 = 24 * GIB;

    /// One cgroup's samples, one a second, ending now.
    struct Series(Vec<Sample>);

    impl Sources for Series {
        fn series(&self, _: &str, since_ms: u64, _: usize) -> Result<Vec<Sample>, SourceError> {
            Ok(self
                .0
                .iter()
                .filter(|s| s.ts_ms >= since_ms)
                .cloned()
                .collect())
        }
        fn lifecycle(&self, _: u64, _: usize) -> Result<Vec<LifecycleRecord>, SourceError> {
            Ok(Vec::new())
        }
        fn growing_stacks(&self, _: &str, _: Duration, _: usize) -> Vec<LeakEntry> {
            Vec::new()
        }
        fn allocation_stacks(&self, _: &str, _: usize) -> Vec<AllocationEntry> {
            Vec::new()
        }
        fn allocation_trace(
            &self,
            _: &str,
            _: usize,
            _: Duration,
            _: f64,
        ) -> (Vec<AllocationEntry>, String) {
            (Vec::new(), String::new())
        }
        fn top_files(&self, _: MemcgId, _: usize) -> Vec<CachedFile> {
            Vec::new()
        }
        fn top_processes(&self, _: &str, _: usize) -> Vec<ProcessMemory> {
            Vec::new()
        }
        fn pod(&self, _: &str, _: Option<&str>) -> Option<PodMeta> {
            None
        }
    }

    /// What a cgroup holds at one instant.
    #[derive(Clone, Copy, Default)]
    struct Held {
        anon: u64,
        inactive_file: u64,
        active_file: u64,
        shmem: u64,
        refaulted: u64,
    }

    fn sample(ts_ms: u64, h: Held, limit: Option<u64>) -> Sample {
        let file = h.inactive_file + h.active_file + h.shmem;
        let usage = h.anon + file + 2 * MIB;
        Sample {
            ts_ms,
            cgroup_id: 1,
            usage_bytes: usage,
            anon_bytes: h.anon,
            file_bytes: file,
            active_file_bytes: h.active_file,
            inactive_file_bytes: h.inactive_file,
            working_set_bytes: usage - h.inactive_file,
            kernel_bytes: 2 * MIB,
            limit_bytes: limit,
            held_bytes: None,
            oom_kills: Some(0),
            top_file: None,
            top_file_bytes: None,
            limit_hits: Some(0),
            high_events: None,
            refaulted_bytes: Some(h.refaulted),
        }
    }

    fn row(limit: Option<u64>) -> CgroupRow {
        let s = sample(0, Held::default(), limit);
        CgroupRow {
            id: MemcgId(1),
            path: "/memlens-test/workload".into(),
            name: "workload".into(),
            workload: Workload::Cgroup,
            pod: None,
            usage_bytes: s.usage_bytes,
            anon_bytes: 0,
            file_bytes: 0,
            active_file_bytes: 0,
            inactive_file_bytes: 0,
            kernel_bytes: s.kernel_bytes,
            working_set_bytes: s.usage_bytes,
            shmem_bytes: 0,
            file_dirty_bytes: 0,
            file_writeback_bytes: 0,
            swap_bytes: None,
            limit_bytes: limit,
            oom_kills: None,
            limit_hits: None,
            high_events: None,
            refaulted_bytes: None,
            slab_reclaimable_bytes: None,
            slab_unreclaimable_bytes: None,
            sock_bytes: None,
            held: None,
            file_attributed_bytes: None,
            top_file: None,
        }
    }

    /// The test suite's windows: a 3-minute lookback, a 5-minute horizon.
    fn config() -> Config {
        Config::parse(
            "[leak]\ninterval = \"2s\"\nlookback = \"3m\"\nhorizon = \"5m\"\n",
            None,
        )
        .expect("config")
    }

    /// Judges `seconds` of one-a-second samples of `held(t)` under `limit`, at the last one.
    fn judge(
        config: &Config,
        limit: Option<u64>,
        seconds: u64,
        held: impl Fn(f64) -> Held,
    ) -> Verdict {
        let series = Series(
            (0..=seconds)
                .map(|t| sample(t * 1000, held(t as f64), limit))
                .collect(),
        );
        let rows = [row(limit)];
        let cx = Context {
            now_ms: seconds * 1000,
            rows: &rows,
            config,
            host: "node",
            mem_total: MEM_TOTAL,
            sources: &series,
        };
        assess(&cx, &rows[0], None)
    }

    fn raised(v: &Verdict) -> Option<(EventKind, &GrowthEvidence)> {
        match v {
            Verdict::Raise { kind, evidence, .. } => Some((*kind, evidence)),
            _ => None,
        }
    }

    fn held_back(v: &Verdict) -> Option<&str> {
        match v {
            Verdict::HeldBack { reason, .. } => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_steady_anon_leak_is_forecast_to_its_limit() {
        // 2 MiB/s into 256 MiB, 60 s in: 120 MiB held, 68 s to go.
        let v = judge(&config(), Some(256 * MIB), 60, |t| Held {
            anon: (t * 2.0) as u64 * MIB,
            ..Held::default()
        });
        let (kind, e) = raised(&v).expect("raised");
        assert_eq!(kind, EventKind::LeakSuspected);
        assert_eq!(e.measure, GrowthMeasure::WorkingSet);
        let to_limit = e.time_to_limit_seconds.expect("time to limit");
        assert!((to_limit - 67.0).abs() < 2.0, "{to_limit}");
    }

    #[test]
    fn a_log_with_no_limit_is_page_cache_the_node_reclaims() {
        // The finding: a log writer's inactive page cache, no limit, a horizon long enough for
        // usage to reach the node's memory. Usage would have raised file-cache pressure.
        let mut config = config();
        config.leak.horizon = Duration::from_hours(10);
        let v = judge(&config, None, 170, |t| Held {
            inactive_file: (t * 70.0) as u64 * MIB,
            ..Held::default()
        });
        let reason = held_back(&v).expect("held back");
        assert!(reason.contains("reclaims on demand"), "{reason}");
    }

    #[test]
    fn active_page_cache_counts_under_a_limit_but_not_against_the_node() {
        // A file read again and again: active page cache growing 1 MiB/s.
        let active = |t: f64| Held {
            active_file: (t * 1.0) as u64 * MIB,
            ..Held::default()
        };
        let limited = judge(&config(), Some(256 * MIB), 170, active);
        let (kind, e) = raised(&limited).expect("raised");
        assert_eq!(kind, EventKind::FileCachePressure);
        assert!(e.reason.contains("working set"), "{}", e.reason);
        let mut config = config();
        config.leak.horizon = Duration::from_hours(10);
        assert!(raised(&judge(&config, None, 170, active)).is_none());
    }

    #[test]
    fn tmpfs_growth_against_the_node_is_page_cache_reclaim_cannot_drop() {
        let mut config = config();
        config.leak.horizon = Duration::from_hours(10);
        // 100 MiB/s into /dev/shm for 170 s: 16.6 GiB, the node's 90% within 6 min.
        let v = judge(&config, None, 170, |t| Held {
            shmem: (t * 100.0) as u64 * MIB,
            ..Held::default()
        });
        let (kind, e) = raised(&v).expect("raised");
        assert_eq!(
            (kind, e.measure),
            (EventKind::FileCachePressure, GrowthMeasure::Unreclaimable)
        );
    }

    #[test]
    fn a_cache_warming_to_a_plateau_is_levelling_off() {
        // Filled like a cache of random keys: misses fall as it fills, to 200 MiB of 256.
        let v = judge(&config(), Some(256 * MIB), 170, |t| Held {
            anon: (200.0 * (1.0 - (-t / 30.0).exp())) as u64 * MIB,
            ..Held::default()
        });
        assert!(raised(&v).is_none());
    }

    #[test]
    fn a_heap_that_grows_then_settles_is_levelling_off() {
        // Grows 2 MiB/s for 100 s, then its collector holds it at 200 MiB, with a sawtooth.
        let v = judge(&config(), Some(256 * MIB), 170, |t| Held {
            anon: (t.min(100.0) * 2.0 + (t % 10.0)) as u64 * MIB,
            ..Held::default()
        });
        let reason = held_back(&v).expect("held back");
        assert!(reason.starts_with("levelling off"), "{reason}");
    }

    #[test]
    fn an_allowance_holds_growth_back_up_to_its_size() {
        let allowed = Allowed {
            up_to_bytes: 200 * MIB,
            description: "leak.allow[0]: growth up to 200.0 MiB".into(),
        };
        let grow = |t: f64| Held {
            anon: (t * 1.0) as u64 * MIB,
            ..Held::default()
        };
        let config = config();
        let series = Series(
            (0..=120)
                .map(|t| sample(t * 1000, grow(t as f64), Some(256 * MIB)))
                .collect(),
        );
        let rows = [row(Some(256 * MIB))];
        let cx = Context {
            now_ms: 120_000,
            rows: &rows,
            config: &config,
            host: "node",
            mem_total: MEM_TOTAL,
            sources: &series,
        };
        let reason = held_back(&assess(&cx, &rows[0], Some(&allowed))).map(str::to_string);
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("within its allowance")),
            "{reason:?}"
        );
        // Without it, the same growth is a leak.
        assert!(raised(&assess(&cx, &rows[0], None)).is_some());
    }

    #[test]
    fn reclaim_that_cannot_keep_up_is_file_cache_pressure_without_growth() {
        // At its 64 MiB limit, reading a 96 MiB file again and again: 30 MiB refaulted a second.
        let v = judge(&config(), Some(64 * MIB), 120, |t| Held {
            anon: 4 * MIB,
            inactive_file: 28 * MIB,
            active_file: 28 * MIB,
            refaulted: (t * 30.0) as u64 * MIB,
            ..Held::default()
        });
        let (kind, e) = raised(&v).expect("raised");
        assert_eq!(kind, EventKind::FileCachePressure);
        assert!(
            e.reason.starts_with("reclaim cannot keep up"),
            "{}",
            e.reason
        );
        assert_eq!(e.reclaim.refaulted_bytes, Some(3600 * MIB));
    }

    #[test]
    fn growth_restarts_after_an_oom_kill_but_not_after_a_gc() {
        let at = |usage: &[u64]| -> Vec<Sample> {
            usage
                .iter()
                .enumerate()
                .map(|(i, &u)| Sample {
                    usage_bytes: u,
                    ..sample(i as u64, Held::default(), None)
                })
                .collect()
        };
        // Killed at 4 (256 -> 1): the fit starts over.
        let killed = at(&[10, 80, 160, 256, 1, 20, 40]);
        assert_eq!(since_last_reset(&killed).len(), 3);
        // A collector's sawtooth (falls by half) keeps every sample.
        let gc = at(&[100, 200, 100, 220, 110, 240]);
        assert_eq!(since_last_reset(&gc).len(), 6);
    }
}
