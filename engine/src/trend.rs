//! Robust linear trend of a memory series, and when it will reach a level.
//!
//! The leak detector fits a line to a cgroup's usage over a lookback window (hours of samples)
//! and extends it over a horizon to ask "when does this hit the limit?". Memory series are hostile
//! to least squares: a batch job's spike, a GC's sawtooth or a cache being dropped drags the OLS
//! slope far from the underlying growth, in either direction. Theil–Sen takes the median of the
//! slopes between all pairs of points, so up to ~29% of arbitrary outliers leave it nearly
//! unmoved, and it needs no tuning. It is hand-written here because it is a few lines, and the
//! one thing a crate would add, an O(n log n) algorithm, is not needed once the input is thinned.

use serde::Serialize;

/// Most points paired by [`theil_sen`]: n·(n−1)/2 pairs, ~80k slopes, a millisecond or so.
/// Denser series are thinned evenly first; the median of the slopes between 400 evenly spread
/// samples is as good a trend estimate over hours as the one between thousands.
const MAX_PAIRED_POINTS: usize = 400;

/// A fitted line: value = intercept + slope * t, t in seconds (f64) on the caller's clock.
///
/// With `t` in Unix seconds the intercept is the value at 1970: exact enough in f64 (a 1 MiB/s
/// slope over 1.7e9 s loses well under a byte), but relative times read better in logs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Fit {
    pub slope_per_s: f64,
    pub intercept: f64,
    /// Finite input points the fit describes (before any thinning).
    pub points: usize,
    /// share of pairwise slopes that are > 0 (0..=1), a monotonicity measure
    ///
    /// A leak climbs between almost any two samples (close to 1); a flat or sawtooth series with
    /// the same median slope shows pairs going both ways, so this tells "steady growth" from
    /// "noise that happens to tilt upward".
    pub rising_share: f64,
}

/// Fits a Theil–Sen line: the slope is the median of the slopes between every pair of points
/// with distinct `t`, the intercept the median of `y − slope·t`.
///
/// Non-finite points (a missed sample read as NaN) are ignored. Returns `None` with fewer than 3
/// finite points (two points are a line, not a trend), when all `t` are equal (no slope exists),
/// or when the fit is not finite (values so large their differences overflow). More than 400
/// points are thinned evenly to 400 before pairing to bound the cost; the points are expected in
/// time order, as samples come, though any order gives a valid (if less evenly spread) fit.
#[must_use]
pub fn theil_sen(points: &[(f64, f64)]) -> Option<Fit> {
    let finite: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(t, y)| t.is_finite() && y.is_finite())
        .collect();
    if finite.len() < 3 {
        return None;
    }
    let paired = thin(&finite, MAX_PAIRED_POINTS);

    let mut slopes = Vec::with_capacity(paired.len() * (paired.len() - 1) / 2);
    for (i, &(t1, y1)) in paired.iter().enumerate() {
        for &(t2, y2) in &paired[i + 1..] {
            let dt = t2 - t1;
            if dt != 0.0 {
                slopes.push((y2 - y1) / dt);
            }
        }
    }
    let rising = slopes.iter().filter(|&&s| s > 0.0).count();
    let rising_share = rising as f64 / slopes.len().max(1) as f64;
    let slope_per_s = median(&mut slopes)?;

    let mut offsets: Vec<f64> = finite.iter().map(|&(t, y)| y - slope_per_s * t).collect();
    let intercept = median(&mut offsets)?;

    (slope_per_s.is_finite() && intercept.is_finite()).then_some(Fit {
        slope_per_s,
        intercept,
        points: finite.len(),
        rising_share,
    })
}

impl Fit {
    /// The line's value at `t`.
    #[must_use]
    pub fn value_at(&self, t: f64) -> f64 {
        self.intercept + self.slope_per_s * t
    }

    /// Seconds from `from_t` until the line reaches `level` (0 when already there); None when it never does (slope <= 0 and below).
    ///
    /// Also `None` for a level no finite time reaches (NaN, infinite), so a caller can compare
    /// the answer with its horizon without further checks.
    #[must_use]
    pub fn time_to_reach(&self, level: f64, from_t: f64) -> Option<f64> {
        let now = self.value_at(from_t);
        if now >= level {
            return Some(0.0);
        }
        if self.slope_per_s <= 0.0 {
            return None;
        }
        let seconds = (level - now) / self.slope_per_s;
        seconds.is_finite().then_some(seconds)
    }

