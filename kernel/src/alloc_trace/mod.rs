//! Allocator traces: the user probes of `ebpf/src/allocator.rs`, loaded for one trace and
//! attached to the allocator functions of the processes it targets.
//!
//! Each trace loads its own instance of the programs and maps (the always-on probes are not
//! touched, and nothing of a trace costs anything between traces). Dropping the [`AllocTrace`]
//! detaches every probe and frees the maps; the probes are attached through perf-event
//! descriptors of the agent, so an agent that dies takes them with it.

mod calibrate;

use std::num::NonZeroU32;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{uprobe::UProbeScope, UProbe},
    Ebpf, EbpfLoader,
};
use memlens_common::{
    allocator::{AllocCounter, ALLOC_COUNTER_COUNT, GAP_TABLE_SIZE},
    stack_copy::STACK_COPY_MAX,
};
use memlens_model::alloc_trace::{AllocatorPlan, AllocatorRole};

pub use calibrate::ProbeCost;

use crate::{
    collectors::alloc_events::AllocEventRing,
    loader::btf::KernelBtf,
    python_maps::{MapGuard, PythonMaps, PYTHON_PROCESSES, PYTHON_THREADS},
};

#[derive(Debug, thiserror::Error)]
pub enum AllocTraceError {
    #[error("allocator traces need root (they attach user probes); run the agent as root")]
    NotRoot,
    #[error("invalid trace setting: {0}")]
    Config(String),
    #[error("{0}: {1}")]
    Ebpf(&'static str, String),
    #[error("program {0} is missing from the embedded object (a build problem)")]
    MissingProgram(&'static str),
    #[error("process {pid}: attaching to {symbol} in {path}: {why}")]
    Attach {
        pid: u32,
        symbol: String,
        path: String,
        why: String,
    },
}

fn ebpf_err(what: &'static str, e: impl std::fmt::Display) -> AllocTraceError {
    let text = e.to_string();
    tracing::debug!("{what}: {text}");
    AllocTraceError::Ebpf(what, text.lines().next().unwrap_or_default().to_string())
}

/// What a trace asks of the probes.
#[derive(Clone, Debug)]
pub struct AllocTraceOptions {
    /// Mean bytes allocated between two samples.
    pub sample_bytes: u64,
    /// Bytes of user stack copied per sample for unwinding (at most `STACK_COPY_MAX`).
    pub stack_copy_bytes: u32,
    /// Sampled blocks tracked until freed.
    pub live_entries: u32,
    /// Bytes of the event ring buffer (a power of two).
    pub events_buffer: u32,
}

/// The programs of each role: the entry probe, and whether the return is probed too.
fn entry_program(role: AllocatorRole) -> &'static str {
    match role {
        AllocatorRole::SizeFirst => "alloc_size_first",
        AllocatorRole::SizeSecond => "alloc_size_second",
        AllocatorRole::Calloc => "alloc_calloc",
        AllocatorRole::PosixMemalign => "alloc_posix_memalign",
        AllocatorRole::Realloc => "alloc_realloc",
        AllocatorRole::Free => "alloc_free",
    }
}

const PROGRAMS: [&str; 9] = [
    "alloc_size_first",
    "alloc_size_second",
    "alloc_calloc",
    "alloc_posix_memalign",
    "alloc_realloc",
    "alloc_free",
    "alloc_return",
    "alloc_calibrate",
    "alloc_calibrate_return",
];

/// The trace's counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocCounts([u64; ALLOC_COUNTER_COUNT as usize]);

impl AllocCounts {
    #[must_use]
    pub fn get(&self, counter: AllocCounter) -> u64 {
        self.0[counter as usize]
    }

