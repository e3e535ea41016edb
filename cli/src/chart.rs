//! A terminal chart of a cgroup's memory: the usage history, the forecast line continued over the
//! horizon, and the limit, for `memlens events show ID`.
//!
//! A leak event is a claim ("at this rate the limit is 40 min away"); the chart lets the reader
//! judge it at a glance: a steady climb, or a sawtooth the fit tilted. Drawing is left to
//! `textplots` (braille cells: 2×4 dots per character, so a 60×16 chart has 120×64 points of
//! resolution), which renders through `Display`, so the chart is a `String` that tests can read
//! and the CLI can print or embed. textplots draws every shape as a solid line or bare points,
//! so the forecast (dotted) and the limit (dashed) are drawn here as sequences of points.
//!
//! textplots panics on a canvas under 32×3 dots, and divides by the axis spans; everything it is
//! handed is therefore clamped, made finite and given a non-zero span first.

use std::fmt::Write as _;

use textplots::{
    AxisBuilder, Chart, LabelBuilder, LabelFormat, LineStyle, Plot, Shape, TickDisplay,
    TickDisplayBuilder,
};

const MIB: f64 = 1024.0 * 1024.0;

/// Plot area bounds, in character cells. The lower ones keep textplots' minimum canvas and room
/// for the x axis labels (each up to 13 characters, both on one line of `width` characters);
/// the upper ones keep a bogus terminal size from building a megabyte of braille.
const MIN_COLUMNS: u32 = 24;
const MAX_COLUMNS: u32 = 400;
const MIN_ROWS: u32 = 4;
const MAX_ROWS: u32 = 100;

/// Dots between the dots of the forecast line, and the dash/gap length of the limit line
/// (4 dots = 2 characters, so dashes stay aligned to cells and read as `── ──`).
const FORECAST_DOT_SPACING: f64 = 3.0;
const LIMIT_DASH: u32 = 4;

/// Values beyond this (in minutes or MiB) are not plotted: far past anything real, and small
/// enough that spans and paddings stay finite in f32, the type textplots computes in.
const MAX_PLOTTED: f64 = 1e30;

/// What to draw. Times are seconds relative to now (negative = past), values bytes.
pub struct ChartInput<'a> {
    /// Usage samples (seconds relative to now, negative = past; bytes), in any order; non-finite
    /// samples are skipped.
    pub history: &'a [(f64, f64)],
    /// The forecast: a line from (t0, bytes) to (t1, bytes), typically from the start of the
    /// lookback window to the end of the horizon.
    pub forecast: Option<((f64, f64), (f64, f64))>,
    /// The memory limit, in bytes, drawn as a horizontal line.
    pub limit: Option<f64>,
    /// Width of the plot area in terminal columns (clamped to 24..=400).
    pub width: u32,
    /// Height of the plot area in terminal rows (clamped to 4..=100, rounded down to a multiple
    /// of 4 so that every 4th row carries a y label).
    pub height: u32,
}

