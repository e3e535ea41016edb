//! The unwound stacks of the allocations on record, one slot per `PAGE_ALLOCS` entry.
//!
//! The kernel keeps one record per superblock and a newer allocation overwrites it; the table
//! mirrors that: a slot holds the stack of the latest unwound copy for its superblock, tagged
//! with the allocation's thread and time, and is used only while the record carries the same
//! tag. So the table is bounded by the record array by construction. Identical stacks are
//! stored once. The slots written since the last [`UnwoundTable::take_changed`] are remembered,
//! for the agent to save (the kernel's records outlive it, the copies do not), and so is which
//! stacks are saved already, under which key: a busy node unwinds about 15,000 new stacks a
//! minute, and saving only those, appended under growing keys, and deleting by key the ones no
//! slot holds any more, costs a fraction of what finding each stack's place by its hash did.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use memlens_model::user_stack::{
    SavedSlot, SavedStackId, UnwoundChanges, UnwoundStack, UnwoundStacks,
};

#[derive(Clone)]
struct Slot {
    pid: u32,
    ts_ns: u64,
    stack: Arc<UnwoundStack>,
}

/// Unwound stacks by superblock.
pub struct UnwoundTable {
    slots: Vec<Option<Slot>>,
    /// Each distinct stack once, with its key once it has been saved.
    interned: HashMap<Arc<UnwoundStack>, Option<SavedStackId>>,
    /// Superblocks written since the last `take_changed`.
    changed: HashSet<u64>,
    /// Saved stacks no slot holds any more, to be deleted at the next save.
    forgotten: Vec<SavedStackId>,
    /// The key the next newly saved stack gets.
    next_key: u64,
    /// Slots written.
    filled: usize,
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
            changed: HashSet::new(),
            forgotten: Vec::new(),
            next_key: 1,
            filled: 0,
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
        let stack = self.intern(Arc::new(stack), None);
        for i in 0..u64::from(superblocks) {
            let superblock = first_superblock + i;
            if self.put(superblock, pid, ts_ns, Arc::clone(&stack)) {
                self.changed.insert(superblock);
            }
        }
    }

    /// Puts back a stack saved by an earlier agent for the record it was unwound for.
    pub fn restore(&mut self, slot: SavedSlot, stack: Arc<UnwoundStack>) {
        self.next_key = self.next_key.max(slot.stack.0.saturating_add(1));
        let stack = self.intern(stack, Some(slot.stack));
        self.put(slot.superblock, slot.pid, slot.ts_ns, stack);
    }

    /// What to save: the slots written since the last call, the stacks they hold that were not
    /// saved before (given their keys now), and the saved stacks no slot holds any more (as of
    /// the last [`UnwoundTable::collect`]). Slots come by superblock and new stacks by key, the
    /// order they are stored in.
    pub fn take_changed(&mut self) -> UnwoundChanges {
        let mut superblocks: Vec<u64> = self.changed.drain().collect();
        superblocks.sort_unstable();
        let mut changes = UnwoundChanges {
            forgotten: std::mem::take(&mut self.forgotten),
            ..UnwoundChanges::default()
        };
        changes.forgotten.sort_unstable();
        for superblock in superblocks {
            let Some(slot) = self
                .slots
                .get(usize::try_from(superblock).unwrap_or(usize::MAX))
                .and_then(Option::as_ref)
            else {
                continue;
            };
            let key = self.interned.entry(Arc::clone(&slot.stack)).or_default();
            let key = *key.get_or_insert_with(|| {
                let key = SavedStackId(self.next_key);
                self.next_key += 1;
                changes.stacks.push((key, Arc::clone(&slot.stack)));
                key
            });
            changes.slots.push(SavedSlot {
                superblock,
                pid: slot.pid,
                ts_ns: slot.ts_ns,
                stack: key,
            });
        }
        changes
    }

    /// The last save did not happen: everything is saved again next time, under new keys (the
    /// database may hold some of the old ones; a stack under a key no slot names is deleted when
    /// the next agent loads them).
    pub fn save_failed(&mut self) {
        for key in self.interned.values_mut() {
            *key = None;
        }
        self.forgotten.clear();
        self.changed = (0..self.slots.len() as u64)
            .filter(|&superblock| self.slot(superblock).is_some())
            .collect();
    }

    /// Superblock `superblock`'s slot, if written.
    fn slot(&self, superblock: u64) -> Option<&Slot> {
        self.slots.get(usize::try_from(superblock).ok()?)?.as_ref()
    }

    fn intern(&mut self, stack: Arc<UnwoundStack>, key: Option<SavedStackId>) -> Arc<UnwoundStack> {
        match self.interned.get_key_value(&stack) {
            Some((kept, _)) => Arc::clone(kept),
            None => {
                self.interned.insert(Arc::clone(&stack), key);
                stack
            }
        }
    }

    /// Writes one slot; false when the superblock is outside the table.
    fn put(&mut self, superblock: u64, pid: u32, ts_ns: u64, stack: Arc<UnwoundStack>) -> bool {
        let slot = usize::try_from(superblock)
            .ok()
            .and_then(|i| self.slots.get_mut(i));
        match slot {
            Some(slot) => {
                if slot.replace(Slot { pid, ts_ns, stack }).is_none() {
                    self.filled += 1;
                }
                true
            }
            None => {
                self.out_of_range += 1;
                false
            }
        }
    }

    /// Forgets the stacks nothing refers to any more (the saved ones at the next save).
    pub fn collect(&mut self) {
        let forgotten = &mut self.forgotten;
        self.interned.retain(|stack, key| {
            let kept = Arc::strong_count(stack) > 1;
            if let (false, Some(key)) = (kept, key) {
                forgotten.push(*key);
            }
            kept
        });
    }

    /// Distinct stacks held.
    #[must_use]
    pub fn distinct(&self) -> usize {
        self.interned.len()
    }

    /// Slots holding a stack.
    #[must_use]
    pub fn filled(&self) -> usize {
        self.filled
    }
}

