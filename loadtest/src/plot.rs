//! The latency plot of a run: the classic HDR percentile curve, written as plain SVG text.
//!
//! x is the percentile on a log "1/(1-p)" axis (50 % sits at 2, 90 % at 10, 99 % at 100, ...),
//! so the tail gets as much room as the body; y is the latency in milliseconds, linear from 0.
//! One curve per histogram, a legend with each curve's p99 and max, the run label as title.

use anyhow::Context;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::path::Path;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
/// Steps per decade of the x axis (one point each per curve).
const STEPS_PER_DECADE: u32 = 20;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Where percentile `q` (0..1) sits on the x axis: log10(1 / (1 - q)). `q` = 1 (the maximum)
/// has no finite place; it is clamped to `1 - 1e-9` (x = 9), beyond any axis drawn here.
pub fn quantile_to_x(q: f64) -> f64 {
    let q = q.clamp(0.0, 1.0 - 1e-9);
    -(1.0 - q).log10()
}

/// The inverse of [`quantile_to_x`].
pub fn x_to_quantile(x: f64) -> f64 {
    1.0 - 10f64.powf(-x)
}

/// How far the x axis reaches (in decades): at least 99.99 %, at most 99.9999 %, and no further
/// than the largest histogram has samples for (beyond 1 - 1/n every percentile is the max).
fn x_max(curves: &[(&str, &Histogram<u64>)]) -> f64 {
    let n = curves
        .iter()
        .map(|(_, h)| h.len())
        .max()
        .unwrap_or(0)
        .max(1);
    (n as f64).log10().ceil().clamp(4.0, 6.0)
}

/// The points of one curve: (x, latency ms) at every axis step from 0 % to the axis end, the
/// last one being the maximum. Latency never falls as x rises.
pub fn curve_points(h: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let steps = (x_max * f64::from(STEPS_PER_DECADE)).round() as u32;
    let mut points: Vec<(f64, f64)> = (0..steps)
        .map(|i| {
            let x = f64::from(i) / f64::from(STEPS_PER_DECADE);
            (x, h.value_at_quantile(x_to_quantile(x)) as f64 / 1000.0)
        })
        .collect();
    points.push((x_max, h.max() as f64 / 1000.0));
    points
}

