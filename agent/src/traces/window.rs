//! A trace's window, on its own thread: samples unwound as they come, the cost checked against
//! the budget four times a second, the results refreshed once a second, and at the end the
//! answer symbolized and recorded.

use std::{
    collections::HashMap,
    path::Path,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use memlens_attribution::allocations::{self, ProcessInput};
use memlens_common::allocator::AllocCounter;
use memlens_kernel::{
    alloc_trace::{AllocCounts, AllocTrace},
    collectors::alloc_events::{AllocEventRing, AllocRecord},
};
use memlens_model::alloc_trace::{TraceEvent, TraceRecorder};
use memlens_procfs::Mapping;
use memlens_runtimes::python::Interpreters;
use memlens_store::Store;
use memlens_types::allocations::{AllocationSource, TraceEnd, TraceState, TraceStatus};
use memlens_unwind::{UnwindStats, Unwinder};

use super::{HeldFiles, Trace, TraceSpec, Traces, MAX_ANSWER};

/// Records handled per drain before the counters are looked at again.
const BATCH: usize = 4096;
/// How often the ring is read (the kernel wakes the thread only when it is half full).
const WAIT: Duration = Duration::from_millis(50);
/// How often the cost is measured against the budget and the processes checked: a trace
/// past its budget costs the processes at most this long.
const TICK: Duration = Duration::from_millis(250);
/// Ticks between two refreshes of the mappings and the results so far (one a second).
const RESULTS_EVERY: u64 = 4;

/// A trace's window, owned by its thread.
pub(super) struct Window {
    pub(super) trace: AllocTrace,
    pub(super) ring: AllocEventRing,
    /// Puts Python frames in CPython processes' stacks (the agent's unwinder's reader).
    pub(super) python: Arc<Mutex<Interpreters>>,
    /// (allocating, freeing) call cost in ns.
    pub(super) call_cost: (f64, f64),
    /// Each traced process's name and latest mappings.
    pub(super) maps: HashMap<u32, (String, Vec<Mapping>)>,
    /// The files each process maps, held open so that its stacks can be named after it exits.
    pub(super) held: HeldFiles,
    pub(super) spec: TraceSpec,
}

impl Window {
    /// CPUs the probes cost over `seconds` in which `calls` were made.
    fn cost_cpus(&self, calls: &AllocCounts, seconds: f64) -> f64 {
        if seconds <= 0.0 {
            return 0.0;
        }
        let ns = calls.get(AllocCounter::AllocCalls) as f64 * self.call_cost.0
            + calls.get(AllocCounter::FreeCalls) as f64 * self.call_cost.1;
        ns / 1e9 / seconds
    }

    pub(super) fn run(mut self, shared: &Trace, traces: &Traces) {
        let mut unwinder = Unwinder::new(Arc::new(UnwindStats::default()), None, Arc::default())
            .with_python(Arc::clone(&self.python));
        let mut recorder = TraceRecorder::default();
        let started = Instant::now();
        let mut last_tick = started;
        let mut last_counts = AllocCounts::default();
        let mut ticks: u64 = 0;
        let end = loop {
            self.ring.wait(WAIT);
            while take(&mut self.ring, &mut unwinder, &mut recorder, BATCH) == BATCH {}
            let elapsed = started.elapsed().as_secs_f64();
            let mut end = None;
            if last_tick.elapsed() >= TICK {
                let counts = self.trace.counts();
                let seconds = last_tick.elapsed().as_secs_f64();
                let delta = counts.delta(&last_counts);
                let cost_now = self.cost_cpus(&delta, seconds);
                let calls_per_second = (delta.get(AllocCounter::AllocCalls)
                    + delta.get(AllocCounter::FreeCalls))
                    as f64
                    / seconds;
                last_counts = counts;
                last_tick = Instant::now();
                ticks += 1;
                // Once a second: the mappings (kept fresh for symbolizing code loaded during
                // the window; the last read stays once the process is gone) and the results
                // so far.
                let second = ticks.is_multiple_of(RESULTS_EVERY);
                if second {
                    for (pid, (_, maps)) in &mut self.maps {
                        if let Ok(m) = memlens_procfs::read_maps(*pid) {
                            self.held.hold(*pid, &m);
                            *maps = m;
                        }
                    }
                }
                if cost_now > self.spec.budget_cpus {
                    end = Some(TraceEnd::OverBudget);
                } else if self
                    .maps
                    .keys()
                    .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                {
                    end = Some(TraceEnd::ProcessesExited);
                }
                self.publish(
                    shared,
                    &recorder,
                    elapsed,
                    (cost_now, calls_per_second),
                    second,
                );
            }
            if end.is_none() {
                if shared.stop.load(Ordering::Relaxed) {
                    end = Some(TraceEnd::Stopped);
                } else if traces.stopping.load(Ordering::Relaxed) {
                    end = Some(TraceEnd::AgentStopping);
                } else if elapsed >= self.spec.seconds {
                    end = Some(TraceEnd::Completed);
                }
            }
            if let Some(end) = end {
                break end;
            }
        };
        let elapsed = started.elapsed().as_secs_f64();
        // Detach first, then take what the probes sent before they went.
        let counts = self.trace.counts();
        let Window {
            trace,
            mut ring,
            maps,
            held,
            spec,
            ..
        } = self;
        drop(trace);
        while take(&mut ring, &mut unwinder, &mut recorder, BATCH) == BATCH {}
        // Symbolized now, through the descriptors held of the processes' files (names even
        // for processes that exited), and recorded; then the descriptors go.
        let annotated = results(&recorder, &maps, &held, &spec, elapsed);
        let taken_at = memlens_types::unix_ms();
        let answer = traces
            .symbols
            .call(move |symbols| allocations::answer(&annotated, MAX_ANSWER, symbols, taken_at));
        drop(held);
        // Answers from now on come from the symbolized answer; without one (the symbolizer
        // stopped), from the profiles with the processes' own paths.
        let unheld = results(&recorder, &maps, &HeldFiles::default(), &spec, elapsed);
        if let Ok(mut r) = shared.results.lock() {
            *r = Some(unheld);
        }
        if let (Ok(answer), Ok(mut a)) = (&answer, shared.answer.lock()) {
            *a = Some(answer.clone());
        }
        if let Ok(mut status) = shared.status.lock() {
            status.state = TraceState::Finished;
            status.end = Some(end);
            status.elapsed_seconds = elapsed;
            fill_counts(&mut status, &counts, &recorder);
            for p in &mut status.processes {
                p.exited = p.error.is_none() && !Path::new(&format!("/proc/{}", p.pid)).exists();
            }
            tracing::info!(
                "trace {} ended ({end:?}) after {elapsed:.1} s: {} samples, {} calls",
                status.id,
                status.samples,
                status.alloc_calls + status.free_calls
            );
            match &answer {
                Ok(answer) => {
                    let recorded = Store::open(&traces.db, traces.retention)
                        .and_then(|mut store| store.record_trace(&status, answer, taken_at));
                    if let Err(e) = recorded {
                        tracing::warn!("trace {} not recorded: {e}", status.id);
                    }
                }
                Err(e) => tracing::warn!("trace {} not symbolized: {e}", status.id),
            }
        }
    }

    /// Updates the shared status while the trace runs.
    fn publish(
        &self,
        shared: &Trace,
        recorder: &TraceRecorder,
        elapsed: f64,
        (cost_now, calls_per_second): (f64, f64),
        with_results: bool,
    ) {
        let counts = self.trace.counts();
        let mean = self.cost_cpus(&counts, elapsed);
        if let Ok(mut status) = shared.status.lock() {
            status.elapsed_seconds = elapsed;
            status.cost_cpus = cost_now;
            status.mean_cost_cpus = mean;
            status.calls_per_second = calls_per_second;
            fill_counts(&mut status, &counts, recorder);
        }
        if with_results {
            let interim = results(recorder, &self.maps, &self.held, &self.spec, elapsed);
            if let Ok(mut r) = shared.results.lock() {
                *r = Some(interim);
            }
        }
    }
}

/// Hands up to `max` waiting records to `recorder`, unwinding samples' stacks; returns how
/// many were read.
fn take(
    ring: &mut AllocEventRing,
    unwinder: &mut Unwinder,
    recorder: &mut TraceRecorder,
    max: usize,
) -> usize {
    ring.drain(max, |record| match record {
        AllocRecord::Sample { id, size, stack } => {
            let frames = if stack.stack.is_empty() {
                Vec::new()
            } else {
                unwinder.unwind(&stack).frames().map(|f| f.addr).collect()
            };
            recorder.record(TraceEvent::Sample {
                id,
                tgid: stack.tgid,
                size,
                frames,
            });
        }
        AllocRecord::Returned { id, ptr } => {
            recorder.record(TraceEvent::Returned { id, kept: ptr != 0 });
        }
        AllocRecord::Freed { id } => recorder.record(TraceEvent::Freed { id }),
    })
}

fn fill_counts(status: &mut TraceStatus, counts: &AllocCounts, recorder: &TraceRecorder) {
    status.alloc_calls = counts.get(AllocCounter::AllocCalls);
    status.free_calls = counts.get(AllocCounter::FreeCalls);
    status.samples = counts.get(AllocCounter::Samples);
    status.sampled_frees = counts.get(AllocCounter::SampledFrees);
    status.lost_ring_full = counts.get(AllocCounter::RingFull);
    status.lost_live_full = counts.get(AllocCounter::LiveFull);
    status.stack_copy_errors = counts.get(AllocCounter::CopyErrors);
    status.dropped_samples = recorder.dropped_samples;
}

/// Each traced process's profile, as the answer reads it.
fn results(
    recorder: &TraceRecorder,
    maps: &HashMap<u32, (String, Vec<Mapping>)>,
    held: &HeldFiles,
    spec: &TraceSpec,
    elapsed: f64,
) -> Vec<ProcessInput> {
    let mut pids: Vec<u32> = maps.keys().copied().collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter_map(|pid| maps.get(&pid).map(|m| (pid, m)))
        .map(|(pid, (comm, maps))| ProcessInput {
            pid,
            comm: comm.clone(),
            maps: held.annotate(pid, maps),
            profile: Ok(recorder.profile(pid, spec.sample_bytes)),
            source: AllocationSource::AllocatorTrace,
            read_time: Duration::from_secs_f64(elapsed),
        })
        .collect()
}