/// A copy of some of the table's slots (pointers to the stacks, not the stacks), read by the
/// refresh while the unwinder goes on filling the table: the attribution of a busy node's census
/// takes longer than the stack-copy ring lasts without a reader. Only the census's held frames are
/// copied: the table has a slot for every sampled frame (3 million at 1 in 2 here), and copying
/// all of them each refresh took more memory and time than the attribution itself.
pub struct UnwoundSlots(Vec<(u64, Slot)>);

impl UnwoundTable {
    /// The slots of `superblocks` (in any order) as they are now.
    #[must_use]
    pub fn snapshot_of(&self, superblocks: impl IntoIterator<Item = u64>) -> UnwoundSlots {
        let mut slots: Vec<(u64, Slot)> = superblocks
            .into_iter()
            .filter_map(|superblock| Some((superblock, self.slot(superblock)?.clone())))
            .collect();
        slots.sort_unstable_by_key(|(superblock, _)| *superblock);
        slots.dedup_by_key(|(superblock, _)| *superblock);
        UnwoundSlots(slots)
    }
}

impl UnwoundStacks for UnwoundSlots {
    fn unwound(&self, superblock: u64, pid: u32, ts_ns: u64) -> Option<Arc<UnwoundStack>> {
        let i = self.0.binary_search_by_key(&superblock, |(s, _)| *s).ok()?;
        let slot = &self.0.get(i)?.1;
        (slot.pid == pid && slot.ts_ns == ts_ns).then(|| Arc::clone(&slot.stack))
    }
}

impl UnwoundStacks for UnwoundTable {
    fn unwound(&self, superblock: u64, pid: u32, ts_ns: u64) -> Option<Arc<UnwoundStack>> {
        let slot = self.slot(superblock)?;
        (slot.pid == pid && slot.ts_ns == ts_ns).then(|| Arc::clone(&slot.stack))
    }
}

#[cfg(test)]
mod tests {
    use memlens_model::user_stack::{FoundBy, UnwoundFrame};

    use super::*;