/// A "nice" step (1, 2 or 5 times a power of ten) that splits `0..top` into about `ticks` parts.
fn nice_step(top: f64, ticks: f64) -> f64 {
    if top <= 0.0 || !top.is_finite() {
        return 1.0;
    }
    let raw = top / ticks;
    let power = 10f64.powf(raw.log10().floor());
    let m = raw / power;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

fn fmt_ms(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The label of axis position `x` (a whole number of decades, or 50 %).
fn percentile_label(x: f64) -> String {
    let p = x_to_quantile(x) * 100.0;
    let decimals = (x.round() as i32 - 2).max(0) as usize;
    format!("{p:.decimals$}%")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG text of the percentile plot of `curves` (name, histogram in microseconds). Empty
/// histograms are listed in the legend as "no samples" and drawn as nothing.
pub fn render_svg(title: &str, curves: &[(&str, &Histogram<u64>)]) -> String {
    let x_max = x_max(curves);
    let series: Vec<Vec<(f64, f64)>> = curves.iter().map(|(_, h)| curve_points(h, x_max)).collect();
    let y_top_data = series
        .iter()
        .flatten()
        .map(|&(_, y)| y)
        .fold(0.0f64, f64::max);
    let y_step = nice_step(y_top_data.max(0.001), 6.0);
    let y_top = ((y_top_data / y_step).ceil() * y_step).max(y_step);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_max * plot_w;
    let py = |y: f64| TOP + plot_h - y / y_top * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Vertical grid lines and percentile labels: 0 %, 50 %, then every decade.
    let mut quantiles = vec![0.0, 0.5];
    quantiles.extend((1..=x_max as i32).map(|d| 1.0 - 10f64.powi(-d)));
    for x in quantiles.into_iter().map(quantile_to_x) {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1:.1}" stroke="#ddd"/>"##,
            px(x),
            TOP + plot_h
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(x),
            TOP + plot_h + 16.0,
            percentile_label(x)
        );
    }
    // Horizontal grid lines and latency labels.
    let mut k = 0u32;
    loop {
        let y = f64::from(k) * y_step;
        if y > y_top + y_step / 2.0 {
            break;
        }
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#ddd"/>"##,
            py(y),
            LEFT + plot_w
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py(y) + 4.0,
            fmt_ms(y)
        );
        k += 1;
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{0:.1}" text-anchor="middle" transform="rotate(-90 16 {0:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, points) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
    }
    // Legend, top left inside the plot (the curves start low there).
    for (i, (name, h)) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let y = TOP + 18.0 + 18.0 * i as f64;
        let text = if h.is_empty() {
            format!("{name}: no samples")
        } else {
            format!(
                "{name}: p99 {} ms, max {} ms ({} samples)",
                fmt_ms(h.value_at_quantile(0.99) as f64 / 1000.0),
                fmt_ms(h.max() as f64 / 1000.0),
                h.len()
            )
        };
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="3"/>"#,
            LEFT + 12.0,
            LEFT + 36.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 42.0,
            y + 4.0,
            escape(&text)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes the percentile plot of `curves` (name, latency histogram in microseconds, as made
/// by [`crate::stats::latency_histogram`]) to `path`, titled `title`.
pub fn write_svg(
    path: &Path,
    title: &str,
    curves: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    std::fs::write(path, render_svg(title, curves))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("plot written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::latency_histogram;

    fn hist(values_us: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = latency_histogram();
        for v in values_us {
            h.record(v).expect("in range");
        }
        h
    }

    #[test]
    fn percentiles_sit_on_decades_of_one_over_one_minus_p() {
        for (q, x) in [
            (0.0, 0.0),
            (0.9, 1.0),
            (0.99, 2.0),
            (0.999, 3.0),
            (0.9999, 4.0),
        ] {
            assert!((quantile_to_x(q) - x).abs() < 1e-9, "q {q}");
            assert!((x_to_quantile(x) - q).abs() < 1e-12, "x {x}");
        }
        assert!((quantile_to_x(0.5) - 2f64.log10()).abs() < 1e-12);
        assert!(
            (quantile_to_x(1.0) - 9.0).abs() < 1e-6,
            "the max is clamped"
        );
        assert_eq!(percentile_label(2f64.log10()), "50%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }

    #[test]
    fn curve_points_rise_monotonically_and_end_at_the_max() {
        // A body at 0.1-1 ms and a tail up to 50 ms.
        let h = hist((1..=10_000u64).map(|i| if i % 1000 == 0 { 50_000 } else { 100 + i % 900 }));
        let points = curve_points(&h, 4.0);
        assert_eq!(points.len(), 4 * STEPS_PER_DECADE as usize + 1);
        assert!(points.windows(2).all(|w| w[1].0 > w[0].0), "x rises");
        assert!(
            points.windows(2).all(|w| w[1].1 >= w[0].1),
            "latency never falls"
        );
        assert_eq!(points[0], (0.0, h.min() as f64 / 1000.0));
        let last = points.last().expect("points");
        assert_eq!(*last, (4.0, h.max() as f64 / 1000.0));
        // x = 1 is p90: within the body.
        let p90 = points[STEPS_PER_DECADE as usize];
        assert_eq!(p90.0, 1.0);
        assert_eq!(p90.1, h.value_at_quantile(0.9) as f64 / 1000.0);
        assert!(curve_points(&latency_histogram(), 4.0).is_empty());
    }

    #[test]
    fn the_axis_reaches_as_far_as_the_samples_allow() {
        let small = hist([1, 2, 3]);
        let big = hist(1..=2_000_000);
        assert_eq!(x_max(&[("a", &small)]), 4.0);
        assert_eq!(x_max(&[("a", &small), ("b", &big)]), 6.0);
    }

    #[test]
    fn nice_steps_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_step(12.0, 6.0), 2.0);
        assert_eq!(nice_step(0.9, 6.0), 0.2);
        assert_eq!(nice_step(700.0, 6.0), 200.0);
        assert_eq!(nice_step(0.0, 6.0), 1.0);
    }

    /// Checks that every tag is closed in order (self-closing tags count as closed) and
    /// returns the names of the elements seen.
    fn balanced_tags(svg: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unterminated tag") + start;
            let tag = &rest[start + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "closing {name}");
            } else {
                let name = tag.split_whitespace().next().expect("tag name").to_string();
                seen.push(name.clone());
                if !tag.ends_with('/') {
                    stack.push(name);
                }
            }
            rest = &rest[end + 1..];
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        seen
    }

    #[test]
    fn svg_is_well_formed_with_title_axes_and_legend() {
        let a = hist(1..=1000);
        let b = hist((1..=1000).map(|v| v * 3));
        let empty = latency_histogram();
        let svg = render_svg(
            "fanout <herald> & co",
            &[
                ("publish->receive", &a),
                ("reference", &b),
                ("none", &empty),
            ],
        );
        let tags = balanced_tags(&svg);
        assert_eq!(tags[0], "svg");
        assert_eq!(tags.iter().filter(|t| *t == "polyline").count(), 2);
        for label in [
            "fanout &lt;herald&gt; &amp; co",
            ">50%<",
            ">90%<",
            ">99%<",
            ">99.9%<",
            ">99.99%<",
            "latency (ms)",
            "publish-&gt;receive: p99 0.990 ms, max 1.00 ms (1000 samples)",
            "reference: p99",
            "none: no samples",
        ] {
            assert!(svg.contains(label), "missing {label}");
        }
        // The y axis covers the largest value (3 ms).
        assert!(svg.contains(">3.00<"), "{svg}");
    }
}
