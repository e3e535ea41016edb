//! The maps the collectors read, in the types they read them through.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, PerCpuArray};
use memlens_common::{counters::Counter, page::StackFrames};
use memlens_model::StackTable;

/// The programs' per-CPU counters (see `memlens_common::counters`), readable from any thread.
pub struct KernelCounters(pub(super) PerCpuArray<MapData, u64>);

impl KernelCounters {
    /// Every counter, summed over CPUs.
    #[must_use]
    pub fn totals(&self) -> BTreeMap<String, u64> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let total = self
                    .0
                    .get(&(c as u32), 0)
                    .map(|per_cpu| per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
                    .unwrap_or(0);
                (c.name().to_string(), total)
            })
            .collect()
    }
}

/// The programs' stack map: stack key (a hash of the stack) to instruction addresses.
pub struct StackMap(pub(crate) HashMap<MapData, u64, StackFrames>);

impl StackTable for StackMap {
    fn addresses(&self, key: u64) -> Option<Vec<u64>> {
        let frames = self.0.get(&key, 0).ok()?;
        Some(
            frames
                .ips
                .iter()
                .copied()
                .take_while(|&ip| ip != 0)
                .collect(),
        )
    }
}