    fn stack(addr: u64) -> UnwoundStack {
        UnwoundStack::new(
            &[UnwoundFrame {
                addr,
                found_by: FoundBy::Registers,
            }],
            None,
        )
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
            table
                .unwound(3, 12, 2000)
                .and_then(|s| s.frame(0))
                .map(|f| f.addr),
            Some(0x2)
        );
        assert_eq!(table.filled(), 4, "superblocks 2-5, one written twice");
        table.insert(7, 2, 1, 1, stack(0x1));
        assert_eq!(table.out_of_range, 1);
    }

    #[test]
    fn written_slots_are_handed_out_once_and_restored_ones_not_at_all() {
        let mut table = UnwoundTable::new(8);
        table.insert(3, 1, 9, 900, stack(0x3));
        table.insert(2, 2, 10, 1000, stack(0x1));
        table.insert(4, 1, 11, 2000, stack(0x1));
        let changes = table.take_changed();
        let slot = |superblock, pid, ts_ns, key| SavedSlot {
            superblock,
            pid,
            ts_ns,
            stack: SavedStackId(key),
        };
        assert_eq!(
            changes.slots,
            [
                slot(2, 10, 1000, 1),
                slot(3, 10, 1000, 1),
                slot(4, 11, 2000, 1)
            ],
            "by superblock; superblock 3 holds the later allocation"
        );
        assert_eq!(
            changes
                .stacks
                .iter()
                .map(|(key, s)| (key.0, s.frame(0).map_or(0, |f| f.addr)))
                .collect::<Vec<_>>(),
            [(1, 0x1)],
            "0x3 was overwritten before it was saved"
        );
        assert!(table.take_changed().is_empty());
        table.restore(slot(5, 12, 3000, 7), Arc::new(stack(0x2)));
        assert!(table.take_changed().is_empty());
        assert!(table.unwound(5, 12, 3000).is_some());
        table.insert(6, 1, 13, 4000, stack(0x2));
        table.insert(7, 1, 14, 5000, stack(0x4));
        let changes = table.take_changed();
        assert_eq!(
            changes.slots,
            [slot(6, 13, 4000, 7), slot(7, 14, 5000, 8)],
            "the restored stack keeps its key; new keys come after it"
        );
        assert_eq!(changes.stacks.len(), 1);
    }

    #[test]
    fn saved_stacks_no_slot_holds_are_forgotten_once() {
        let mut table = UnwoundTable::new(4);
        table.insert(0, 1, 1, 1, stack(0x1));
        table.insert(1, 1, 1, 2, stack(0x2));
        table.take_changed();
        // Both superblocks taken by a newer allocation.
        table.insert(0, 2, 1, 3, stack(0x3));
        table.collect();
        let changes = table.take_changed();
        assert_eq!(changes.forgotten, [SavedStackId(1), SavedStackId(2)]);
        assert_eq!(changes.stacks.len(), 1);
        table.collect();
        assert!(table.take_changed().forgotten.is_empty());
        table.save_failed();
        let again = table.take_changed();
        assert_eq!(
            again.slots.iter().map(|s| s.stack.0).collect::<Vec<_>>(),
            [4, 4],
            "after a failed save, every slot and stack again, under new keys"
        );
        assert_eq!(again.stacks.len(), 1);
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

    #[test]
    fn a_snapshot_holds_the_asked_slots_and_answers_like_the_table() {
        let mut table = UnwoundTable::new(8);
        table.insert(1, 1, 10, 1000, stack(0x1));
        table.insert(4, 2, 11, 2000, stack(0x2));
        let slots = table.snapshot_of([5, 1, 7, 5, 9]);
        assert_eq!(
            slots.0.len(),
            2,
            "7 has no slot, 9 is out of range, 5 is asked twice"
        );
        assert_eq!(
            slots
                .unwound(5, 11, 2000)
                .and_then(|s| s.frame(0))
                .map(|f| f.addr),
            Some(0x2)
        );
        assert!(slots.unwound(1, 10, 1000).is_some());
        assert!(slots.unwound(1, 10, 1001).is_none(), "a later allocation");
        assert!(slots.unwound(4, 11, 2000).is_none(), "not asked for");
        // The unwinder goes on: the snapshot does not change.
        table.insert(1, 1, 12, 3000, stack(0x3));
        assert!(slots.unwound(1, 10, 1000).is_some());
    }
}
