//! Whether the agent still works, for `/healthz` (the DaemonSet's liveness probe): each worker
//! beats after every round of its work, and the answer is unhealthy (with the reason) when a
//! worker has ended or its last beat is older than its bound. A dead refresh thread must not
//! leave the agent serving stale data forever behind an "ok".

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// One worker's pulse.
#[derive(Debug)]
pub struct Heartbeat {
    name: &'static str,
    /// Longest time between two beats of a working worker.
    bound: Duration,
    /// Milliseconds since `start` at the last beat.
    last_ms: AtomicU64,
    ended: AtomicBool,
    start: Instant,
}

impl Heartbeat {
    /// A beat now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The worker's loop ended (for whatever reason: it is not coming back).
    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    /// What is wrong with this worker at `now`, if anything.
    fn problem(&self, now: Instant) -> Option<String> {
        if self.ended.load(Ordering::Relaxed) {
            return Some(format!("the {} worker has stopped", self.name));
        }
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        let silent = now.saturating_duration_since(last);
        (silent > self.bound).then(|| {
            format!(
                "the {} worker's last round was {} ago (bound {})",
                self.name,
                humantime::format_duration(Duration::from_secs(silent.as_secs())),
                humantime::format_duration(self.bound)
            )
        })
    }
}

/// Ends its heartbeat when dropped: a worker's loop holds one, so a return or a panic both
/// show as "stopped".
pub struct EndOnDrop(pub Arc<Heartbeat>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The heartbeats of every worker.
#[derive(Clone, Debug, Default)]
pub struct Health {
    workers: Vec<Arc<Heartbeat>>,
}

impl Health {
    /// Registers a worker that beats at least every `bound`; it counts as having beaten now.
    pub fn worker(&mut self, name: &'static str, bound: Duration) -> Arc<Heartbeat> {
        let heartbeat = Arc::new(Heartbeat {
            name,
            bound,
            last_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            start: Instant::now(),
        });
        self.workers.push(Arc::clone(&heartbeat));
        heartbeat
    }

    /// Ok, or every problem found.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let now = Instant::now();
        let problems: Vec<String> = self.workers.iter().filter_map(|w| w.problem(now)).collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_or_ended_worker_is_unhealthy() {
        let mut health = Health::default();
        let census = health.worker("census", Duration::from_millis(50));
        let engine = health.worker("engine", Duration::from_secs(60));
        assert_eq!(health.check(), Ok(()));
        std::thread::sleep(Duration::from_millis(80));
        let problems = health.check().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("the census worker's last round was"),
            "{problems:?}"
        );
        census.beat();
        assert_eq!(health.check(), Ok(()));
        drop(EndOnDrop(Arc::clone(&engine)));
        assert_eq!(
            health.check().unwrap_err(),
            ["the engine worker has stopped"]
        );
    }
}
