//! The refresh's pace. A refresh every `--refresh` (2 s) is what a small host can afford; on a
//! busy node a refresh (census, every cgroup's counters, attribution, history) costs more CPU
//! than it should take from the node's workloads: 400-600 ms with 1,000 cgroups and 2,000
//! processes here. `--cpu-budget` is the whole agent's share of a core, so the refresh gets what
//! the rest of the agent leaves of it: the refresh thread's own CPU time is measured around each
//! refresh, the rest of the agent's (the unwinder, at the workloads' allocation rate; queries;
//! the exporters) over the cycle before it, and the next refresh comes when the refresh's cost
//! fits in what is left (at most `MAX_CYCLE` apart). Figures get older on a busy node instead of
//! the node getting slower; `memlens status` says by how much. The rest of the agent is not
//! slowed: when it alone takes the budget, refreshes come every `MAX_CYCLE`.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Longest time between two refreshes, whatever they cost.
pub const MAX_CYCLE: Duration = Duration::from_secs(60);

/// When the next refresh comes.
pub struct Pacing {
    base: Duration,
    budget: f64,
    /// The previous refresh: when it started, the process's CPU time then, and its own cost.
    previous: Option<(Instant, Duration, Duration)>,
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
            previous: None,
            cycle_ms: Arc::new(AtomicU64::new(millis(base))),
        }
    }

    /// Runs one refresh and returns how long to wait for the next.
    pub fn refresh(&mut self, refresh: impl FnOnce()) -> Duration {
        let (wall, process) = (Instant::now(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID));
        let cpu = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
        refresh();
        let used = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(cpu);
        // The rest of the agent over the last cycle: its CPU minus the last refresh's.
        let others = self.previous.map_or(0.0, |(at, process_at, refresh_cost)| {
            let elapsed = wall.duration_since(at).as_secs_f64();
            let spent = process
                .saturating_sub(process_at)
                .saturating_sub(refresh_cost);
            if elapsed > 0.0 {
                spent.as_secs_f64() / elapsed
            } else {
                0.0
            }
        });
        self.previous = Some((wall, process, used));
        let cycle = cycle_for(self.base, self.budget, used, others);
        self.cycle_ms.store(millis(cycle), Ordering::Relaxed);
        cycle.saturating_sub(wall.elapsed())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The cycle in which a refresh costing `used` of CPU, beside the rest of the agent at `others`
/// of a core, keeps the agent at `budget` of one core; between `base` and `MAX_CYCLE`.
fn cycle_for(base: Duration, budget: f64, used: Duration, others: f64) -> Duration {
    if budget <= 0.0 {
        return base;
    }
    let left = budget - others;
    if left <= 0.0 {
        return MAX_CYCLE.max(base);
    }
    let needed = Duration::try_from_secs_f64(used.as_secs_f64() / left).unwrap_or(MAX_CYCLE);
    needed.clamp(base, MAX_CYCLE.max(base))
}

/// CPU time of the calling thread or of the whole process (`clock`), user and system.
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given; both clock ids always exist.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
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
        let ms = Duration::from_millis;
        // 20 ms of CPU in 2 s is 1%: within 2%.
        assert_eq!(cycle_for(base, 0.02, ms(20), 0.0), base);
        // 300 ms is 15% of 2 s: the next refresh comes 15 s after this one.
        assert_eq!(cycle_for(base, 0.02, ms(300), 0.0), Duration::from_secs(15));
        // The rest of the agent at 1% leaves the refresh 1%: 30 s.
        assert_eq!(
            cycle_for(base, 0.02, ms(300), 0.01),
            Duration::from_secs(30)
        );
        // Never more than a minute apart, even when the rest takes the whole budget; never
        // stretched without a budget.
        assert_eq!(
            cycle_for(base, 0.02, Duration::from_secs(10), 0.0),
            MAX_CYCLE
        );
        assert_eq!(cycle_for(base, 0.02, ms(20), 0.03), MAX_CYCLE);
        assert_eq!(cycle_for(base, 0.0, Duration::from_secs(10), 0.5), base);
    }

    #[test]
    fn a_costly_refresh_makes_the_next_one_wait_longer() {
        let mut pacing = Pacing::new(Duration::from_millis(100), 0.5);
        let cheap = pacing.refresh(|| {});
        assert!(cheap <= Duration::from_millis(100));
        // About 300 ms of CPU at half a core: the next refresh at least 500 ms later.
        let costly = pacing.refresh(|| {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < Duration::from_millis(300) {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        });
        assert!(pacing.cycle_ms.load(Ordering::Relaxed) >= 500, "{costly:?}");
    }
}
