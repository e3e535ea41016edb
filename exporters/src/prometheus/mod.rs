//! The Prometheus exposition: cAdvisor-compatible series, so existing dashboards and alerts work
//! unchanged, `memlens_*` series for what only memlens knows (files and stacks behind each
//! cgroup's memory, open events, OOM kills and restarts), and the agent's own health.
//!
//! Built from the latest snapshot into a fresh registry (the series follow cgroups that come and
//! go); the few metrics that live across scrapes (API latency) are shared families registered into
//! each one. An exposition may be encoded in [`Part`]s joined at the scrape: the snapshot's series
//! once per snapshot, what changes between snapshots at each scrape.

mod classic;
mod labels;
mod parts;

use std::collections::BTreeMap;

pub use classic::classic_text;
pub use labels::{ApiLatency, CgroupLabels, Label, RouteLabels};
use labels::{EventLabels, FileLabels, KindLabels, NameLabels, StackLabels};
use memlens_types::{cgroups::CgroupRow, event::EventKind, files::CachedFile, leaks::CgroupStack};
pub use parts::{join, Part};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// The agent's own counters.
#[derive(Default)]
pub struct AgentFigures {
    /// Kernel programs' counters (events seen, drops), by name.
    pub kernel: BTreeMap<String, u64>,
    pub census_frames: u64,
    pub census_seconds: f64,
    pub stacks_in_use: u64,
    pub stack_entries: u64,
    pub file_pairs: u64,
    pub file_entries: u64,
    pub lifecycle_records: u64,
    pub lifecycle_capped: u64,
    pub engine_runs: u64,
    pub engine_failures: u64,
    pub symbolized: u64,
    pub symbol_cache_hits: u64,
    pub skipped_cgroups: u64,
    pub vanished_cgroups: u64,
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One scrape's registry.
pub struct Exposition {
    registry: Registry,
}

impl Exposition {
    #[must_use]
    pub fn new() -> Exposition {
        Exposition {
            registry: Registry::default(),
        }
    }

    /// cAdvisor's memory series for every cgroup, labelled by `labels`.
    pub fn cgroups(&mut self, rows: &[CgroupRow], labels: &dyn Fn(&CgroupRow) -> CgroupLabels) {
        let family = || Family::<CgroupLabels, Gauge>::default();
        let (usage, working_set, rss, cache, swap, kernel, limit) = (
            family(),
            family(),
            family(),
            family(),
            family(),
            family(),
            family(),
        );
        // cAdvisor's name has no `_total`, which prometheus-client gives every counter: a gauge
        // keeps the name dashboards use (`rate()` reads it all the same).
        let failcnt = Family::<CgroupLabels, Gauge>::default();
        let ooms = Family::<CgroupLabels, Counter>::default();
        let held = Family::<KindLabels, Gauge>::default();
        for row in rows {
            let l = labels(row);
            usage.get_or_create(&l).set(gauge(row.usage_bytes));
            working_set
                .get_or_create(&l)
                .set(gauge(row.working_set_bytes));
            rss.get_or_create(&l).set(gauge(row.anon_bytes));
            cache.get_or_create(&l).set(gauge(row.file_bytes));
            kernel.get_or_create(&l).set(gauge(row.kernel_bytes));
            // cAdvisor reports 0 for "no limit".
            limit
                .get_or_create(&l)
                .set(gauge(row.limit_bytes.unwrap_or(0)));
            if let Some(s) = row.swap_bytes {
                swap.get_or_create(&l).set(gauge(s));
            }
            if let Some(n) = row.limit_hits {
                failcnt.get_or_create(&l).set(gauge(n));
            }
            if let Some(n) = row.oom_kills {
                ooms.get_or_create(&l).inc_by(n);
            }
            if let Some(h) = &row.held {
                for (kind, bytes) in [
                    ("anon", h.anon_bytes),
                    ("file", h.file_bytes),
                    ("kernel", h.kernel_bytes),
                ] {
                    held.get_or_create(&KindLabels {
                        id: row.path.as_str().into(),
                        kind: kind.into(),
                    })
                    .set(gauge(bytes));
                }
            }
        }
        let r = &mut self.registry;
        r.register(
            "container_memory_usage_bytes",
            "Current memory usage in bytes, including all memory regardless of when it was accessed",
            usage,
        );
        r.register(
            "container_memory_working_set_bytes",
            "Current working set in bytes (usage minus inactive file cache)",
            working_set,
        );
        r.register(
            "container_memory_rss",
            "Size of RSS (anonymous memory) in bytes",
            rss,
        );
        r.register(
            "container_memory_cache",
            "Number of bytes of page cache memory",
            cache,
        );
        r.register(
            "container_memory_swap",
            "Container swap usage in bytes",
            swap,
        );
        r.register(
            "container_memory_kernel_usage",
            "Size of kernel memory allocated in bytes",
            kernel,
        );
        r.register(
            "container_spec_memory_limit_bytes",
            "Memory limit for the container (0: none)",
            limit,
        );
        r.register(
            "container_memory_failcnt",
            "Number of memory usage hits limits",
            failcnt,
        );
        r.register(
            "container_oom_events",
            "Count of out of memory events observed for the container",
            ooms,
        );
        r.register(
            "memlens_held_bytes",
            "Memory held by the cgroup as estimated by memlens' page sampling, by page kind",
            held,
        );
    }

