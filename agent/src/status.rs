//! What `memlens status` reports: one line per capability, from how the probes were loaded and
//! what the latest refresh saw.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use memlens_attribution::{query::LeakSources, View};
use memlens_cgroup::CgroupLayout;
use memlens_common::counters::Counter;
use memlens_kernel::{
    collectors::lifecycle::LifecycleStats,
    loader::{pinning::PinReport, KernelCounters, LoadReport},
};
use memlens_model::python::PythonFrames;
use memlens_pods::PodDirectory;
use memlens_runtimes::python::PythonStats;
use memlens_types::{
    status::{Capability, CapabilityState, StatusResponse},
    Bytes,
};
use memlens_unwind::UnwindStats;

use crate::{traces::Traces, workers::engine::EngineStats};

/// The fixed facts, the live counters, and the clock of the agent's start.
pub struct StatusSource {
    pub report: LoadReport,
    pub counters: Arc<KernelCounters>,
    pub layout: CgroupLayout,
    pub census_unavailable: Option<String>,
    pub lifecycle: Arc<LifecycleStats>,
    pub engine: Arc<EngineStats>,
    /// The unwinder's work, when stacks are copied.
    pub unwind: Option<Arc<UnwindStats>>,
    /// The Python frames' reader's work (with the unwinder's), and the table of frames.
    pub python: (Arc<PythonStats>, Arc<PythonFrames>),
    /// What the engine runs when.
    pub schedule: String,
    pub pods: PodDirectory,
    pub leaks: LeakSources,
    pub traces: Arc<Traces>,
    pub started_at_unix_ms: u64,
    /// User stacks the previous agent unwound, put back at start.
    pub restored_stacks: usize,
    /// `--refresh`, `--cpu-budget`, and the refresh's current cycle in ms.
    pub refresh: (Duration, f64, Arc<AtomicU64>),
}

