//! `Attribution::update` over successive censuses of this test process's own allocations: the
//! memo of each frame's attribution gives the same table as attributing afresh, gives way to an
//! unwound copy that arrives later, and to an allocation made since the census.

use std::{collections::HashMap, sync::Arc};

use memlens_model::{
    census::{AllocRecords, Census, PageAlloc, TrackedFrame},
    user_stack::{UnwoundStack, UnwoundStacks},
    StackTable,
};
use memlens_types::stack::{FoundBy, UnwoundFrame};

use super::*;

struct Stacks(HashMap<u64, Vec<u64>>);

impl StackTable for Stacks {
    fn addresses(&self, key: u64) -> Option<Vec<u64>> {
        self.0.get(&key).cloned()
    }
}

struct Records(HashMap<u64, PageAlloc>);

impl AllocRecords for Records {
    fn record(&self, superblock: u64) -> Option<PageAlloc> {
        self.0.get(&superblock).copied()
    }
}

/// Unwound copies by superblock, for whichever allocation asks.
struct Copies(HashMap<u64, Arc<UnwoundStack>>);

impl UnwoundStacks for Copies {
    fn unwound(&self, superblock: u64, _pid: u32, _ts_ns: u64) -> Option<Arc<UnwoundStack>> {
        self.0.get(&superblock).cloned()
    }
}

#[inline(never)]
fn outer() -> u64 {
    std::hint::black_box(1)
}

#[inline(never)]
fn inner() -> u64 {
    std::hint::black_box(2)
}

/// An address inside `f`'s code (in this test binary's mappings).
fn code(f: fn() -> u64) -> u64 {
    f as usize as u64 + 1
}

const KERNEL_KEY: u64 = 11;
const WALK_KEY: u64 = 21;

fn record(ts_ns: u64) -> PageAlloc {
    PageAlloc {
        ts_ns,
        tgid: std::process::id(),
        pid: std::process::id(),
        kernel_stack: KERNEL_KEY,
        user_stack: WALK_KEY,
        ..PageAlloc::default()
    }
}

fn frame(superblock: u64, record_ts: u64) -> TrackedFrame {
    TrackedFrame {
        superblock,
        memcg: MemcgId(5),
        kind: PageKind::Anon,
        record_ts,
    }
}

/// Pages by user stack signature.
fn pages_by_user(view: &LeakView) -> HashMap<u64, f64> {
    let mut by_user = HashMap::new();
    for (key, held) in &view.table.entries {
        *by_user.entry(key.user).or_default() += held.pages;
    }
    by_user
}

#[test]
fn unchanged_frames_keep_their_stacks_and_a_later_copy_or_allocation_replaces_them() {
    // Far in the future: this process started before its allocations.
    let ts = 1u64 << 62;
    let stacks = Stacks(HashMap::from([
        (
            KERNEL_KEY,
            vec![0xffff_ffff_8100_0000, 0xffff_ffff_8100_1000],
        ),
        (WALK_KEY, vec![code(inner), code(outer)]),
    ]));
    let mut records = Records((1..=3).map(|sb| (sb, record(ts + sb))).collect());
    let copy = Arc::new(UnwoundStack::new(
        &[
            UnwoundFrame {
                addr: code(outer),
                found_by: FoundBy::Registers,
            },
            UnwoundFrame {
                addr: code(inner),
                found_by: FoundBy::UnwindTables,
            },
        ],
        None,
    ));
    let mut copies = Copies(HashMap::from([(3, Arc::clone(&copy))]));
    let census = Census {
        shift: 7,
        tracked: (1..=3).map(|sb| frame(sb, ts + sb)).collect(),
        ..Census::default()
    };
    let mut attribution = Attribution::new(100, Arc::default());

    // Frames 1 and 2 by the frame-pointer walk, 3 by its copy.
    let first = attribution.update(&census, &records, &stacks, &copies, 1);
    let first_pages = pages_by_user(&first);
    assert_eq!(first_pages.len(), 2, "{first_pages:?}");
    let mut held: Vec<f64> = first_pages.values().copied().collect();
    held.sort_by(f64::total_cmp);
    assert_eq!(held, [128.0, 256.0]);
    let walked = *first_pages
        .iter()
        .find(|(_, p)| **p == 256.0)
        .map(|(sig, _)| sig)
        .expect("the walked stack");
    assert!(first.user_stacks.contains_key(&walked));
    assert_eq!(first.kernel_stacks.len(), 1);

    // The same census again (from the memo): the same table, and its stacks still in the view.
    let again = attribution.update(&census, &records, &stacks, &copies, 2);
    assert_eq!(pages_by_user(&again), first_pages);
    assert_eq!(again.table.entries, first.table.entries);
    assert_eq!(again.user_stacks.len(), 2);
    assert_eq!(again.kernel_stacks.len(), 1);
    assert_eq!(again.processes.len(), 1);
    assert_eq!(again.alive.len(), 1, "this process runs");

    // Frame 1's copy is unwound now: it leaves the walked stack for the copy's.
    copies.0.insert(1, Arc::clone(&copy));
    let unwound = pages_by_user(&attribution.update(&census, &records, &stacks, &copies, 3));
    assert_eq!(unwound.get(&walked), Some(&128.0), "{unwound:?}");
    assert_eq!(unwound.values().sum::<f64>(), 384.0);

    // Frame 2 was allocated again after the census read it: it is left out, not given the
    // stack of the allocation the census saw.
    records.0.insert(2, record(ts + 100));
    let reallocated = pages_by_user(&attribution.update(&census, &records, &stacks, &copies, 4));
    assert_eq!(reallocated.get(&walked), None, "{reallocated:?}");
    assert_eq!(reallocated.values().sum::<f64>(), 256.0);

    // A later census sees frame 3 allocated again, with no copy this time: the walk, not the
    // earlier allocation's copy.
    copies.0.remove(&3);
    records.0.insert(3, record(ts + 200));
    let census = Census {
        shift: 7,
        tracked: vec![frame(1, ts + 1), frame(3, ts + 200)],
        ..Census::default()
    };
    let later = pages_by_user(&attribution.update(&census, &records, &stacks, &copies, 5));
    assert_eq!(later.get(&walked), Some(&128.0), "{later:?}");
}
