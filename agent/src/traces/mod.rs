//! Allocator traces: one bounded window at a time of user probes on the allocators of chosen
//! processes, with its cost measured before it starts and watched while it runs.
//!
//! A trace is started by the API (`POST /v1/traces`): the agent finds each process's allocator
//! (`memlens_runtimes::allocator`), loads the trace's own programs, measures what a probe costs
//! a call on this machine, attaches, and hands the window to a thread (`window`) that unwinds
//! the samples as they come (while the processes still run) and, four times a second, reads the
//! call counters: calls per second x cost per call is the CPU the trace costs the processes,
//! and past the budget the trace stops itself. The probes go when the window ends, when every process has
//! exited, on request, or with the agent. The results of the last few traces are kept for
//! `GET /v1/allocations?trace=ID`.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use memlens_attribution::{allocations::ProcessInput, symbol_service::SymbolService};
use memlens_kernel::alloc_trace::{AllocTrace, AllocTraceOptions};
use memlens_kernel::python_maps::PythonMaps;
use memlens_runtimes::python::Interpreters;
use memlens_store::{Reader, Store, StoreError};
use memlens_types::allocations::{
    AllocationsResponse, TraceEnd, TraceState, TraceStatus, TracedProcess,
};

mod held_files;
mod window;

use held_files::HeldFiles;
use window::Window;

/// Traces whose results are kept.
const KEPT: usize = 8;
/// Longest window.
pub const MAX_SECONDS: f64 = 600.0;

/// What a trace is asked to do.
#[derive(Clone, Debug)]
pub struct TraceSpec {
    pub pids: Vec<u32>,
    pub seconds: f64,
    pub sample_bytes: u64,
    pub budget_cpus: f64,
    pub stack_copy_bytes: u32,
    /// What the trace was started for, when not for a person (the event engine's cgroup path).
    pub label: Option<String>,
}

/// One trace: its status, and its results so far.
struct Trace {
    label: Option<String>,
    status: Mutex<TraceStatus>,
    stop: AtomicBool,
    /// Each traced process's profile and mappings so far, while it runs.
    results: Mutex<Option<Vec<ProcessInput>>>,
    /// The symbolized answer, once finished.
    answer: Mutex<Option<AllocationsResponse>>,
}

/// A trace's results, as far as they go.
pub enum TraceResults {
    /// Still running: the processes' profiles so far, to be answered from.
    Running(Vec<ProcessInput>),
    /// Finished: its answer, symbolized when it ended (its `MAX_ANSWER` largest stacks).
    Finished(AllocationsResponse),
}

/// Stacks kept in a finished trace's answer.
const MAX_ANSWER: usize = 1000;

/// Every trace the agent has run: the last `KEPT` in memory, the last `MAX_TRACES` finished ones
/// in the history database (kept across restarts).
pub struct Traces {
    traces: Mutex<VecDeque<Arc<Trace>>>,
    next_id: Mutex<u64>,
    /// Set at shutdown: running traces end.
    stopping: AtomicBool,
    db: PathBuf,
    retention: Duration,
    symbols: SymbolService,
    /// The programs' maps of CPython processes (a trace's own programs get one too), and the
    /// reader of their frames, shared with the agent's unwinder.
    python: (PythonMaps, Arc<Mutex<Interpreters>>),
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("trace {0} is running; one trace at a time (stop it, or wait {1:.0} s)")]
    Busy(u64, f64),
    #[error("{0}")]
    BadRequest(String),
    #[error("none of the processes can be traced: {0}")]
    NothingToTrace(String),
    #[error("{0}")]
    Kernel(String),
    #[error("no trace {0} (the last {KEPT} are kept)")]
    NotFound(u64),
}

impl Traces {
    /// The traces of an agent whose history database is `db`; ids go on from the last one on
    /// record.
    pub fn new(
        db: &Path,
        retention: Duration,
        symbols: SymbolService,
        python: (PythonMaps, Arc<Mutex<Interpreters>>),
    ) -> Result<Traces, StoreError> {
        let last = Store::open(db, retention)?.last_trace_id()?;
        Ok(Traces {
            traces: Mutex::new(VecDeque::new()),
            next_id: Mutex::new(last),
            stopping: AtomicBool::new(false),
            db: db.to_path_buf(),
            retention,
            symbols,
            python,
        })
    }

    /// A finished trace of an earlier run of the agent, from the database.
    fn recorded(&self, id: u64) -> Result<(TraceStatus, AllocationsResponse), TraceError> {
        Reader::open(&self.db)
            .and_then(|r| r.trace(id))
            .map_err(|e| TraceError::Kernel(e.to_string()))?
            .ok_or(TraceError::NotFound(id))
    }

