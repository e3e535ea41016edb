//! The unwinder: stack copies from the kernel's ring buffer, unwound as they arrive (while their
//! processes still run) into the table the refresh reads; each copy's bytes are released as soon
//! as it is unwound. The refresh drains the ring too, just before its census, so no allocation
//! the census sees is waiting for its stack.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use memlens_kernel::collectors::stack_copies::{StackCopyRing, StackCopyWaiter};
use memlens_unwind::{table::UnwoundTable, Unwinder};

use crate::health::{EndOnDrop, Heartbeat};

/// How often the ring is read. The kernel program wakes the thread only when the ring is half
/// full (a wake-up per copy costs the allocating task microseconds), so this is the usual
/// latency between an allocation and its unwinding; the heartbeat beats at least this often.
const WAIT: Duration = Duration::from_millis(50);
/// Copies unwound per drain before the lock is let go.
const BATCH: usize = 4096;

/// The ring, the unwinder and the table of unwound stacks, shared by the unwinder thread and
/// the refresh.
pub struct Unwinding {
    ring: StackCopyRing,
    unwinder: Unwinder,
    pub table: UnwoundTable,
}

impl Unwinding {
    #[must_use]
    pub fn new(ring: StackCopyRing, unwinder: Unwinder, table: UnwoundTable) -> Unwinding {
        Unwinding {
            ring,
            unwinder,
            table,
        }
    }

    /// Forgets the stacks no slot holds any more, and counts what the table holds.
    pub fn collect(&mut self) {
        self.table.collect();
        let stats = self.unwinder.stats();
        stats
            .held_slots
            .store(self.table.filled() as u64, Ordering::Relaxed);
        stats
            .held_stacks
            .store(self.table.distinct() as u64, Ordering::Relaxed);
    }

    /// Unwinds up to `max` waiting copies into the table; returns how many.
    pub fn drain(&mut self, max: usize) -> usize {
        let Unwinding {
            ring,
            unwinder,
            table,
        } = self;
        unwinder.note_ends();
        ring.drain(max, |sample| {
            let stack = unwinder.unwind(sample);
            table.insert(
                sample.first_superblock,
                sample.superblocks,
                sample.pid,
                sample.ts_ns,
                stack,
            );
        })
    }
}

/// Starts the thread unwinding the copies as they come.
pub fn spawn(
    unwinding: Arc<Mutex<Unwinding>>,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let waiter: Option<StackCopyWaiter> = unwinding.lock().ok().map(|u| u.ring.waiter());
    std::thread::Builder::new()
        .name("unwind".into())
        .spawn(move || {
            let _ended = EndOnDrop(Arc::clone(&heartbeat));
            let Some(waiter) = waiter else { return };
            while !stop.load(Ordering::Relaxed) {
                waiter.wait(WAIT);
                loop {
                    let Ok(mut u) = unwinding.lock() else { return };
                    let n = u.drain(BATCH);
                    drop(u);
                    heartbeat.beat();
                    if n < BATCH {
                        break;
                    }
                }
            }
        })
}