    /// The slope per hour: the unit people think of leaks in ("+40 MiB/h").
    #[must_use]
    pub fn slope_per_hour(&self) -> f64 {
        self.slope_per_s * 3600.0
    }
}

/// `max` points spread evenly over `points`, always keeping the first and the last so the
/// thinned series spans the same window; `points` itself when it is no longer than `max`.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let last = points.len() - 1;
    (0..max)
        .filter_map(|i| points.get(i * last / (max - 1)).copied())
        .collect()
}

/// The median (mean of the two middle values for an even count), by selection in O(n): the
/// order of `values` is scrambled. `None` when empty.
fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let even = values.len().is_multiple_of(2);
    let (below, &mut upper, _) = values.select_nth_unstable_by(values.len() / 2, f64::total_cmp);
    // For an even count the other middle value is the largest of the lower half.
    match below.iter().copied().max_by(f64::total_cmp) {
        Some(lower) if even => Some(lower + (upper - lower) / 2.0),
        _ => Some(upper),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const MIB: f64 = 1024.0 * 1024.0;

    /// Ordinary least squares slope, to show what Theil–Sen protects against.
    fn ols_slope(points: &[(f64, f64)]) -> f64 {
        let n = points.len() as f64;
        let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
        let cov: f64 = points
            .iter()
            .map(|&(t, y)| (t - mean_t) * (y - mean_y))
            .sum();
        let var: f64 = points.iter().map(|&(t, _)| (t - mean_t).powi(2)).sum();
        cov / var
    }

    /// A small deterministic generator (64-bit LCG), so the tests need no crate and never flake.
    struct Lcg(u64);

    impl Lcg {
        /// Uniform in [0, 1).
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn recovers_an_exact_line() {
        let points: Vec<_> = (0..50)
            .map(|i| {
                let t = f64::from(i) * 30.0;
                (t, 200.0 * MIB + 4096.0 * t)
            })
            .collect();
        let fit = theil_sen(&points).unwrap();
        assert!((fit.slope_per_s - 4096.0).abs() < 1e-9, "{fit:?}");
        assert!((fit.intercept - 200.0 * MIB).abs() < 1e-3, "{fit:?}");
        assert_eq!(fit.points, 50);
        assert!((fit.rising_share - 1.0).abs() < f64::EPSILON);
        assert!((fit.slope_per_hour() - 4096.0 * 3600.0).abs() < 1e-6);
        assert!((fit.value_at(100.0) - (200.0 * MIB + 409_600.0)).abs() < 1e-3);
    }

    #[test]
    fn spikes_barely_move_the_slope_unlike_least_squares() {
        // 6 h of a 10 KiB/s leak sampled every minute, with ±1 MiB of noise, and 20% of the
        // samples replaced by spikes of 100..600 MiB (batch jobs, page cache bursts), more of
        // them late in the window as happens when load picks up.
        let slope = 10.0 * 1024.0;
        let mut rng = Lcg(42);
        let points: Vec<_> = (0..360)
            .map(|i| {
                let t = f64::from(i) * 60.0;
                let base = 500.0 * MIB + slope * t + (rng.next() - 0.5) * 2.0 * MIB;
                let spike_chance = 0.1 + 0.2 * f64::from(i) / 360.0;
                if rng.next() < spike_chance {
                    (t, base + (100.0 + 500.0 * rng.next()) * MIB)
                } else {
                    (t, base)
                }
            })
            .collect();
        let fit = theil_sen(&points).unwrap();
        let robust_error = (fit.slope_per_s - slope).abs() / slope;
        let ols_error = (ols_slope(&points) - slope).abs() / slope;
        assert!(robust_error < 0.05, "Theil–Sen off by {robust_error:.3}");
        assert!(
            robust_error * 5.0 < ols_error,
            "Theil–Sen {robust_error:.3} vs OLS {ols_error:.3}"
        );
    }

    #[test]
    fn flat_series_has_no_slope_and_never_reaches_a_higher_level() {
        let points: Vec<_> = (0..100)
            .map(|i| (f64::from(i) * 10.0, 300.0 * MIB))
            .collect();
        let fit = theil_sen(&points).unwrap();
        assert!(fit.slope_per_s.abs() < 1e-9, "{fit:?}");
        assert!(fit.rising_share.abs() < f64::EPSILON);
        assert_eq!(fit.time_to_reach(512.0 * MIB, 1000.0), None);
        assert_eq!(fit.time_to_reach(100.0 * MIB, 1000.0), Some(0.0));
    }

    #[test]
    fn time_to_reach_a_known_line() {
        // 1 MiB/s, at 100 MiB at t = 0: 256 MiB is 156 s away.
        let points: Vec<_> = (0..10)
            .map(|i| (f64::from(i), 100.0 * MIB + MIB * f64::from(i)))
            .collect();
        let fit = theil_sen(&points).unwrap();
        let seconds = fit.time_to_reach(256.0 * MIB, 0.0).unwrap();
        assert!((seconds - 156.0).abs() < 1e-6, "{seconds}");
        // Measured from later on the line, the remaining time shrinks accordingly.
        let later = fit.time_to_reach(256.0 * MIB, 56.0).unwrap();
        assert!((later - 100.0).abs() < 1e-6, "{later}");
        assert_eq!(fit.time_to_reach(50.0 * MIB, 0.0), Some(0.0));
        assert_eq!(fit.time_to_reach(f64::NAN, 0.0), None);
        assert_eq!(fit.time_to_reach(f64::INFINITY, 0.0), None);
    }

    #[test]
    fn too_few_points_or_no_time_spread_give_none() {
        assert_eq!(theil_sen(&[]), None);
        assert_eq!(theil_sen(&[(0.0, 1.0), (1.0, 2.0)]), None);
        assert_eq!(theil_sen(&[(5.0, 1.0), (5.0, 2.0), (5.0, 3.0)]), None);
        // Non-finite points do not count towards the three.
        let with_gaps = [
            (0.0, 1.0),
            (f64::NAN, 2.0),
            (2.0, f64::INFINITY),
            (3.0, 4.0),
        ];
        assert_eq!(theil_sen(&with_gaps), None);
        let fit = theil_sen(&[(0.0, 1.0), (f64::NAN, 2.0), (2.0, 3.0), (3.0, 4.0)]).unwrap();
        assert!((fit.slope_per_s - 1.0).abs() < 1e-12);
        assert_eq!(fit.points, 3);
    }

    #[test]
    fn thinning_keeps_the_slope_on_many_points_and_stays_fast() {
        // A day at ~8.6 s resolution with a sawtooth (a GC freeing 20 MiB every 10 min).
        let slope = 2048.0;
        let points: Vec<_> = (0..10_000)
            .map(|i| {
                let t = f64::from(i) * 8.64;
                (
                    t,
                    1024.0 * MIB + slope * t + (t % 600.0) / 600.0 * 20.0 * MIB,
                )
            })
            .collect();
        let started = Instant::now();
        let fit = theil_sen(&points).unwrap();
        let elapsed = started.elapsed();
        assert_eq!(fit.points, 10_000);
        assert!((fit.slope_per_s - slope).abs() / slope < 0.05, "{fit:?}");
        // ~80k pairs: milliseconds even unoptimised; 10k points unthinned would be 50M pairs.
        assert!(elapsed.as_secs_f64() < 1.0, "took {elapsed:?}");
    }

    #[test]
    fn thin_spreads_evenly_and_keeps_both_ends() {
        let points: Vec<_> = (0..1000).map(|i| (f64::from(i), 0.0)).collect();
        let thinned = thin(&points, 400);
        assert_eq!(thinned.len(), 400);
        assert_eq!(thinned.first(), points.first());
        assert_eq!(thinned.last(), points.last());
        assert!(thinned.windows(2).all(|w| w[1].0 > w[0].0));
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0]), Some(3.0));
        assert_eq!(median(&mut [5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
