//! Charts as SVG markup, drawn on the server: a line chart of series over time, a bar chart
//! of a distribution's buckets, and a strip of latency quantiles on a logarithmic axis.
//! Sizes are fixed per chart (no layout engine); labels are text nodes, escaped by maud.

use maud::{Markup, html};

/// The colours series take, in order.
pub const PALETTE: [&str; 8] = ["#1f6feb", "#2da44e", "#cf222e", "#bf8700", "#8250df", "#1b7c83", "#e16f24", "#6e7781"];

/// One line of a chart: its name and its points (x, y).
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
}

/// A line chart: `series` over a shared x axis.
pub struct LineChart<'a> {
    pub title: &'a str,
    /// What the x values are (`s` for seconds).
    pub x_unit: &'a str,
    /// What the y values are (`pods`, `req/s`, `ms`).
    pub y_unit: &'a str,
    pub series: &'a [Series<'a>],
    pub width: u32,
    pub height: u32,
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (the top of an axis); 1 for nothing.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mut p = 10f64.powf(v.log10().floor());
    loop {
        for m in [1.0, 2.0, 5.0] {
            if m * p >= v * (1.0 - 1e-12) {
                return m * p;
            }
        }
        p *= 10.0;
    }
}

/// A number as an axis label: integers plainly, small values with the digits they need.
pub fn tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 22.0;
const RIGHT: f64 = 12.0;

/// The line chart; an empty chart says there is no data yet.
pub fn line_chart(c: &LineChart) -> Markup {
    let (w, h) = (c.width as f64, c.height as f64);
    let points = c.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            ymax = ymax.max(y);
        }
    }
    let empty = !x0.is_finite();
    if empty || x1 <= x0 {
        x1 = if empty { 1.0 } else { x0 + 1.0 };
        if empty {
            x0 = 0.0;
        }
    }
    let top = nice_max(ymax);
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y / top).clamp(0.0, 1.0) * ph;
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(c.width) height=(c.height) viewBox={"0 0 " (c.width) " " (c.height)} role="img" aria-label=(c.title) {
            title { (c.title) }
            text x=(LEFT) y="14" font-size="12" font-weight="600" { (c.title) " (" (c.y_unit) ")" }
            @for i in 0..=4 {
                @let v = top * i as f64 / 4.0;
                line x1=(LEFT) x2=(w - RIGHT) y1=(fmt(sy(v))) y2=(fmt(sy(v))) stroke="#d0d7de" stroke-width="1" {}
                text x=(LEFT - 4.0) y=(fmt(sy(v) + 4.0)) font-size="10" text-anchor="end" { (tick(v)) }
            }
            text x=(LEFT) y=(h - 6.0) font-size="10" { (tick(x0)) " " (c.x_unit) }
            text x=(w - RIGHT) y=(h - 6.0) font-size="10" text-anchor="end" { (tick(x1)) " " (c.x_unit) }
            @if empty {
                text x=(fmt(LEFT + pw / 2.0)) y=(fmt(TOP + ph / 2.0)) font-size="12" text-anchor="middle" fill="#6e7781" { "no data yet" }
            }
            @for (i, s) in c.series.iter().enumerate() {
                @let color = PALETTE[i % PALETTE.len()];
                polyline fill="none" stroke=(color) stroke-width="1.6" points=(polyline(s.points, &sx, &sy)) {
                    title { (s.name) }
                }
                text x=(fmt(LEFT + 8.0 + 130.0 * i as f64)) y=(fmt(TOP + 12.0)) font-size="10" fill=(color) { "● " (s.name) }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    format!("{v:.1}")
}

fn polyline(points: &[(f64, f64)], sx: &dyn Fn(f64) -> f64, sy: &dyn Fn(f64) -> f64) -> String {
    let mut s = String::with_capacity(points.len() * 12);
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&fmt(sx(x)));
            s.push(',');
            s.push_str(&fmt(sy(y)));
        }
    }
    s
}

/// A bar chart of a distribution: one bar per bucket (`label`, count), the label under every
/// few bars and in each bar's tooltip.
pub fn bars(title: &str, buckets: &[(String, f64)], width: u32, height: u32) -> Markup {
    let (w, h) = (width as f64, height as f64);
    let top = nice_max(buckets.iter().map(|b| b.1).fold(0.0, f64::max));
    let (pw, ph) = (w - LEFT - RIGHT, h - TOP - BOTTOM);
    let bw = pw / buckets.len().max(1) as f64;
    // About six labels whatever the number of bars, so they never overlap.
    let every = buckets.len().div_ceil(6).max(1);
    html! {
        svg.chart xmlns="http://www.w3.org/2000/svg" width=(width) height=(height) viewBox={"0 0 " (width) " " (height)} role="img" aria-label=(title) {
            title { (title) }
            text x=(LEFT) y="14" font-size="12" font-weight="600" { (title) }
            text x=(LEFT - 4.0) y=(TOP + 4.0) font-size="10" text-anchor="end" { (tick(top)) }
            text x=(LEFT - 4.0) y=(TOP + ph + 4.0) font-size="10" text-anchor="end" { "0" }
            @for (i, (label, count)) in buckets.iter().enumerate() {
                @let bh = (count / top).clamp(0.0, 1.0) * ph;
                rect x=(fmt(LEFT + i as f64 * bw)) y=(fmt(TOP + ph - bh)) width=(fmt((bw - 1.0).max(1.0))) height=(fmt(bh)) fill="#2da44e" {
                    title { (label) ": " (tick(*count)) }
                }
                @if i % every == 0 {
                    text x=(fmt(LEFT + i as f64 * bw)) y=(h - 6.0) font-size="9" { (label) }
                }
            }
        }
    }
}

