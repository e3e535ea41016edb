//! The unwound stacks of the allocations on record, one slot per `PAGE_ALLOCS` entry.
//!
//! The kernel keeps one record per superblock and a newer allocation overwrites it; the table
//! mirrors that: a slot holds the stack of the latest unwound copy for its superblock, tagged
//! with the allocation's thread and time, and is used only while the record carries the same
//! tag. So the table is bounded by the record array by construction. Identical stacks are
//! stored once.

use std::{collections::HashMap, sync::Arc};

use memlens_model::user_stack::{UnwoundStack, UnwoundStacks};

#[derive(Clone)]
struct Slot {
    pid: u32,
    ts_ns: u64,
    stack: Arc<UnwoundStack>,
}

/// Unwound stacks by superblock.
pub struct UnwoundTable {
    slots: Vec<Option<Slot>>,
    interned: HashMap<Arc<UnwoundStack>, ()>,
    /// Copies whose superblocks were outside the table (not expected: it is sized like the
    /// record array).
    pub out_of_range: u64,
}

impl UnwoundTable {
    /// A table for `superblocks` records.
    #[must_use]
    pub fn new(superblocks: u64) -> UnwoundTable {
        UnwoundTable {
            slots: vec![None; usize::try_from(superblocks).unwrap_or(0)],
            interned: HashMap::new(),
            out_of_range: 0,
        }
    }

    /// Records `stack` for the allocation by `pid` at `ts_ns`, in each of its superblocks.
    pub fn insert(
        &mut self,
        first_superblock: u64,
        superblocks: u32,
        pid: u32,
        ts_ns: u64,
        stack: UnwoundStack,
    ) {
        let stack = match self.interned.get_key_value(&stack) {
            Some((kept, ())) => Arc::clone(kept),
            None => {
                let stack = Arc::new(stack);
                self.interned.insert(Arc::clone(&stack), ());
                stack
            }
        };
        for i in 0..u64::from(superblocks) {
            let slot = usize::try_from(first_superblock + i)
                .ok()
                .and_then(|i| self.slots.get_mut(i));
            match slot {
                Some(slot) => {
                    *slot = Some(Slot {
                        pid,
                        ts_ns,
                        stack: Arc::clone(&stack),
                    });
                }
                None => self.out_of_range += 1,
            }
        }
    }

    /// Forgets the stacks no slot refers to any more.
    pub fn collect(&mut self) {
        self.interned
            .retain(|stack, ()| Arc::strong_count(stack) > 1);
    }

    /// Distinct stacks held.
    #[must_use]
    pub fn distinct(&self) -> usize {
        self.interned.len()
    }
}

impl UnwoundStacks for UnwoundTable {
    fn unwound(&self, superblock: u64, pid: u32, ts_ns: u64) -> Option<Arc<UnwoundStack>> {
        let slot = self
            .slots
            .get(usize::try_from(superblock).ok()?)?
            .as_ref()?;
        (slot.pid == pid && slot.ts_ns == ts_ns).then(|| Arc::clone(&slot.stack))
    }
}

#[cfg(test)]
mod tests {
    use memlens_model::user_stack::{FoundBy, UnwoundFrame};

    use super::*;

    fn stack(addr: u64) -> UnwoundStack {
        UnwoundStack {
            frames: vec![UnwoundFrame {
                addr,
                found_by: FoundBy::Registers,
            }],
            stop: None,
        }
    }

    #[test]
    fn a_slot_answers_only_for_the_allocation_it_was_unwound_for() {
        let mut table = UnwoundTable::new(8);
        table.insert(2, 4, 10, 1000, stack(0x1));
        assert!(table.unwound(3, 10, 1000).is_some());
        assert!(table.unwound(5, 10, 1000).is_some());
        assert!(
            table.unwound(6, 10, 1000).is_none(),
            "outside the allocation"
        );
        assert!(table.unwound(3, 10, 1001).is_none(), "a later allocation");
        assert!(table.unwound(3, 11, 1000).is_none(), "another thread");
        // A newer allocation of superblock 3 takes its slot.
        table.insert(3, 1, 12, 2000, stack(0x2));
        assert!(table.unwound(3, 10, 1000).is_none());
        assert_eq!(
            table.unwound(3, 12, 2000).map(|s| s.frames[0].addr),
            Some(0x2)
        );
        table.insert(7, 2, 1, 1, stack(0x1));
        assert_eq!(table.out_of_range, 1);
    }

    #[test]
    fn identical_stacks_are_kept_once_and_collected_when_unused() {
        let mut table = UnwoundTable::new(4);
        table.insert(0, 1, 1, 1, stack(0x1));
        table.insert(1, 1, 1, 2, stack(0x1));
        assert_eq!(table.distinct(), 1);
        table.insert(0, 2, 1, 3, stack(0x2));
        table.collect();
        assert_eq!(
            table.distinct(),
            1,
            "0x1 is referred to by no slot any more"
        );
    }
}
