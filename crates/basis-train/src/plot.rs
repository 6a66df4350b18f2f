//! SVG plots of a run: training curves (from `summary.csv`) and accuracy versus average
//! multiply-adds over early-exit thresholds. Plain SVG, no plotting dependency.

use crate::metrics::CoefficientStats;
use basis_models::ExitPoint;
use std::fmt::Write;

/// One named series of points.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points, in order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// A line chart (markers on every point) with axes, ticks and a legend.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h) = (640.0, 400.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 50.0);
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let range = |f: fn(&(f64, f64)) -> f64| {
        let lo = all.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = all.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
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
        for &(x, y) in &s.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = top + 8.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            w - right - 170.0,
            ly - 4.0,
            w - right - 152.0,
            ly,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

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

/// Training curves from a run's `summary.csv`: top-1 of each model per epoch.
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
    .map(|(name, col)| Series {
        name: name.to_string(),
        points: column(col),
    })
    .filter(|s| !s.points.is_empty())
    .collect();
    line_chart("Test top-1 per epoch", "epoch", "top-1 (%)", &series)
}

/// Accuracy versus average multiply-adds over the early-exit thresholds.
pub fn early_exit_curve(points: &[ExitPoint]) -> String {
    let series = [Series {
        name: "early exit (threshold sweep)".into(),
        points: points
            .iter()
            .map(|p| (p.avg_madds, 100.0 * p.top1))
            .collect(),
    }];
    line_chart(
        "Accuracy versus average MAdds",
        "MAdds per image (average)",
        "top-1 (%)",
        &series,
    )
}

/// A heatmap of the mean coefficient vector of each class (rows: classes, columns: bases),
/// with the value in every cell: whether the bases specialize by class.
pub fn coefficient_heatmap(stats: &CoefficientStats, class_names: &[String]) -> String {
    let rows = stats.per_class_mean.len();
    let cols = stats.num_bases;
    let (cell_w, cell_h, left, top) = (64.0, 26.0, 150.0, 60.0);
    let w = left + cell_w * cols as f64 + 20.0;
    let h = top + cell_h * rows as f64 + 60.0;
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
<text x="{}" y="22" text-anchor="middle" font-size="14">Mean coefficient vector per class</text>
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
    let _ = writeln!(
        svg,
        r#"<text x="{left}" y="{}">mean entropy {:.3} nats (uniform: {:.3}), mean largest coefficient {:.3} (uniform: {:.3})</text>"#,
        top + cell_h * rows as f64 + 30.0,
        stats.mean_entropy,
        (cols.max(1) as f64).ln(),
        stats.mean_max,
        1.0 / cols.max(1) as f64
    );
    svg.push_str("</svg>\n");
    svg
}
