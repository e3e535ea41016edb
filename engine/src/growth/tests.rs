//! The detector's judgement on series shaped like the workloads of the integration suites
//! (warming caches, settling heaps, logs with and without limits, tmpfs, thrashing).

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
fn judge(config: &Config, limit: Option<u64>, seconds: u64, held: impl Fn(f64) -> Held) -> Verdict {
    judge_allowed(config, limit, seconds, held, None)
}

/// [`judge`] for a cgroup that matched the allowance `allowed`.
fn judge_allowed(
    config: &Config,
    limit: Option<u64>,
    seconds: u64,
    held: impl Fn(f64) -> Held,
    allowed: Option<&Allowed>,
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
    assess(&cx, &rows[0], allowed)
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
    let limit = Some(256 * MIB);
    let within = judge_allowed(&config(), limit, 120, grow, Some(&allowed));
    let reason = held_back(&within);
    assert!(
        reason.is_some_and(|r| r.contains("within its allowance")),
        "{reason:?}"
    );
    // Without it, the same growth is a leak.
    assert!(raised(&judge(&config(), limit, 120, grow)).is_some());
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
