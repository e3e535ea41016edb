//! The refresh's pace. A refresh every `--refresh` (2 s) is what a small host can afford; on a
//! busy node a refresh (census, every cgroup's counters, attribution, history) costs more CPU
//! than it should take from the node's workloads: 150-300 ms every 2 s with 1,000 cgroups and
//! 2,000 processes here. So the refresh thread's own CPU time is measured around each refresh,
//! and when it is more than `--cpu-budget` of the cycle, the next refresh comes later, when it
//! is (at most `MAX_CYCLE` apart). Figures get older on a busy node instead of the node getting
//! slower; `memlens status` says by how much. Work that does not come with the refresh (the
//! unwinder, at the workloads' allocation rate; queries) is not slowed by it, so it is not
//! counted here: stretching cannot reduce it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

/// Longest time between two refreshes, whatever they cost.
pub const MAX_CYCLE: Duration = Duration::from_secs(60);

/// When the next refresh comes.
pub struct Pacing {
    base: Duration,
    budget: f64,
    /// The current cycle in ms, for `memlens status`.
    pub cycle_ms: Arc<AtomicU64>,
}

impl Pacing {
    /// Refreshes every `base`, stretched to keep the agent within `budget` of one core (0: never
    /// stretched).
    #[must_use]
    pub fn new(base: Duration, budget: f64) -> Pacing {
        Pacing {
            base,
            budget,
            cycle_ms: Arc::new(AtomicU64::new(millis(base))),
        }
    }

    /// Runs one refresh and returns how long to wait for the next.
    pub fn refresh(&mut self, refresh: impl FnOnce()) -> Duration {
        let (cpu, wall) = (thread_cpu(), std::time::Instant::now());
        refresh();
        let used = thread_cpu().saturating_sub(cpu);
        let cycle = cycle_for(self.base, self.budget, used);
        self.cycle_ms.store(millis(cycle), Ordering::Relaxed);
        cycle.saturating_sub(wall.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The cycle in which `used` of CPU is `budget` of one core, between `base` and `MAX_CYCLE`.
fn cycle_for(base: Duration, budget: f64, used: Duration) -> Duration {
    if budget <= 0.0 {
        return base;
    }
    let needed = Duration::try_from_secs_f64(used.as_secs_f64() / budget).unwrap_or(MAX_CYCLE);
    needed.clamp(base, MAX_CYCLE.max(base))
}

/// CPU time of the calling thread, user and system.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given; the clock id is always valid.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_is_stretched_until_its_cpu_is_the_budget() {
        let base = Duration::from_secs(2);
        // 20 ms of CPU in 2 s is 1%: within 2%.
        assert_eq!(cycle_for(base, 0.02, Duration::from_millis(20)), base);
        // 300 ms is 15% of 2 s: the next refresh comes 15 s after this one.
        assert_eq!(
            cycle_for(base, 0.02, Duration::from_millis(300)),
            Duration::from_secs(15)
        );
        // Never more than a minute apart; never stretched without a budget.
        assert_eq!(cycle_for(base, 0.02, Duration::from_secs(10)), MAX_CYCLE);
        assert_eq!(cycle_for(base, 0.0, Duration::from_secs(10)), base);
    }

    #[test]
    fn a_costly_refresh_makes_the_next_one_wait_longer() {
        let mut pacing = Pacing::new(Duration::from_millis(100), 0.5);
        let cheap = pacing.refresh(|| {});
        assert!(cheap <= Duration::from_millis(100));
        // About 300 ms of CPU at half a core: the next refresh at least 500 ms later.
        let costly = pacing.refresh(|| {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(300) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        });
        assert!(pacing.cycle_ms.load(Ordering::Relaxed) >= 500, "{costly:?}");
    }
}
