//! SVG plots of a run: training curves (from `summary.csv`) and accuracy versus average
//! multiply-adds over early-exit thresholds. Plain SVG, no plotting dependency.

use crate::metrics::CoefficientStats;
use basis_models::ExitPoint;
use std::fmt::Write;

/// One named series of points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points, in order.
    pub points: Vec<(f64, f64)>,
    /// Error bars: `y - e` to `y + e` for the point of the same index (empty: none).
    pub errors: Vec<f64>,
    /// Markers only, no joining line (reference points).
    pub markers_only: bool,
}

impl Series {
    /// Points joined by a line.
    ///
    /// ```
    /// use basis_train::plot::{line_chart, Series};
    /// let s = Series::line("N = 4", vec![(1.0, 90.0), (2.0, 91.0)]).with_errors(vec![0.2, 0.3]);
    /// let svg = line_chart("top-1", "N", "%", &[s]);
    /// assert_eq!(svg.matches("class=\"error-bar\"").count(), 2);
    /// ```
    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            ..Self::default()
        }
    }

    /// Markers without a line: reference points such as a static network's accuracy.
    pub fn markers(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            markers_only: true,
            ..Self::line(name, points)
        }
    }

    /// With error bars of these half-heights (one per point).
    pub fn with_errors(mut self, errors: Vec<f64>) -> Self {
        self.errors = errors;
        self
    }

    /// `(x, y - e, y + e)` of every point (`e = 0` without error bars).
    fn spans(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        self.points.iter().enumerate().map(|(i, &(x, y))| {
            let e = self.errors.get(i).copied().unwrap_or(0.0).abs();
            (x, y - e, y + e)
        })
    }
}

const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// A line chart (markers on every point, error bars where a series has them) with axes,
/// ticks and a legend beside the plot.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    // The legend gets its own column right of the plot, wide enough for its longest name.
    let legend_chars = series.iter().map(|s| s.name.chars().count()).max();
    let legend = legend_chars.map_or(0.0, |c| 30.0 + CHAR_WIDTH * c as f64);
    let (w, h) = (640.0 + legend, 400.0);
    let (left, right, top, bottom) = (70.0, 20.0 + legend, 40.0, 50.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.spans().flat_map(|(x, lo, hi)| [(x, lo), (x, hi)]))
        .collect();
    let range = |f: fn(&(f64, f64)) -> f64| {
        let lo = all.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            // Padded, but an axis of non-negative values does not go below zero.
            let pad = 0.05 * (hi - lo);
            let low = if lo >= 0.0 {
                (lo - pad).max(0.0)
            } else {
                lo - pad
            };
            (low, hi + pad)
        }
    };
    let ((x0, x1), (y0, y1)) = (range(|p| p.0), range(|p| p.1));
    let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let py = |y: f64| h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>
