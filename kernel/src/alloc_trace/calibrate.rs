//! What a user probe costs a traced call on this machine, measured before each trace.
//!
//! A uprobe replaces the function's first instruction with a breakpoint; each call then traps
//! into the kernel, runs the program and returns (and a return probe traps a second time on the
//! way out). The trap dominates, and its price depends on the CPU, the kernel and its
//! mitigations (2 to 10 times a syscall), so it is measured rather than assumed: the agent
//! probes a function of its own with programs that do nothing and times calls to it with and
//! without the probes, interleaved, keeping each variant's fastest round.

use std::{hint::black_box, num::NonZeroU32, time::Instant};

use aya::programs::uprobe::UProbeScope;

use super::{AllocTrace, AllocTraceError};

/// Calls timed per round.
const CALLS: u32 = 2_000;
/// Rounds per variant (the fastest is kept: interruptions only ever add time).
const ROUNDS: usize = 5;

/// Measured cost of the probes, per call of a traced function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeCost {
    /// Entry probe alone (what a `free` costs).
    pub entry_ns: f64,
    /// Entry and return probes (what a `malloc` costs).
    pub entry_and_return_ns: f64,
}

/// The function the calibration probes: not inlined, and kept by its use through a pointer.
#[inline(never)]
#[no_mangle]
pub extern "C" fn memlens_probe_calibration(x: u64) -> u64 {
    black_box(x).wrapping_add(1)
}

/// Nanoseconds per call of [`memlens_probe_calibration`] over one round.
fn time_calls() -> f64 {
    let f: extern "C" fn(u64) -> u64 = black_box(memlens_probe_calibration);
    let started = Instant::now();
    let mut x = 0;
    for _ in 0..CALLS {
        x = f(x);
    }
    black_box(x);
    started.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// Where [`memlens_probe_calibration`] is in the agent's own file: (path to open, offset).
fn own_function() -> Result<(String, u64), String> {
    let addr = memlens_probe_calibration as *const () as u64;
    let pid = std::process::id();
    let maps = memlens_procfs::read_maps(pid).map_err(|e| format!("reading own maps: {e}"))?;
    let mapping = memlens_procfs::maps::find(&maps, addr)
        .filter(|m| m.inode != 0)
        .ok_or_else(|| format!("own code at {addr:#x} is in no file mapping"))?;
    Ok((format!("/proc/{pid}/exe"), mapping.file_offset(addr)))
}

pub(super) fn measure(trace: &mut AllocTrace) -> Result<ProbeCost, AllocTraceError> {
    let calibration = |why: String| AllocTraceError::Attach {
        pid: std::process::id(),
        symbol: "memlens_probe_calibration".to_string(),
        path: "/proc/self/exe".to_string(),
        why,
    };
    let (path, offset) = own_function().map_err(calibration)?;
    let me = NonZeroU32::new(std::process::id()).ok_or_else(|| calibration("pid 0".into()))?;
    let (mut bare, mut entry, mut both) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        bare = bare.min(time_calls());
        let entry_link = trace
            .program("alloc_calibrate")?
            .attach(offset, &path, UProbeScope::OneProcess(me))
            .map_err(|e| calibration(e.to_string()))?;
        entry = entry.min(time_calls());
        let return_link = trace
            .program("alloc_calibrate_return")?
            .attach(offset, &path, UProbeScope::OneProcess(me))
            .map_err(|e| calibration(e.to_string()))?;
        both = both.min(time_calls());
        trace
            .program("alloc_calibrate_return")?
            .detach(return_link)
            .map_err(|e| calibration(e.to_string()))?;
        trace
            .program("alloc_calibrate")?
            .detach(entry_link)
            .map_err(|e| calibration(e.to_string()))?;
    }
    Ok(ProbeCost {
        entry_ns: (entry - bare).max(0.0),
        entry_and_return_ns: (both - bare).max(0.0),
    })
}