    /// What was counted since `earlier`.
    #[must_use]
    pub fn delta(&self, earlier: &AllocCounts) -> AllocCounts {
        let mut d = AllocCounts::default();
        for (i, v) in d.0.iter_mut().enumerate() {
            *v = self.0[i].wrapping_sub(earlier.0[i]);
        }
        d
    }
}

/// One trace's loaded programs, maps and probes.
pub struct AllocTrace {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// Probes attached (entry and return), over every process.
    probes: usize,
    /// This trace's `PYTHON` map among the agent's, while the trace lives.
    _python: Option<MapGuard>,
}

impl AllocTrace {
    /// Loads the programs and maps of a trace; nothing is attached yet. The processes named in
    /// `python` get their Python frames walked at each sample.
    pub fn load(
        options: &AllocTraceOptions,
        python: Option<&PythonMaps>,
    ) -> Result<(AllocTrace, AllocEventRing), AllocTraceError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(AllocTraceError::NotRoot);
        }
        if options.stack_copy_bytes as usize > STACK_COPY_MAX {
            return Err(AllocTraceError::Config(format!(
                "stack copy of {} bytes is above the maximum {STACK_COPY_MAX}",
                options.stack_copy_bytes
            )));
        }
        if options.sample_bytes == 0 {
            return Err(AllocTraceError::Config(
                "the sampling rate must be at least 1 byte".to_string(),
            ));
        }
        if !options.events_buffer.is_power_of_two() || options.events_buffer < 4096 {
            return Err(AllocTraceError::Config(format!(
                "the event buffer ({} bytes) must be a power of two of at least 4096",
                options.events_buffer
            )));
        }
        // Trims main-thread stack copies at `mm->start_stack`, as the page program does.
        let (task_mm, mm_start_stack) = match KernelBtf::load(None) {
            Ok(btf) => (
                btf.member_offset("task_struct", "mm").unwrap_or(0),
                btf.member_offset("mm_struct", "start_stack").unwrap_or(0),
            ),
            Err(_) => (0, 0),
        };
        let events_bytes = u64::from(options.events_buffer);
        let mut loader = EbpfLoader::new();
        loader
            .override_global("STACK_COPY_BYTES", &options.stack_copy_bytes, true)
            .override_global("TASK_MM_OFFSET", &task_mm, true)
            .override_global("MM_START_STACK_OFFSET", &mm_start_stack, true)
            .override_global("ALLOC_EVENTS_BYTES", &events_bytes, true)
            .map_max_entries("ALLOC_LIVE", options.live_entries.max(1))
            .map_max_entries("ALLOC_EVENTS", options.events_buffer)
            .map_max_entries("PYTHON", PYTHON_PROCESSES)
            .map_max_entries("PYTHON_THREADS", PYTHON_THREADS);
        let mut ebpf = loader
            .load(crate::loader::EBPF_OBJECT)
            .map_err(|e| ebpf_err("loading the allocator programs", e))?;
        for name in PROGRAMS {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(AllocTraceError::MissingProgram(name))?
                .try_into()
                .map_err(|e| ebpf_err("allocator program", e))?;
            program
                .load()
                .map_err(|e| ebpf_err("loading an allocator program", e))?;
        }
        let mut gaps: Array<_, u64> = Array::try_from(
            ebpf.map_mut("ALLOC_GAPS")
                .ok_or(AllocTraceError::MissingProgram("ALLOC_GAPS map"))?,
        )
        .map_err(|e| ebpf_err("opening ALLOC_GAPS", e))?;
        for (i, gap) in gap_table(options.sample_bytes).iter().enumerate() {
            gaps.set(i as u32, gap, 0)
                .map_err(|e| ebpf_err("filling ALLOC_GAPS", e))?;
        }
        let counters = PerCpuArray::try_from(
            ebpf.take_map("ALLOC_COUNTERS")
                .ok_or(AllocTraceError::MissingProgram("ALLOC_COUNTERS map"))?,
        )
        .map_err(|e| ebpf_err("opening ALLOC_COUNTERS", e))?;
        let ring = AllocEventRing(
            RingBuf::try_from(
                ebpf.take_map("ALLOC_EVENTS")
                    .ok_or(AllocTraceError::MissingProgram("ALLOC_EVENTS map"))?,
            )
            .map_err(|e| ebpf_err("opening ALLOC_EVENTS", e))?,
        );
        let python = match (python, ebpf.take_map("PYTHON")) {
            (Some(maps), Some(map)) => {
                Some(maps.add(HashMap::try_from(map).map_err(|e| ebpf_err("opening PYTHON", e))?))
            }
            _ => None,
        };
        Ok((
            AllocTrace {
                ebpf,
                counters,
                probes: 0,
                _python: python,
            },
            ring,
        ))
    }

    fn program(&mut self, name: &'static str) -> Result<&mut UProbe, AllocTraceError> {
        self.ebpf
            .program_mut(name)
            .ok_or(AllocTraceError::MissingProgram(name))?
            .try_into()
            .map_err(|e| ebpf_err("allocator program", e))
    }

    /// Attaches the probes of `plan` (entry of every function, return of the allocating ones),
    /// scoped to its process; returns how many. On an error the probes attached so far stay
    /// until the trace is dropped.
    pub fn attach(&mut self, plan: &AllocatorPlan) -> Result<usize, AllocTraceError> {
        let pid = NonZeroU32::new(plan.pid).ok_or_else(|| AllocTraceError::Attach {
            pid: 0,
            symbol: String::new(),
            path: plan.path.clone(),
            why: "pid 0 cannot be traced".to_string(),
        })?;
        let mut attached = 0;
        for function in &plan.functions {
            let failed = |e: aya::programs::ProgramError| AllocTraceError::Attach {
                pid: plan.pid,
                symbol: function.symbol.clone(),
                path: plan.path.clone(),
                why: ebpf_err("attach", e).to_string(),
            };
            let mut names = vec![entry_program(function.role)];
            if function.role.allocates() {
                names.push("alloc_return");
            }
            for name in names {
                self.program(name)?
                    .attach(
                        function.file_offset,
                        &plan.open_path,
                        UProbeScope::OneProcess(pid),
                    )
                    .map_err(failed)?;
                attached += 1;
                self.probes += 1;
            }
        }
        Ok(attached)
    }

    /// Probes attached so far.
    #[must_use]
    pub fn probes(&self) -> usize {
        self.probes
    }

    /// The counters, summed over CPUs.
    #[must_use]
    pub fn counts(&self) -> AllocCounts {
        let mut counts = AllocCounts::default();
        for c in AllocCounter::ALL {
            counts.0[c as usize] = self
                .counters
                .get(&(c as u32), 0)
                .map(|per_cpu| per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0);
        }
        counts
    }

    /// Measures what a probe costs a traced call on this machine (see [`calibrate`]).
    pub fn calibrate(&mut self) -> Result<ProbeCost, AllocTraceError> {
        calibrate::measure(self)
    }
}

