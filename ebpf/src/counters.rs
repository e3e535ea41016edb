//! Per-CPU counters of what the programs did and, above all, what they failed to record.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use memlens_common::counters::{Counter, COUNTER_COUNT};

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Adds `n` to `counter` on this CPU.
#[inline(always)]
pub fn add(counter: Counter, n: u64) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; programs do not nest on one CPU for these hooks.
        unsafe { *value += n };
    }
}