impl StatusSource {
    #[must_use]
    pub fn report(&self, view: &View) -> StatusResponse {
        let snapshot = &view.snapshot;
        let r = &self.report;
        // Live, not from the last refresh: benchmarks diff them around a workload.
        let counters = self.counters.totals();
        let mut caps = Vec::new();
        let mut add = |name: &str, state, detail: String| {
            caps.push(Capability {
                name: name.into(),
                state,
                detail,
            });
        };
        add("kernel", CapabilityState::Ok, r.kernel.clone());
        match &r.page_probe_fallback {
            None => add("page probe", CapabilityState::Ok, r.page_probe.clone()),
            Some(why) => add(
                "page probe",
                CapabilityState::Degraded,
                format!("{} (raw tracepoint unavailable: {why})", r.page_probe),
            ),
        }
        match &r.task_memcg_offsets {
            Ok(o) => add(
                "struct offsets",
                CapabilityState::Ok,
                format!(
                    "from BTF: sizeof(struct page)={}, task_struct.cgroups={}, \
                     css_set.subsys[memory]={}, css.cgroup={}, cgroup.kn={}, kernfs_node.id={}",
                    r.page_struct_size,
                    o.task_cgroups,
                    o.css_set_memory_subsys,
                    o.css_cgroup,
                    o.cgroup_kn,
                    o.kernfs_node_id
                ),
            ),
            Err(e) => add(
                "struct offsets",
                CapabilityState::Degraded,
                format!("allocating task's cgroup not recorded: {e}"),
            ),
        }
        match &r.vmemmap_base {
            Some(base) => add(
                "vmemmap base",
                CapabilityState::Ok,
                format!("{base} (calibrated)"),
            ),
            None => add(
                "vmemmap base",
                CapabilityState::Degraded,
                "unknown (classic tracepoint used)".into(),
            ),
        }
        add(
            "cgroup layout",
            CapabilityState::Ok,
            format!("{}; {} memory cgroups", self.layout, snapshot.cgroups.len()),
        );
        let shift_note = if r.sample_shift == r.requested_sample_shift {
            String::new()
        } else {
            format!(
                " (raised from 1 in {} to bound the map)",
                1u64 << r.requested_sample_shift
            )
        };
        add(
            "sampling",
            CapabilityState::Ok,
            format!(
                "1 page in {}{shift_note}, offsets rotated by seed {:#x}; {} sampled frames up \
                 to pfn {}; {} stack slots ({} in use); maps {} of kernel memory",
                1u64 << r.sample_shift,
                r.sample_seed,
                r.sample_entries,
                r.end_pfn,
                r.stack_entries,
                snapshot.stacks_in_use,
                Bytes(r.map_bytes)
            ),
        );
        let (base, budget, cycle) = &self.refresh;
        let cycle = Duration::from_millis(cycle.load(Ordering::Relaxed));
        if cycle > *base {
            add(
                "refresh",
                CapabilityState::Ok,
                format!(
                    "every {:.1} s, stretched from {}: the agent has spent the burst its \
                     --cpu-budget of {:.1}% of a core allows (refreshes, unwinding, queries)",
                    cycle.as_secs_f64(),
                    humantime::format_duration(*base),
                    budget * 100.0
                ),
            );
        } else {
            add(
                "refresh",
                CapabilityState::Ok,
                format!(
                    "every {} (the agent within {:.1}% of a core, --cpu-budget)",
                    humantime::format_duration(*base),
                    budget * 100.0
                ),
            );
        }
        match (&self.census_unavailable, &snapshot.census) {
            (Some(why), _) => add("page census", CapabilityState::Unavailable, why.clone()),
            (None, Some(c)) => add(
                "page census",
                if c.read_errors == 0 { CapabilityState::Ok } else { CapabilityState::Degraded },
                format!(
                    "/proc/kpagecgroup + /proc/kpageflags: {} frames read of {}, {} charged, {} errors, {} ms",
                    c.frames_read, c.frames, c.charged_frames, c.read_errors, c.duration_ms
                ),
            ),
            (None, None) => add("page census", CapabilityState::Degraded, "no census yet".into()),
        }
        let losses = || Counter::ALL.into_iter().filter(|c| c.is_loss());
        let count = |c: Counter| counters.get(c.name()).copied().unwrap_or(0);
        let lost: u64 = losses().map(count).sum();
        let sampled = snapshot
            .counters
            .get("sampled_frames")
            .copied()
            .unwrap_or(0);
        add(
            "drops",
            if lost == 0 {
                CapabilityState::Ok
            } else {
                CapabilityState::Degraded
            },
            format!(
                "{lost} lost updates ({}); {sampled} sampled frames recorded",
                losses()
                    .map(|c| format!("{} {}", c.name(), count(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let leaks = &view.leaks.table;
        let history_snapshots = self
            .leaks
            .history
            .read()
            .map(|h| h.len())
            .unwrap_or_default();
        add(
            "leak attribution",
            CapabilityState::Ok,
            format!(
                "{} stacks in the last census ({} merged by the cap); history of {} + {} snapshots \
                 (every census for 10 min, every minute for 6 h); {} stacks collected from the kernel map",
                leaks.entries.len(),
                leaks.overflow_keys,
                history_snapshots.0,
                history_snapshots.1,
                snapshot.stacks_collected
            ),
        );
        match &r.filemap_probe {
            Ok(how) => add(
                "page cache",
                CapabilityState::Ok,
                format!(
                    "{how}; {} (cgroup, file) pairs of {} counted, {} below zero (cached before start); \
                     {} events, {} unreadable, {} lost to a full map",
                    view.files.entries,
                    r.file_entries,
                    view.files.below_zero,
                    count(Counter::FilemapEvents),
                    count(Counter::FilemapReadErrors),
                    count(Counter::FilemapMapFull)
                ),
            ),
            Err(why) => add("page cache", CapabilityState::Unavailable, why.to_string()),
        }
        match &r.lifecycle_probe {
            Ok(how) => add(
                "lifecycle",
                CapabilityState::Ok,
                format!(
                    "{how}; {} records kept, {} exits with status 0 not kept, {} lost in the kernel, {} write errors, {} oldest dropped by the cap",
                    self.lifecycle.recorded.load(Ordering::Relaxed),
                    self.lifecycle.normal_exits.load(Ordering::Relaxed),
                    count(Counter::LifecycleDropped),
                    self.lifecycle.write_errors.load(Ordering::Relaxed),
                    self.lifecycle.capped.load(Ordering::Relaxed)
                ),
            ),
            Err(why) => add("lifecycle", CapabilityState::Unavailable, why.to_string()),
        }
        let uptime_s = memlens_types::unix_ms().saturating_sub(self.started_at_unix_ms) / 1000;
        match &self.unwind {
            Some(u) => add(
                "unwinding",
                CapabilityState::Ok,
                unwinding_detail(r.stack_copy_bytes, u, &count, uptime_s.max(1)),
            ),
            None => add(
                "unwinding",
                CapabilityState::Degraded,
                "frame pointers only (--stack-copy 0): stacks of code built without frame \
                 pointers end after a frame or two"
                    .into(),
            ),
        }
        if self.unwind.is_some() {
            add(
                "python frames",
                CapabilityState::Ok,
                python_detail(&self.python.0, &self.python.1),
            );
        } else {
            add(
                "python frames",
                CapabilityState::Unavailable,
                "they come with the stack copies (--stack-copy 0 turned them off)".into(),
            );
        }
        add("pod names", CapabilityState::Ok, self.pods.source());
        let (engine, schedule) = (&self.engine, &self.schedule);
        let failures = engine.failures.load(Ordering::Relaxed);
        add(
            "events",
            if failures == 0 {
                CapabilityState::Ok
            } else {
                CapabilityState::Degraded
            },
            format!(
                "{schedule}; {} runs (the last took {} ms), {} events raised, {failures} failed runs",
                engine.runs.load(Ordering::Relaxed),
                engine.last_run_ms.load(Ordering::Relaxed),
                engine.raised.load(Ordering::Relaxed),
            ),
        );
        let programs = snapshot.programs.clone();
        let costs: Vec<String> = programs
            .iter()
            .filter(|p| p.run_count > 0)
            .map(|p| {
                format!(
                    "{} {} runs, {} ns/run",
                    p.name,
                    p.run_count,
                    p.run_time_ns / p.run_count
                )
            })
            .collect();
        add(
            "program cost",
            CapabilityState::Ok,
            if costs.is_empty() {
                "not measured (sysctl kernel.bpf_stats_enabled=1 to measure)".into()
            } else {
                costs.join("; ")
            },
        );
        add(
            "allocator traces",
            CapabilityState::Ok,
            self.traces.summary(),
        );
        match &r.pinning {
            Ok(p) => add(
                "restarts",
                if p.not_kept.is_empty() {
                    CapabilityState::Ok
                } else {
                    CapabilityState::Degraded
                },
                restarts_detail(p, self.restored_stacks),
            ),
            Err(why) => add(
                "restarts",
                CapabilityState::Degraded,
                format!(
                    "kernel records go with the agent ({why}): after a restart, pages allocated \
                     before it have no stacks"
                ),
            ),
        }
        if let Some(w) = &r.memlock_warning {
            add("memlock", CapabilityState::Ok, w.clone());
        }
        StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_at_unix_ms: self.started_at_unix_ms,
            capabilities: caps,
            counters,
            programs,
        }
    }
}

/// The `restarts` line: whether the kernel records outlive the agent and what it resumed from.
fn restarts_detail(p: &PinReport, restored_stacks: usize) -> String {
    let origin = if p.resumed {
        format!(
            "resumed the previous agent's records ({restored_stacks} unwound user stacks \
             restored)"
        )
    } else {
        match &p.discarded {
            Some(why) => format!("started afresh: {why}"),
            None => "started afresh (no previous agent's records)".to_string(),
        }
    };
    let mut detail = format!(
        "kernel records kept in {} while the agent restarts; {origin}; attached throughout: {}",
        p.dir.display(),
        if p.kept.is_empty() {
            "none".to_string()
        } else {
            p.kept.join(", ")
        }
    );
    if !p.not_kept.is_empty() {
        detail.push_str(&format!("; stop with the agent: {}", p.not_kept.join(", ")));
    }
    detail
}

/// The `python frames` line: the CPython processes read, and what reading their frames costs.
fn python_detail(p: &PythonStats, frames: &PythonFrames) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let samples = load(&p.samples);
    format!(
        "CPython 3.11 to 3.14: {} processes read, {} not read (their stacks say why), {} not \
         named (more than {} at once); {samples} samples of them ({} ns each to resolve), {} \
         in threads without a thread state, {} with a failed read, {} cut at {} frames; {} \
         Python frames put in stacks, {} code objects read ({} failed); {} distinct frames kept, \
         {} dropped (table full)",
        load(&p.named),
        load(&p.unread),
        load(&p.map_full),
        memlens_kernel::python_maps::PYTHON_PROCESSES,
        load(&p.busy_ns).checked_div(samples).unwrap_or(0),
        load(&p.no_thread_state),
        load(&p.read_failed),
        load(&p.cut),
        memlens_common::python::PYTHON_FRAMES_MAX,
        load(&p.frames),
        load(&p.code_reads),
        load(&p.code_errors),
        frames.len(),
        frames.dropped.load(Ordering::Relaxed),
    )
}

/// The `unwinding` line: what copying and unwinding stacks costs and what it gives.
fn unwinding_detail(
    copy_bytes: u32,
    u: &UnwindStats,
    count: &dyn Fn(Counter) -> u64,
    uptime_s: u64,
) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let copies = count(Counter::StackCopies);
    let copied = count(Counter::StackCopyBytes);
    let per = |total: u64, n: u64| total.checked_div(n).unwrap_or(0);
    let unwound = load(&u.samples);
    format!(
        "copies of up to {} KiB of user stack, unwound with each binary's .eh_frame/.debug_frame: \
         {copies} copies ({} average, {} ns each in the kernel), {}/s on average, {} lost (ring \
         full: those samples get the frame-pointer walk), {} failed, {} of the agent's own not \
         copied; {unwound} unwound ({} ns each, \
         and {} ms reading mappings and tables), {} of them by frame pointers alone (Go, code \
         without a file, processes gone); stopped early: {} at the end of the copy, {} at an \
         unknown address, {} other; {} re-reads of mappings; {} binaries' tables read, {} held; \
         {} records with an unwound stack, {} distinct stacks; {} binaries in the shared unwinder, \
         {} of {} unwind-rule lookups cached ({} missed a rule from before binaries came or went)",
        copy_bytes / 1024,
        Bytes(per(copied, copies)),
        per(count(Counter::StackCopyNs), copies),
        Bytes(copied / uptime_s),
        count(Counter::StackCopyDropped),
        count(Counter::StackCopyErrors),
        count(Counter::StackCopyAgentSkipped),
        per(load(&u.busy_ns).saturating_sub(load(&u.load_ns)), unwound),
        load(&u.load_ns) / 1_000_000,
        load(&u.frame_pointers_only),
        load(&u.stopped_copy_ended),
        load(&u.stopped_unknown_address),
        load(&u.stopped_other),
        load(&u.remaps),
        load(&u.files_loaded),
        Bytes(load(&u.table_bytes)),
        load(&u.held_slots),
        load(&u.held_stacks),
        load(&u.modules),
        load(&u.rule_hits),
        load(&u.rule_lookups),
        load(&u.rule_misses_stale),
    )
}
