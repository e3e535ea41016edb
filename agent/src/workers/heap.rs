//! The agent's heap as the host sees it. The refresh builds a census, a leak view and its
//! history every cycle and frees the previous ones: with glibc's allocator that freed memory
//! stays in the process (RSS 85 MiB above the live heap on the busy-node bench) unless it is
//! given back, and every thread that allocates gets an arena of its own to fragment.

use std::{
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

/// How often the free memory is given back between refreshes too: the unwinder, the symbolizer
/// and the API's answers free 20-25 MiB in a minute on the busy-node bench, which stayed in the
/// process until the next refresh's trim (RSS rising 105 -> 129 MiB between two refreshes).
const TRIM_INTERVAL: Duration = Duration::from_secs(10);

/// Allocations from this size up get a mapping of their own, given back whole when freed.
/// glibc raises its threshold to the largest block freed so far (up to 32 MiB), after which the
/// refresh's tables of several MiB, built and freed every cycle, come from the heap and leave
/// holes in it that trimming cannot return.
const MMAP_THRESHOLD: i32 = 256 * 1024;

/// Caps glibc's arenas at two: the agent's threads (refresh, unwinder, API, engine, exporters)
/// would otherwise get up to eight per core, each keeping its own freed memory. Fixes the
/// threshold for allocations that get their own mapping (see [`MMAP_THRESHOLD`]).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes a parameter number and a value; it is called before other threads
    // start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives the heap's free memory back to the system (after a refresh freed the previous
/// cycle's census and view). Costs a walk of the free lists: a few ms, inside the refresh's
/// paced CPU.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits `wait` for a message on `stop`, giving the free memory back every [`TRIM_INTERVAL`]
/// meanwhile. False when `stop` spoke (or its sender is gone).
pub fn wait_trimming(stop: &Receiver<()>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match stop.recv_timeout(left.min(TRIM_INTERVAL)) {
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() < deadline {
                    release_free_memory();
                }
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn a_wait_ends_at_its_time_or_when_told_to_stop() {
        let (tx, rx) = mpsc::channel();
        let started = Instant::now();
        assert!(wait_trimming(&rx, Duration::from_millis(50)));
        assert!(started.elapsed() >= Duration::from_millis(50));
        tx.send(()).expect("send");
        assert!(!wait_trimming(&rx, Duration::from_secs(60)));
        drop(tx);
        assert!(!wait_trimming(&rx, Duration::from_secs(60)));
    }
}