"#,
        w / 2.0,
        escape(title),
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (left + w - right) / 2.0,
        h - 12.0,
        escape(x_label),
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0,
        escape(y_label)
    );
    for i in 0..=5 {
        let (fx, fy) = (
            x0 + (x1 - x0) * i as f64 / 5.0,
            y0 + (y1 - y0) * i as f64 / 5.0,
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            px(fx),
            h - bottom + 16.0,
            tick(fx),
            left - 6.0,
            py(fy) + 4.0,
            tick(fy),
            py(fy),
            w - right,
            py(fy)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if !s.markers_only {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        for (&(x, y), (_, lo, hi)) in s.points.iter().zip(s.spans()) {
            if hi > lo {
                let (cx, top_y, low_y) = (px(x), py(hi), py(lo));
                let _ = writeln!(
                    svg,
                    r#"<path class="error-bar" d="M{:.1},{top_y:.1}H{:.1}M{cx:.1},{top_y:.1}V{low_y:.1}M{:.1},{low_y:.1}H{:.1}" stroke="{color}" fill="none"/>"#,
                    cx - 4.0,
                    cx + 4.0,
                    cx - 4.0,
                    cx + 4.0
                );
            }
            let marker = if s.markers_only {
                format!(
                    r#"<rect x="{:.1}" y="{:.1}" width="9" height="9" fill="{color}"/>"#,
                    px(x) - 4.5,
                    py(y) - 4.5
                )
            } else {
                format!(
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    px(x),
                    py(y)
                )
            };
            let _ = writeln!(svg, "{marker}");
        }
        let (lx, ly) = (w - legend, top + 8.0 + 16.0 * i as f64);
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="{}" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx,
            ly - if s.markers_only { 8.0 } else { 4.0 },
            if s.markers_only { 9 } else { 3 },
            lx + 18.0,
            ly,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Width of a character at font size 12 (sans-serif), generous: what layouts reserve.
const CHAR_WIDTH: f64 = 7.0;

fn tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Training curves from a run's `summary.csv`: validation top-1 of each model per epoch.
pub fn training_curves(summary_csv: &str) -> String {
    let mut lines = summary_csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let column = |name: &str| -> Vec<(f64, f64)> {
        let Some(c) = header.iter().position(|h| *h == name) else {
            return Vec::new();
        };
        rows.iter()
            .filter_map(|r| {
                Some((
                    r.first()?.parse().ok()?,
                    100.0 * r.get(c)?.parse::<f64>().ok()?,
                ))
            })
            .collect()
    };
    let series: Vec<Series> = [
        ("lightweight", "light_top1"),
        ("specialist", "specialist_top1"),
        ("EMA specialist", "ema_specialist_top1"),
    ]
    .iter()
    .map(|(name, col)| Series::line(*name, column(col)))
    .filter(|s| !s.points.is_empty())
    .collect();
    line_chart("Validation top-1 per epoch", "epoch", "top-1 (%)", &series)
}

/// Accuracy versus average multiply-adds over the early-exit thresholds.
pub fn early_exit_curve(points: &[ExitPoint]) -> String {
    let series = [Series::line(
        "early exit (threshold sweep)",
        points
            .iter()
            .map(|p| (p.avg_madds, 100.0 * p.top1))
            .collect(),
    )];
    line_chart(
        "Accuracy versus average MAdds",
        "MAdds per image (average)",
        "top-1 (%)",
        &series,
    )
}

/// Left edge of the heatmap's caption lines.
const CAPTION_X: f64 = 12.0;

/// A heatmap of the mean coefficient vector of each class (rows: classes, columns: bases),
/// with the value in every cell: whether the bases specialize by class.
pub fn coefficient_heatmap(stats: &CoefficientStats, class_names: &[String]) -> String {
    let rows = stats.per_class_mean.len();
    let cols = stats.num_bases;
    let (cell_w, cell_h, left, top) = (64.0, 26.0, 150.0, 60.0);
    let caption = [
        format!(
            "mean entropy {:.3} nats (uniform: {:.3})",
            stats.mean_entropy,
            (cols.max(1) as f64).ln()
        ),
        format!(
            "mean largest coefficient {:.3} (uniform: {:.3})",
            stats.mean_max,
            1.0 / cols.max(1) as f64
        ),
    ];
    let title = "Mean coefficient vector per class";
    // As wide as the cells, the caption lines and the title need (nothing clipped).
    let widest = caption
        .iter()
        .map(|c| c.chars().count())
        .chain([title.chars().count() + 4])
        .max()
        .unwrap_or(0);
    let w = (left + cell_w * cols as f64 + 20.0).max(2.0 * CAPTION_X + CHAR_WIDTH * widest as f64);
    let h = top + cell_h * rows as f64 + 30.0 + 18.0 * caption.len() as f64;
    let hi = stats
        .per_class_mean
        .iter()
        .flatten()
        .fold(0.0f64, |m, &v| m.max(v))
        .max(1e-9);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>
"#,
        w / 2.0
    );
    for c in 0..cols {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">basis {c}</text>"#,
            left + cell_w * (c as f64 + 0.5),
            top - 8.0
        );
    }
    for (r, row) in stats.per_class_mean.iter().enumerate() {
        let y = top + cell_h * r as f64;
        let name = class_names
            .get(r)
            .cloned()
            .unwrap_or_else(|| format!("class {r}"));
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + cell_h * 0.65,
            escape(&name)
        );
        for (c, &v) in row.iter().enumerate() {
            // White (0) to dark blue (the largest mean coefficient).
            let t = (v / hi).clamp(0.0, 1.0);
            let shade = |full: f64| (255.0 - t * (255.0 - full)).round() as u8;
            let (red, green, blue) = (shade(31.0), shade(79.0), shade(158.0));
            let text = if t > 0.55 { "white" } else { "black" };
            let x = left + cell_w * c as f64;
            let _ = writeln!(
                svg,
                r#"<rect x="{x}" y="{y}" width="{cell_w}" height="{cell_h}" fill="rgb({red},{green},{blue})" stroke="white"/><text x="{}" y="{}" text-anchor="middle" fill="{text}">{v:.2}</text>"#,
                x + cell_w / 2.0,
                y + cell_h * 0.65
            );
        }
    }
    for (i, line) in caption.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text class="caption" x="{CAPTION_X}" y="{}">{}</text>"#,
            top + cell_h * rows as f64 + 26.0 + 18.0 * i as f64,
            escape(line)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(x, text)` of every `<text ...>...</text>` with a plain `x` attribute.
    fn texts(svg: &str) -> Vec<(f64, String)> {
        svg.split("<text ")
            .skip(1)
            .filter_map(|t| {
                let x = t.split("x=\"").nth(1)?.split('"').next()?.parse().ok()?;
                let body = t.split('>').nth(1)?.split('<').next()?;
                Some((x, body.to_string()))
            })
            .collect()
    }

    fn width(svg: &str) -> f64 {
        svg.split("width=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn the_heatmap_caption_fits_inside_the_figure_for_every_number_of_bases() {
        for n in [1usize, 2, 4, 8] {
            let stats = CoefficientStats {
                num_bases: n,
                per_class_mean: vec![vec![1.0 / n as f64; n]; 10],
                mean: vec![1.0 / n as f64; n],
                mean_entropy: (n as f64).ln(),
                mean_max: 1.0 / n as f64,
            };
            let svg = coefficient_heatmap(&stats, &[]);
            let w = width(&svg);
            let captions: Vec<_> = svg.split("class=\"caption\"").skip(1).collect();
            assert_eq!(captions.len(), 2, "N = {n}");
            for (x, text) in texts(&svg)
                .into_iter()
                .filter(|(_, t)| t.starts_with("mean "))
            {
                let right = x + CHAR_WIDTH * text.chars().count() as f64;
                assert!(
                    right <= w,
                    "N = {n}: '{text}' ends at {right}, figure {w} wide"
                );
            }
        }
    }

    #[test]
    fn error_bars_and_reference_markers_widen_the_axes_and_the_legend_fits() {
        let name = "BasisNet specialist, N = 1 to 8 (mean of 3 seeds)";
        let svg = line_chart(
            "t",
            "x",
            "y",
            &[
                Series::line(name, vec![(1.0, 90.0), (2.0, 91.0)]).with_errors(vec![0.5, 2.0]),
                Series::markers("static", vec![(1.0, 89.0)]),
            ],
        );
        assert_eq!(svg.matches("class=\"error-bar\"").count(), 2);
        // One joining line (the markers-only series has none), and square markers.
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("width=\"9\"").count(), 1);
        // The largest y on the axis covers 91 + 2 (the top error bar).
        let ticks: Vec<f64> = texts(&svg)
            .iter()
            .filter_map(|(_, t)| t.parse().ok())
            .collect();
        assert!(ticks.iter().any(|&t| t >= 93.0), "{ticks:?}");
        // Non-negative x (1 to 2, padded) keeps its axis at or above zero.
        let costs = line_chart(
            "t",
            "x",
            "y",
            &[Series::line("a", vec![(0.0, 1.0), (5.0, 2.0)])],
        );
        assert!(
            !texts(&costs).iter().any(|(_, t)| t.starts_with('-')),
            "{costs}"
        );
        let w = width(&svg);
        for (x, text) in texts(&svg).into_iter().filter(|(_, t)| t == name) {
            assert!(
                x + CHAR_WIDTH * text.chars().count() as f64 <= w,
                "legend clipped"
            );
        }
    }
}
