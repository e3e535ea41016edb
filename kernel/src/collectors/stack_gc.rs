//! Garbage collection of the kernel's stack map: stacks no live sampled page refers to any more
//! are deleted, so the bounded map keeps room for new stacks instead of filling up with the
//! stacks of long-freed pages (a full map is a lost stack: `stack_map_full`).

use std::collections::HashSet;

use crate::loader::StackMap;

/// Deletes a stack only when two consecutive collections found it unreferenced: a stack captured
/// just before a census may not be in a record yet, but it is by the next one.
#[derive(Default)]
pub struct StackGc {
    unreferenced_last_time: HashSet<u64>,
    /// Stacks deleted so far.
    pub collected: u64,
}

impl StackGc {
    /// Collects once; returns how many stacks remain in the map, and the keys deleted.
    pub fn collect(
        &mut self,
        stacks: &mut StackMap,
        referenced: &HashSet<u64, impl std::hash::BuildHasher>,
    ) -> (usize, Vec<u64>) {
        let ids: Vec<u64> = stacks.0.keys().filter_map(Result::ok).collect();
        let unreferenced: HashSet<u64> = ids
            .iter()
            .copied()
            .filter(|id| !referenced.contains(id))
            .collect();
        let mut removed = Vec::new();
        for &id in unreferenced.intersection(&self.unreferenced_last_time) {
            if stacks.0.remove(&id).is_ok() {
                removed.push(id);
            }
        }
        self.collected += removed.len() as u64;
        self.unreferenced_last_time = unreferenced;
        (ids.len() - removed.len(), removed)
    }
}