    /// The files with the most page cache per cgroup: (cgroup path, file); the caller bounds
    /// how many per cgroup.
    pub fn files(&mut self, files: &[(&str, &CachedFile)]) {
        let family = Family::<FileLabels, Gauge>::default();
        for (path, file) in files {
            family
                .get_or_create(&FileLabels {
                    id: (*path).into(),
                    file: file.display().into(),
                })
                .set(gauge(file.bytes));
        }
        self.registry.register(
            "memlens_file_cache_bytes",
            "Page cache charged to the cgroup for one of its largest files",
            family,
        );
    }

    /// Held bytes of the largest stacks per cgroup.
    pub fn stacks(&mut self, stacks: &[CgroupStack]) {
        let family = Family::<StackLabels, Gauge>::default();
        for s in stacks {
            family
                .get_or_create(&StackLabels {
                    id: s.cgroup.as_str().into(),
                    stack: s.stack.as_str().into(),
                })
                .inc_by(gauge(s.bytes));
        }
        self.registry.register(
            "memlens_stack_held_bytes",
            "Memory held in the cgroup by one of its largest allocating stacks (innermost functions)",
            family,
        );
    }

    /// Open events by kind.
    pub fn events(&mut self, open: &BTreeMap<EventKind, u64>) {
        let family = Family::<EventLabels, Gauge>::default();
        for (kind, n) in open {
            family
                .get_or_create(&EventLabels {
                    kind: kind.as_str().into(),
                })
                .set(gauge(*n));
        }
        self.registry
            .register("memlens_events_open", "Open events by kind", family);
    }

    /// OOM kills and restarts seen by the lifecycle probes since the agent started, per cgroup.
    pub fn lifecycle(
        &mut self,
        counts: &BTreeMap<String, (u64, u64)>,
        labels: &dyn Fn(&str) -> CgroupLabels,
    ) {
        let ooms = Family::<CgroupLabels, Counter>::default();
        let restarts = Family::<CgroupLabels, Counter>::default();
        for (path, (oom, restart)) in counts {
            let l = labels(path);
            ooms.get_or_create(&l).inc_by(*oom);
            restarts.get_or_create(&l).inc_by(*restart);
        }
        self.registry.register(
            "memlens_oom_kills",
            "OOM kills seen from the kernel's OOM events (victims) since the agent started",
            ooms,
        );
        self.registry.register(
            "memlens_restarts",
            "Abnormal ends of cgroups' main processes (OOM kills included) since the agent started",
            restarts,
        );
    }

    /// The agent's own figures.
    pub fn agent(&mut self, a: &AgentFigures, latency: &ApiLatency) {
        let kernel = Family::<NameLabels, Counter>::default();
        for (name, n) in &a.kernel {
            kernel
                .get_or_create(&NameLabels {
                    name: name.as_str().into(),
                })
                .inc_by(*n);
        }
        let r = &mut self.registry;
        r.register(
            "memlens_kernel_events",
            "Kernel programs' counters (events seen, samples taken, drops), by name",
            kernel,
        );
        let g = |v: u64| {
            let m = Gauge::<i64>::default();
            m.set(gauge(v));
            m
        };
        let c = |v: u64| {
            let m = Counter::<u64>::default();
            m.inc_by(v);
            m
        };
        let seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        seconds.set(a.census_seconds);
        r.register(
            "memlens_census_duration_seconds",
            "How long the last page census took",
            seconds,
        );
        r.register(
            "memlens_census_frames",
            "Sampled page frames in the last census",
            g(a.census_frames),
        );
        r.register(
            "memlens_stack_map_entries",
            "Stacks in the kernel's stack map",
            g(a.stacks_in_use),
        );
        r.register(
            "memlens_stack_map_capacity",
            "Capacity of the kernel's stack map",
            g(a.stack_entries),
        );
        r.register(
            "memlens_file_map_entries",
            "(cgroup, file) pairs in the kernel's page-cache map",
            g(a.file_pairs),
        );
        r.register(
            "memlens_file_map_capacity",
            "Capacity of the kernel's page-cache map",
            g(a.file_entries),
        );
        r.register(
            "memlens_lifecycle_records",
            "Lifecycle records written (exits, OOM kills, cgroup changes)",
            c(a.lifecycle_records),
        );
        r.register(
            "memlens_lifecycle_dropped",
            "Lifecycle records dropped by the history's row cap",
            c(a.lifecycle_capped),
        );
        r.register("memlens_engine_runs", "Event engine runs", c(a.engine_runs));
        r.register(
            "memlens_engine_failures",
            "Event engine runs that failed",
            c(a.engine_failures),
        );
        r.register(
            "memlens_symbolized_stacks",
            "Stacks symbolized",
            c(a.symbolized),
        );
        r.register(
            "memlens_symbol_cache_hits",
            "Symbol lookups answered from the cache",
            c(a.symbol_cache_hits),
        );
        r.register(
            "memlens_cgroups_skipped",
            "Cgroups beyond the discovery cap in the last refresh",
            g(a.skipped_cgroups),
        );
        r.register(
            "memlens_cgroups_vanished",
            "Cgroups that vanished while being read in the last refresh",
            g(a.vanished_cgroups),
        );
        r.register(
            "memlens_api_request_duration_seconds",
            "API request latency by route",
            latency.0.clone(),
        );
    }