/// The gap table for a mean of `mean_bytes`: the quantiles of an exponential distribution at
/// the midpoints of `GAP_TABLE_SIZE` equal steps, so that a uniform index draws an (almost)
/// exponential gap without floating point in the kernel. Entries are at least 1.
#[must_use]
pub fn gap_table(mean_bytes: u64) -> Vec<u64> {
    (0..GAP_TABLE_SIZE)
        .map(|i| {
            let u = (f64::from(i) + 0.5) / f64::from(GAP_TABLE_SIZE);
            ((-u.ln()) * mean_bytes as f64).round().max(1.0) as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gap_table_has_the_mean_it_was_made_for() {
        let table = gap_table(65_536);
        let mean = table.iter().sum::<u64>() as f64 / f64::from(GAP_TABLE_SIZE);
        // The midpoint quantiles cut the distribution's tail past the last step: within 1%.
        assert!((mean / 65_536.0 - 1.0).abs() < 0.01, "{mean}");
        assert!(table.iter().all(|&g| g >= 1));
        assert!(table[0] > table[table.len() - 1]);
        // Half the gaps are below the median, ln 2 of the mean.
        let median = table[table.len() / 2];
        assert!((median as f64 / (65_536.0 * 2f64.ln()) - 1.0).abs() < 0.01);
    }
}