    fn find(&self, id: u64) -> Result<Arc<Trace>, TraceError> {
        self.traces
            .lock()
            .map_err(|_| TraceError::Kernel("trace list poisoned".into()))?
            .iter()
            .find(|t| t.status.lock().is_ok_and(|s| s.id == id))
            .cloned()
            .ok_or(TraceError::NotFound(id))
    }

    /// The status of trace `id`.
    pub fn status(&self, id: u64) -> Result<TraceStatus, TraceError> {
        let trace = match self.find(id) {
            Ok(trace) => trace,
            Err(TraceError::NotFound(_)) => return self.recorded(id).map(|(status, _)| status),
            Err(e) => return Err(e),
        };
        let status = trace
            .status
            .lock()
            .map_err(|_| TraceError::Kernel("trace status poisoned".into()))?
            .clone();
        Ok(status)
    }

    /// One line for `memlens status`: how traces attach, and the running or last one.
    pub fn summary(&self) -> String {
        // aya attaches through the uprobe PMU where the kernel has one, else through tracefs.
        let how = if Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
            "user probes through perf events"
        } else {
            "user probes through tracefs (no uprobe PMU)"
        };
        let last = self.traces.lock().ok().and_then(|t| {
            t.back()
                .and_then(|t| t.status.lock().ok().map(|s| s.clone()))
        });
        let state = match last {
            None => "none run since the agent started".to_string(),
            Some(s) if s.state == TraceState::Running => format!(
                "trace {} running: {:.0} of {:.0} s, {} samples, costing {:.2} CPUs",
                s.id, s.elapsed_seconds, s.seconds, s.samples, s.cost_cpus
            ),
            Some(s) => format!(
                "last: trace {} ({:?} after {:.0} s, {} samples)",
                s.id,
                s.end.unwrap_or(TraceEnd::Completed),
                s.elapsed_seconds,
                s.samples
            ),
        };
        format!("on demand ({how}, `memlens leaks --allocations --for`); {state}")
    }

    /// The newest trace in memory started for `label`: its id.
    pub fn latest_for(&self, label: &str) -> Option<u64> {
        self.traces
            .lock()
            .ok()?
            .iter()
            .rev()
            .find(|t| t.label.as_deref() == Some(label))
            .and_then(|t| t.status.lock().ok().map(|s| s.id))
    }

    /// Asks trace `id` to stop; returns its status.
    pub fn stop(&self, id: u64) -> Result<TraceStatus, TraceError> {
        if let Ok(trace) = self.find(id) {
            trace.stop.store(true, Ordering::Relaxed);
        }
        self.status(id)
    }

    /// Ends every running trace (the agent is stopping).
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The results of trace `id`, as far as they go.
    pub fn results(&self, id: u64) -> Result<TraceResults, TraceError> {
        let trace = match self.find(id) {
            Ok(trace) => trace,
            Err(TraceError::NotFound(_)) => {
                return self
                    .recorded(id)
                    .map(|(_, answer)| TraceResults::Finished(answer))
            }
            Err(e) => return Err(e),
        };
        if let Some(answer) = trace.answer.lock().ok().and_then(|a| a.clone()) {
            return Ok(TraceResults::Finished(answer));
        }
        let inputs = trace
            .results
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_default();
        Ok(TraceResults::Running(inputs))
    }

    /// Starts a trace of `spec.pids`: plans, loads, measures the probes' cost, attaches; the
    /// window runs on its own thread.
    pub fn start(self: &Arc<Self>, spec: TraceSpec) -> Result<TraceStatus, TraceError> {
        if !(spec.seconds > 0.0 && spec.seconds <= MAX_SECONDS) {
            return Err(TraceError::BadRequest(format!(
                "seconds must be above 0 and at most {MAX_SECONDS}"
            )));
        }
        if !(spec.budget_cpus > 0.0 && spec.budget_cpus.is_finite()) {
            return Err(TraceError::BadRequest(
                "budget_cpus must be a positive number of CPUs".into(),
            ));
        }
        if spec.sample_bytes == 0 {
            return Err(TraceError::BadRequest(
                "sample_bytes must be at least 1".into(),
            ));
        }
        let mut traces = self
            .traces
            .lock()
            .map_err(|_| TraceError::Kernel("trace list poisoned".into()))?;
        if let Some(running) = traces.iter().find_map(|t| {
            t.status
                .lock()
                .ok()
                .filter(|s| s.state == TraceState::Running)
                .map(|s| (s.id, s.seconds - s.elapsed_seconds))
        }) {
            return Err(TraceError::Busy(running.0, running.1.max(0.0)));
        }
        let (mut trace, ring) = AllocTrace::load(
            &AllocTraceOptions {
                sample_bytes: spec.sample_bytes,
                stack_copy_bytes: spec.stack_copy_bytes,
                live_entries: 1 << 18,
                events_buffer: 8 << 20,
            },
            Some(&self.python.0),
        )
        .map_err(|e| TraceError::Kernel(e.to_string()))?;
        let cost = trace
            .calibrate()
            .map_err(|e| TraceError::Kernel(format!("measuring the probes' cost: {e}")))?;
        let mut processes = Vec::new();
        let mut maps = HashMap::new();
        let mut held = HeldFiles::default();
        // (allocating, freeing) call cost in ns: the dearest of the traced allocators' malloc and
        // free (other functions of a family begin alike).
        let mut call_cost: (f64, f64) = (0.0, 0.0);
        for &pid in &spec.pids {
            let comm = memlens_procfs::process::comm(pid).unwrap_or_default();
            let planned = memlens_runtimes::allocator::plan(pid)
                .map_err(|e| e.to_string())
                .and_then(|plan| {
                    for f in &plan.functions {
                        match f.symbol.as_str() {
                            "malloc" => {
                                call_cost.0 =
                                    call_cost.0.max(cost.per_call_ns(f.starts_with_push, true));
                            }
                            "free" => {
                                call_cost.1 =
                                    call_cost.1.max(cost.per_call_ns(f.starts_with_push, false));
                            }
                            _ => {}
                        }
                    }
                    trace
                        .attach(&plan)
                        .map(|probes| (plan, probes))
                        .map_err(|e| e.to_string())
                });
            processes.push(match planned {
                Ok((plan, probes)) => {
                    if let Ok(m) = memlens_procfs::read_maps(pid) {
                        held.hold(pid, &m);
                        maps.insert(pid, (comm.clone(), m));
                    }
                    TracedProcess {
                        pid,
                        comm,
                        allocator: Some(plan.allocator),
                        object: Some(plan.path),
                        probes,
                        error: None,
                        exited: false,
                    }
                }
                Err(why) => TracedProcess {
                    pid,
                    comm,
                    allocator: None,
                    object: None,
                    probes: 0,
                    error: Some(why),
                    exited: false,
                },
            });
        }
        if maps.is_empty() {
            let why: Vec<String> = processes.iter().filter_map(|p| p.error.clone()).collect();
            return Err(TraceError::NothingToTrace(why.join("; ")));
        }
        let mut next_id = self
            .next_id
            .lock()
            .map_err(|_| TraceError::Kernel("trace ids poisoned".into()))?;
        *next_id += 1;
        let status = TraceStatus {
            id: *next_id,
            state: TraceState::Running,
            end: None,
            started_unix_ms: memlens_types::unix_ms(),
            seconds: spec.seconds,
            elapsed_seconds: 0.0,
            sample_bytes: spec.sample_bytes,
            budget_cpus: spec.budget_cpus,
            alloc_call_cost_us: call_cost.0 / 1000.0,
            free_call_cost_us: call_cost.1 / 1000.0,
            processes,
            alloc_calls: 0,
            free_calls: 0,
            calls_per_second: 0.0,
            cost_cpus: 0.0,
            mean_cost_cpus: 0.0,
            samples: 0,
            sampled_frees: 0,
            lost_ring_full: 0,
            lost_live_full: 0,
            stack_copy_errors: 0,
            dropped_samples: 0,
        };
        tracing::info!(
            "trace {}: {} probes on {} processes, {:.2} us per allocating call, {:.2} us per free",
            status.id,
            trace.probes(),
            maps.len(),
            status.alloc_call_cost_us,
            status.free_call_cost_us
        );
        let shared = Arc::new(Trace {
            label: spec.label.clone(),
            status: Mutex::new(status.clone()),
            stop: AtomicBool::new(false),
            results: Mutex::new(None),
            answer: Mutex::new(None),
        });
        traces.push_back(Arc::clone(&shared));
        while traces.len() > KEPT {
            traces.pop_front();
        }
        drop(traces);
        let traces = Arc::clone(self);
        let window = Window {
            trace,
            ring,
            python: Arc::clone(&self.python.1),
            call_cost,
            maps,
            held,
            spec,
        };
        let spawned = std::thread::Builder::new()
            .name("alloc-trace".into())
            .spawn(move || window.run(&shared, &traces));
        if let Err(e) = spawned {
            return Err(TraceError::Kernel(format!(
                "cannot start the trace thread: {e}"
            )));
        }
        Ok(status)
    }
}
