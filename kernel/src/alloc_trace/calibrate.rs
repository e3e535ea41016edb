//! What a user probe costs a traced call on this machine, measured before each trace.
//!
//! A uprobe replaces the function's first instruction with a breakpoint; each call then traps
//! into the kernel, runs the program and returns (and a return probe traps a second time on the
//! way out). The trap dominates, and its price depends on the CPU, the kernel and its
//! mitigations (2 to 10 times a syscall), so it is measured rather than assumed: the agent
//! probes a function of its own with programs that do nothing and times calls to it with and
//! without the probes, interleaved, keeping each variant's fastest round. What a probe costs
//! depends on the probed function's first instruction: the kernel emulates some (`push`) and
//! single-steps the others out of line, a second trap; both kinds are measured.

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
    /// An entry probe on a function whose first instruction the kernel emulates (a `push`, as
    /// glibc's `malloc` begins with on kernels that emulate it).
    pub emulated_entry_ns: f64,
    /// An entry probe on a function whose first instruction is single-stepped out of line (a
    /// second trap: `test`, as glibc's `free` begins with).
    pub stepped_entry_ns: f64,
    /// A return probe (a trap on older kernels, a syscall from a trampoline on 6.11 and later).
    pub return_ns: f64,
}

impl ProbeCost {
    /// The cost of one call of a function probed at its entry (whose first instruction is or
    /// is not a `push`) and, for allocating functions, at its return.
    #[must_use]
    pub fn per_call_ns(&self, starts_with_push: bool, allocates: bool) -> f64 {
        let entry = if starts_with_push {
            self.emulated_entry_ns
        } else {
            self.stepped_entry_ns
        };
        entry + if allocates { self.return_ns } else { 0.0 }
    }
}

// The functions the calibration probes, one per kind of first instruction: not inlined, kept
// through pointers, and written in assembly so that their first instructions are known.
std::arch::global_asm!(
    ".globl memlens_probe_push",
    ".type memlens_probe_push, @function",
    "memlens_probe_push:",
    "push %rbp",
    "lea 1(%rdi), %rax",
    "pop %rbp",
    "ret",
    ".size memlens_probe_push, . - memlens_probe_push",
    ".globl memlens_probe_step",
    ".type memlens_probe_step, @function",
    "memlens_probe_step:",
    "test %rdi, %rdi",
    "lea 1(%rdi), %rax",
    "ret",
    ".size memlens_probe_step, . - memlens_probe_step",
    options(att_syntax)
);

extern "C" {
    fn memlens_probe_push(x: u64) -> u64;
    fn memlens_probe_step(x: u64) -> u64;
}

/// Nanoseconds per call of `f` over one round.
fn time_calls(f: unsafe extern "C" fn(u64) -> u64) -> f64 {
    let f = black_box(f);
    let started = Instant::now();
    let mut x = 0;
    for _ in 0..CALLS {
        // SAFETY: the calibration functions only add one to their argument.
        x = unsafe { f(x) };
    }
    black_box(x);
    started.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

/// Where the function at `addr` is in the agent's own file: (path to open, offset).
fn own_function(addr: u64) -> Result<(String, u64), String> {
    let pid = std::process::id();
    let maps = memlens_procfs::read_maps(pid).map_err(|e| format!("reading own maps: {e}"))?;
    let mapping = memlens_procfs::maps::find(&maps, addr)
        .filter(|m| m.inode != 0)
        .ok_or_else(|| format!("own code at {addr:#x} is in no file mapping"))?;
    Ok((format!("/proc/{pid}/exe"), mapping.file_offset(addr)))
}

/// The fastest round of `f` with no probe, with the entry probe, and with both probes.
fn rounds(
    trace: &mut AllocTrace,
    f: unsafe extern "C" fn(u64) -> u64,
) -> Result<(f64, f64, f64), AllocTraceError> {
    let calibration = |why: String| AllocTraceError::Attach {
        pid: std::process::id(),
        symbol: "memlens_probe_*".to_string(),
        path: "/proc/self/exe".to_string(),
        why,
    };
    let (path, offset) = own_function(f as *const () as u64).map_err(calibration)?;
    let me = NonZeroU32::new(std::process::id()).ok_or_else(|| calibration("pid 0".into()))?;
    let (mut bare, mut entry, mut both) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        bare = bare.min(time_calls(f));
        let entry_link = trace
            .program("alloc_calibrate")?
            .attach(offset, &path, UProbeScope::OneProcess(me))
            .map_err(|e| calibration(e.to_string()))?;
        entry = entry.min(time_calls(f));
        let return_link = trace
            .program("alloc_calibrate_return")?
            .attach(offset, &path, UProbeScope::OneProcess(me))
            .map_err(|e| calibration(e.to_string()))?;
        both = both.min(time_calls(f));
        trace
            .program("alloc_calibrate_return")?
            .detach(return_link)
            .map_err(|e| calibration(e.to_string()))?;
        trace
            .program("alloc_calibrate")?
            .detach(entry_link)
            .map_err(|e| calibration(e.to_string()))?;
    }
    Ok((bare, entry, both))
}

pub(super) fn measure(trace: &mut AllocTrace) -> Result<ProbeCost, AllocTraceError> {
    let (push_bare, push_entry, push_both) = rounds(trace, memlens_probe_push)?;
    let (step_bare, step_entry, _) = rounds(trace, memlens_probe_step)?;
    Ok(ProbeCost {
        emulated_entry_ns: (push_entry - push_bare).max(0.0),
        stepped_entry_ns: (step_entry - step_bare).max(0.0),
        return_ns: (push_both - push_entry).max(0.0),
    })
}