    /// The text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Default for Exposition {
    fn default() -> Exposition {
        Exposition::new()
    }
}

#[cfg(test)]
mod tests {
    use memlens_types::{MemcgId, Workload};

    use super::*;

    fn row(path: &str) -> CgroupRow {
        CgroupRow {
            id: MemcgId(7),
            path: path.into(),
            name: path.into(),
            workload: Workload::Cgroup,
            pod: None,
            usage_bytes: 300 << 20,
            anon_bytes: 200 << 20,
            file_bytes: 100 << 20,
            active_file_bytes: 10 << 20,
            inactive_file_bytes: 90 << 20,
            kernel_bytes: 1 << 20,
            working_set_bytes: 210 << 20,
            shmem_bytes: 0,
            file_dirty_bytes: 0,
            file_writeback_bytes: 0,
            swap_bytes: None,
            limit_bytes: Some(512 << 20),
            oom_kills: Some(2),
            limit_hits: Some(5),
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

    #[test]
    fn cadvisor_series_carry_cadvisors_names_and_labels() {
        let rows = [row("/kubepods/pod1/c1")];
        let mut exposition = Exposition::new();
        exposition.cgroups(&rows, &|r| CgroupLabels {
            id: r.path.as_str().into(),
            namespace: "shop".into(),
            pod: "web-0".into(),
            container: "app".into(),
        });
        exposition.events(&BTreeMap::from([(EventKind::LeakSuspected, 1)]));
        exposition.agent(&AgentFigures::default(), &ApiLatency::default());
        let text = exposition.encode().unwrap();
        assert!(text.contains(
            "container_memory_working_set_bytes{id=\"/kubepods/pod1/c1\",namespace=\"shop\",pod=\"web-0\",container=\"app\"} 220200960"
        ), "{text}");
        assert!(text.contains("container_oom_events_total{"), "{text}");
        assert!(
            text.contains("container_memory_failcnt{id=\"/kubepods/pod1/c1\"")
                && !text.contains("failcnt_total"),
            "cAdvisor's name: {text}"
        );
        assert!(
            text.contains("memlens_events_open{kind=\"leak_suspected\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = classic_text(&text);
        assert!(
            classic.contains("# TYPE container_oom_events_total counter\n"),
            "{classic}"
        );
        assert!(
            classic.contains("# HELP container_oom_events_total Count"),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE container_memory_usage_bytes gauge\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }

    #[test]
    fn hostile_names_are_escaped_not_obeyed() {
        let hostile = "/tmp/a\"b}\nc{x=\"1\"} 99\n# HELP fake\\";
        let file = CachedFile {
            path: Some(hostile.into()),
            deleted: false,
            dev: "254:0".into(),
            ino: 1,
            mount: None,
            bytes: 4096,
        };
        let mut exposition = Exposition::new();
        exposition.files(&[("/a", &file)]);
        let text = exposition.encode().unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("memlens_file_cache_bytes{"))
            .expect("the file's sample");
        assert_eq!(
            line,
            "memlens_file_cache_bytes{id=\"/a\",file=\"/tmp/a\\\"b}\\nc{x=\\\"1\\\"} 99\\n# HELP fake\\\\\"} 4096"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("c{") || l == "# HELP fake"),
            "{text}"
        );
    }
}
