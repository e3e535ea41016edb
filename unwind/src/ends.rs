//! Process ends, handed from the lifecycle drain to the unwinder: a kept process is trusted
//! until a copy taken after its pid's process ended arrives.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Mutex,
};

/// Process ends kept for the unwinder between two of its rounds; beyond, every kept process is
/// checked again instead.
const MAX_PENDING_ENDS: usize = 65_536;

/// Processes that ended (pid and `CLOCK_MONOTONIC` ns), as the lifecycle programs report them,
/// for the unwinder: a copy taken after its pid's process ended is another process's.
#[derive(Debug, Default)]
pub struct ProcessEnds {
    pending: Mutex<Vec<(u32, u64)>>,
    overflowed: AtomicBool,
}

impl ProcessEnds {
    pub fn push(&self, tgid: u32, ts_ns: u64) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.len() < MAX_PENDING_ENDS {
            pending.push((tgid, ts_ns));
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    /// The ends pushed since the last call, and whether some did not fit.
    pub(crate) fn take(&self) -> (Vec<(u32, u64)>, bool) {
        let ends = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        (ends, self.overflowed.swap(false, Ordering::Relaxed))
    }
}