/// Renders the chart: y in MiB, x in minutes relative to now (a dotted vertical line marks now),
/// then a legend line. An empty history (or one with no finite sample) gives a one-line
/// "no history" message instead. Always ends with a newline.
#[must_use]
pub fn render(input: &ChartInput) -> String {
    let mut history: Vec<(f64, f64)> = input
        .history
        .iter()
        .filter_map(|&(t, bytes)| to_plot_units(t, bytes))
        .collect();
    if history.is_empty() {
        return "no history to chart\n".to_owned();
    }
    // Lines join points in slice order: sort so that a shuffled history does not zigzag.
    history.sort_by(|a, b| a.0.total_cmp(&b.0));
    let forecast = input
        .forecast
        .and_then(|((t0, b0), (t1, b1))| Some((to_plot_units(t0, b0)?, to_plot_units(t1, b1)?)));
    let limit = input
        .limit
        .map(|bytes| bytes / MIB)
        .filter(|mib| mib.is_finite() && mib.abs() < MAX_PLOTTED);

    // The view: every point drawn, and now, so the "now" line always shows.
    let mut xs: Vec<f64> = history.iter().map(|p| p.0).collect();
    let mut ys: Vec<f64> = history.iter().map(|p| p.1).collect();
    xs.push(0.0);
    if let Some((a, b)) = forecast {
        xs.extend([a.0, b.0]);
        ys.extend([a.1, b.1]);
    }
    ys.extend(limit);
    // Time runs edge to edge, so the x labels are the window's ends; values get a margin.
    let (x_lo, x_hi) = padded_range(&xs, 0.0, false);
    let (y_lo, y_hi) = padded_range(&ys, 0.05, true);

    let columns = input.width.clamp(MIN_COLUMNS, MAX_COLUMNS);
    let rows = input.height.clamp(MIN_ROWS, MAX_ROWS) / 4 * 4;
    let (dots_x, dots_y) = (columns * 2, rows * 4);
    let view = View {
        x: (x_lo, x_hi),
        y: (y_lo, y_hi),
        dots: (f64::from(dots_x), f64::from(dots_y)),
    };

    let usage_points = to_f32(&history);
    let forecast_points = forecast.map_or_else(Vec::new, |(a, b)| view.dotted(a, b));
    let limit_points = limit.map_or_else(Vec::new, |mib| view.dashed(mib));
    // A single sample makes no line segment: draw it as a point.
    let usage = if usage_points.len() > 1 {
        Shape::Lines(&usage_points)
    } else {
        Shape::Points(&usage_points)
    };
    let forecast_shape = Shape::Points(&forecast_points);
    let limit_shape = Shape::Points(&limit_points);

    // Enough decimals that the y labels (one every 4 rows) differ, even on a nearly flat series.
    let label_step = (y_hi - y_lo) / f64::from(rows / 4);
    let decimals = (-label_step.log10().floor()).clamp(1.0, 3.0) as usize;
    // Lossy casts are fine: every bound is finite and well inside f32 (MAX_PLOTTED).
    let mut chart = Chart::new_with_y_range(
        dots_x,
        dots_y,
        x_lo as f32,
        x_hi as f32,
        y_lo as f32,
        y_hi as f32,
    );
    // textplots' builder traits borrow the chart for its whole life: one chain, one reference.
    let chart = chart
        .x_label_format(LabelFormat::Custom(Box::new(minutes_label)))
        .y_label_format(LabelFormat::Custom(Box::new(move |mib| {
            mib_label(f64::from(mib), decimals)
        })))
        .y_tick_display(TickDisplay::Sparse)
        .x_axis_style(LineStyle::None)
        .lineplot(&usage)
        .lineplot(&forecast_shape)
        .lineplot(&limit_shape);
    chart.axis();
    chart.figures();

    let mut out = chart.to_string();
    out.push_str("── usage (MiB)");
    if forecast.is_some() {
        out.push_str("  ··· forecast");
    }
    if let Some(mib) = limit {
        let _ = write!(out, "  ─ ─ limit {}", mib_label(mib, decimals));
    }
    out.push_str("  ┊ now (x: minutes)\n");
    out
}

/// (minutes, MiB) from (seconds, bytes), or `None` when either is not plottable.
fn to_plot_units(t_s: f64, bytes: f64) -> Option<(f64, f64)> {
    let (minutes, mib) = (t_s / 60.0, bytes / MIB);
    let plottable = |v: f64| v.is_finite() && v.abs() < MAX_PLOTTED;
    (plottable(minutes) && plottable(mib)).then_some((minutes, mib))
}

/// The range of `values` (not empty) widened by `margin` of its span on each side, so that lines
/// do not run along the frame. A tiny or zero span (one sample, a flat series) is widened to at
/// least 0.1% of the magnitude on each side (1 unit around zero), so f32 can tell the ends apart
/// and textplots never divides by zero. With `floor_at_zero`, a range of non-negative values
/// does not dip below zero: memory is never negative.
fn padded_range(values: &[f64], margin: f64, floor_at_zero: bool) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let magnitude = lo.abs().max(hi.abs());
    let span = hi - lo;
    let pad = if span > magnitude * 1e-3 {
        span * margin
    } else if magnitude > 0.0 {
        magnitude * 1e-3
    } else {
        1.0
    };
    let bottom = if floor_at_zero && lo >= 0.0 {
        (lo - pad).max(0.0)
    } else {
        lo - pad
    };
    (bottom, hi + pad)
}

/// The plotted window and the canvas it maps to, in dots, to place dotted and dashed lines.
struct View {
    x: (f64, f64),
    y: (f64, f64),
    dots: (f64, f64),
}