/// Where `v` (µs) falls on a logarithmic axis from `lo` to `hi` µs, as a fraction.
pub fn log_position(v: f64, lo: f64, hi: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) || hi <= lo || lo <= 0.0 {
        return 0.0;
    }
    ((v.log10() - lo.log10()) / (hi.log10() - lo.log10())).clamp(0.0, 1.0)
}

/// p50, p90, p99 and max (µs) as marks on a logarithmic strip from 1 µs to 10 s: where a
/// plugin's time goes, comparable from row to row.
pub fn quantile_strip(p50: f64, p90: f64, p99: f64, max: f64) -> Markup {
    const W: f64 = 260.0;
    const LO: f64 = 1.0;
    const HI: f64 = 10_000_000.0;
    let xf = |v: f64| 4.0 + log_position(v, LO, HI) * (W - 8.0);
    let x = |v: f64| fmt(xf(v));
    html! {
        svg.strip xmlns="http://www.w3.org/2000/svg" width=(W) height="16" viewBox={"0 0 " (W) " 16"} {
            line x1="4" x2=(W - 4.0) y1="8" y2="8" stroke="#d0d7de" {}
            @for decade in 0..=7 {
                @let px = 4.0 + decade as f64 / 7.0 * (W - 8.0);
                line x1=(fmt(px)) x2=(fmt(px)) y1="5" y2="11" stroke="#afb8c1" {}
            }
            rect x=(x(p50)) y="4" width=(fmt((xf(p99) - xf(p50)).max(1.0))) height="8" fill="#1f6feb" opacity="0.35" {}
            circle cx=(x(p50)) cy="8" r="3" fill="#1f6feb" { title { "p50 " (crate::micros(p50)) } }
            circle cx=(x(p90)) cy="8" r="3" fill="#bf8700" { title { "p90 " (crate::micros(p90)) } }
            circle cx=(x(p99)) cy="8" r="3" fill="#cf222e" { title { "p99 " (crate::micros(p99)) } }
            circle cx=(x(max)) cy="8" r="2" fill="#24292f" { title { "max " (crate::micros(max)) } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_a_round_number_at_or_above_the_data() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(f64::NAN), 1.0);
        assert_eq!(nice_max(1.0), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(3.0), 5.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(150_000.0), 200_000.0);
        assert_eq!(nice_max(0.03), 0.05);
    }

    #[test]
    fn a_line_chart_scales_its_points_into_the_plot_and_escapes_names() {
        let pts = [(0.0, 0.0), (10.0, 50.0)];
        let s = line_chart(&LineChart { title: "pods", x_unit: "s", y_unit: "pods", series: &[Series { name: "<Running>", points: &pts }], width: 400, height: 200 }).into_string();
        // x from LEFT to width-RIGHT, y from the bottom of the plot to its top (50 is the top).
        assert!(s.contains(r#"points="48.0,178.0 388.0,22.0""#), "{s}");
        assert!(s.contains("&lt;Running&gt;") && !s.contains("<Running>"), "{s}");
        let empty = line_chart(&LineChart { title: "t", x_unit: "s", y_unit: "u", series: &[], width: 400, height: 200 }).into_string();
        assert!(empty.contains("no data yet"));
    }

    #[test]
    fn bars_are_as_tall_as_their_share_of_the_axis() {
        let s = bars("d", &[("1 ms".into(), 5.0), ("2 ms".into(), 10.0)], 300, 122).into_string();
        // The plot is 122-22-22 = 78 high; 10 is the axis top, 5 is half of it.
        assert!(s.contains(r#"height="78.0""#) && s.contains(r#"height="39.0""#), "{s}");
    }

    #[test]
    fn the_strip_places_quantiles_by_decade() {
        assert_eq!(log_position(1.0, 1.0, 10_000_000.0), 0.0);
        assert!((log_position(1_000.0, 1.0, 10_000_000.0) - 3.0 / 7.0).abs() < 1e-9);
        assert_eq!(log_position(1e12, 1.0, 10_000_000.0), 1.0);
        assert_eq!(log_position(0.0, 1.0, 10.0), 0.0);
    }
}
