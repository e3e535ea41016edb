//! The unwinder: stack copies from the kernel's ring buffer, unwound as they arrive (while their
//! processes still run) into the table the refresh reads; each copy's bytes are released as soon
//! as it is unwound.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use memlens_kernel::collectors::stack_copies::StackCopyRing;
use memlens_unwind::{table::UnwoundTable, Unwinder};

use crate::health::{EndOnDrop, Heartbeat};

/// How often the ring is read. The kernel program wakes the thread only when the ring is half
/// full (a wake-up per copy costs the allocating task microseconds), so this is the usual
/// latency between an allocation and its unwinding; the heartbeat beats at least this often.
const WAIT: Duration = Duration::from_millis(50);
/// Copies unwound per round before their stacks are published to the table.
const BATCH: usize = 1024;

/// Starts the thread unwinding the copies of `ring` into `table`.
pub fn spawn(
    mut ring: StackCopyRing,
    mut unwinder: Unwinder,
    table: Arc<Mutex<UnwoundTable>>,
    heartbeat: Arc<Heartbeat>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("unwind".into())
        .spawn(move || {
            let _ended = EndOnDrop(Arc::clone(&heartbeat));
            let mut batch = Vec::with_capacity(BATCH);
            while !stop.load(Ordering::Relaxed) {
                ring.wait(WAIT);
                loop {
                    let n = ring.drain(BATCH, |sample| {
                        let stack = unwinder.unwind(sample);
                        batch.push((
                            sample.first_superblock,
                            sample.superblocks,
                            sample.pid,
                            sample.ts_ns,
                            stack,
                        ));
                    });
                    if !batch.is_empty() {
                        if let Ok(mut table) = table.lock() {
                            for (first, count, pid, ts_ns, stack) in batch.drain(..) {
                                table.insert(first, count, pid, ts_ns, stack);
                            }
                        }
                        batch.clear();
                    }
                    heartbeat.beat();
                    if n < BATCH {
                        break;
                    }
                }
            }
        })
}