impl View {
    /// Points along the segment from `a` to `b`, one every few dots of its length on screen.
    fn dotted(&self, a: (f64, f64), b: (f64, f64)) -> Vec<(f32, f32)> {
        let dx = (b.0 - a.0) / (self.x.1 - self.x.0) * self.dots.0;
        let dy = (b.1 - a.1) / (self.y.1 - self.y.0) * self.dots.1;
        // Both are within the canvas (the view includes a and b), so this is at most a few
        // hundred; the cap only guards the arithmetic.
        let steps = (dx.hypot(dy) / FORECAST_DOT_SPACING)
            .ceil()
            .clamp(1.0, 10_000.0) as u32;
        let points: Vec<(f64, f64)> = (0..=steps)
            .map(|k| {
                let f = f64::from(k) / f64::from(steps);
                (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
            })
            .collect();
        to_f32(&points)
    }

    /// A horizontal dashed line at `y` across the whole view.
    fn dashed(&self, y: f64) -> Vec<(f32, f32)> {
        let columns = self.dots.0 as u32;
        let points: Vec<(f64, f64)> = (0..=columns)
            .filter(|i| (i / LIMIT_DASH).is_multiple_of(2))
            .map(|i| {
                let x = self.x.0 + (self.x.1 - self.x.0) * f64::from(i) / self.dots.0;
                (x, y)
            })
            .collect();
        to_f32(&points)
    }
}

fn to_f32(points: &[(f64, f64)]) -> Vec<(f32, f32)> {
    points.iter().map(|&(x, y)| (x as f32, y as f32)).collect()
}

/// An x label, at most 13 characters whatever the value: both x labels share one line of the
/// chart's width (24 columns at least), and textplots subtracts their length from it unchecked.
fn minutes_label(minutes: f32) -> String {
    if minutes.abs() < 100_000.0 {
        format!("{minutes:+.0} min")
    } else {
        format!("{minutes:+.1e} min")
    }
}

/// A value in MiB; beyond 10 TiB in scientific notation, which keeps the labels short.
fn mib_label(mib: f64, decimals: usize) -> String {
    if mib.abs() < 1e7 {
        format!("{mib:.decimals$} MiB")
    } else {
        format!("{mib:.2e} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 6 h of a leak from 400 MiB, one sample every 10 min, then a 2 h forecast towards a
    /// 512 MiB limit.
    fn leak_history() -> Vec<(f64, f64)> {
        (0..=36)
            .map(|i| {
                let t = -6.0 * 3600.0 + f64::from(i) * 600.0;
                let sawtooth = f64::from(i % 4) * 2.0 * MIB;
                (t, 400.0 * MIB + (t + 6.0 * 3600.0) * 4000.0 + sawtooth)
            })
            .collect()
    }

    fn input(history: &[(f64, f64)]) -> ChartInput<'_> {
        ChartInput {
            history,
            forecast: Some(((-6.0 * 3600.0, 400.0 * MIB), (2.0 * 3600.0, 510.0 * MIB))),
            limit: Some(512.0 * MIB),
            width: 60,
            height: 16,
        }
    }

    #[test]
    fn renders_history_forecast_limit_and_legend() {
        let history = leak_history();
        let out = render(&input(&history));
        let lines: Vec<&str> = out.lines().collect();
        // 16 rows of plot (+1, textplots' closing row), the x labels, the legend.
        assert_eq!(lines.len(), 19, "{out}");
        let legend = lines.last().copied().unwrap_or_default();
        assert!(legend.contains("usage (MiB)"), "{out}");
        assert!(legend.contains("forecast"), "{out}");
        assert!(legend.contains("limit 512.0 MiB"), "{out}");
        assert!(out.contains("-360 min"), "{out}");
        assert!(out.contains("+120 min"), "{out}");
        assert!(out.contains(" MiB\n"), "{out}");
        // Braille dots were drawn.
        assert!(out.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)));
        assert!(out.ends_with('\n'));
    }

    #[test]
    fn legend_lists_only_what_is_drawn() {
        let history = leak_history();
        let out = render(&ChartInput {
            forecast: None,
            limit: None,
            ..input(&history)
        });
        assert!(out.contains("usage (MiB)"));
        assert!(!out.contains("forecast"));
        assert!(!out.contains("limit"));
    }

    #[test]
    fn empty_history_is_one_line() {
        let out = render(&input(&[]));
        assert_eq!(out, "no history to chart\n");
        let out = render(&input(&[(f64::NAN, 1.0), (0.0, f64::INFINITY)]));
        assert_eq!(out, "no history to chart\n");
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let flat: Vec<_> = (0..10)
            .map(|i| (f64::from(-i) * 60.0, 100.0 * MIB))
            .collect();
        let single = [(0.0, 0.0)];
        let negative = [(-60.0, -5.0 * MIB), (0.0, -1.0)];
        let huge = [(-1e300, 1e300), (f64::MAX, f64::MIN), (-60.0, 1.0)];
        let mixed = [
            (f64::NAN, f64::NAN),
            (-30.0, 5.0 * MIB),
            (f64::NEG_INFINITY, 1.0),
        ];
        for history in [&flat[..], &single, &negative, &huge, &mixed] {
            for (width, height) in [(0, 0), (1, 1), (80, 20), (u32::MAX, u32::MAX)] {
                for forecast in [
                    None,
                    Some(((0.0, 0.0), (0.0, 0.0))),
                    Some(((f64::NAN, 1.0), (60.0, 2.0))),
                    Some(((-60.0, 1e20), (1e9, -1e20))),
                ] {
                    for limit in [None, Some(f64::NAN), Some(0.0), Some(-1.0), Some(1e40)] {
                        let out = render(&ChartInput {
                            history,
                            forecast,
                            limit,
                            width,
                            height,
                        });
                        assert!(out.contains("usage (MiB)"), "{out}");
                        assert!(out.ends_with('\n'));
                    }
                }
            }
        }
    }

    #[test]
    fn labels_stay_short() {
        for v in [
            0.0,
            -0.4,
            99_999.0,
            -99_999.9,
            1e6,
            -3.4e38,
            f32::MAX,
            f32::NAN,
        ] {
            let label = minutes_label(v);
            assert!(label.len() <= 13, "{label}");
        }
    }
}
