//! The paper's qualitative claims, stated as measured differences with their 95%
//! intervals over seeds (paired: the same seed, so the same data order and start, on both
//! sides): the specialist beats the static network of its architecture; accuracy grows
//! with the number of bases N; early exit keeps most of the accuracy at a fraction of the
//! cost. Written under the results table by `basisnet compare`.

use crate::compare::{test_top1, Group, Role};
use crate::spread::{Spread, Verdict};
use std::fmt::Write as _;

fn verdict(s: &Spread) -> &'static str {
    match s.verdict() {
        Verdict::Holds => "**holds** (the interval is above zero)",
        Verdict::Fails => "**fails** (the interval is below zero)",
        Verdict::Unresolved if s.n < 2 => "**unresolved** (one seed: no interval)",
        Verdict::Unresolved => "**unresolved** (the interval contains zero)",
    }
}

/// A paired difference in points: `+0.24 ± 0.30 points (3 seeds, 95% CI [...], ahead in 2)`.
fn difference(values: &[f64]) -> Option<(Spread, String)> {
    let s = Spread::of(values)?;
    let ahead = values.iter().filter(|&&v| v > 0.0).count();
    let text = format!(
        "{} points ({} seeds, {}; ahead in {ahead} of {})",
        signed(&s, 100.0, 2),
        s.n,
        s.show_ci(100.0, 2),
        s.n
    );
    Some((s, text))
}

fn signed(s: &Spread, scale: f64, decimals: usize) -> String {
    let text = s.show(scale, decimals);
    if s.mean >= 0.0 {
        format!("+{text}")
    } else {
        text
    }
}

/// Least-squares slope of `y` against `x`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// The claims section (markdown) over `groups`.
pub fn write(groups: &[Group], max_drop: f64) -> String {
    let mut md = String::from(
        "## The paper's claims at this scale\n\nDifferences are paired by seed; a claim holds when the 95% confidence interval of the mean difference (Student's t over seeds) lies above zero. Its half-width is t(0.975, n - 1) times the standard error: 4.30 times it for 3 seeds, 12.7 for 2.\n\n",
    );
    let static_net = groups.iter().find(|g| g.role == Role::Static);
    let basisnets: Vec<&Group> = groups.iter().filter(|g| g.role == Role::BasisNet).collect();

    md.push_str("1. The BasisNet specialist beats the static network of its architecture (test top-1, BasisNet minus static):\n");
    match static_net {
        None => md.push_str("   - no static run to compare with.\n"),
        Some(s) => {
            for b in &basisnets {
                match difference(&b.paired(s, test_top1)) {
                    Some((d, text)) => {
                        let _ = writeln!(md, "   - {}: {text}: {}.", b.name, verdict(&d));
                    }
                    None => {
                        let _ = writeln!(md, "   - {}: no seed in common with {}.", b.name, s.name);
                    }
                }
            }
        }
    }

    md.push_str("2. Accuracy grows with N (the slope of test top-1 against log2 N, the static network as N = 1, fitted per seed):\n");
    let ladder: Vec<&Group> = static_net
        .into_iter()
        .chain(basisnets.iter().copied())
        .collect();
    let seeds: Vec<u64> = ladder
        .first()
        .map(|g| g.runs.iter().map(|r| r.seed).collect())
        .unwrap_or_default();
    let slopes: Vec<f64> = seeds
        .iter()
        .filter_map(|&seed| {
            let points: Vec<(f64, f64)> = ladder
                .iter()
                .filter_map(|g| {
                    let r = g.runs.iter().find(|r| r.seed == seed)?;
                    Some((
                        (g.bases as f64).log2(),
                        r.metrics.evaluation.specialist_top1,
                    ))
                })
                .collect();
            (points.len() == ladder.len())
                .then(|| slope(&points))
                .flatten()
        })
        .collect();
    match (ladder.len() >= 2, Spread::of(&slopes)) {
        (true, Some(s)) => {
            let _ = writeln!(
                md,
                "   - {} points per doubling of N over N = {} ({} seeds, {}): {}.",
                signed(&s, 100.0, 2),
                ladder
                    .iter()
                    .map(|g| g.bases.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.n,
                s.show_ci(100.0, 2),
                verdict(&s)
            );
        }
        _ => md.push_str("   - needs at least two values of N with the same seeds.\n"),
    }

    let _ = writeln!(
        md,
        "3. Early exit keeps most of the accuracy at a fraction of the cost (threshold chosen on validation within {:.1} points; test top-1 at that threshold minus the specialist's):",
        100.0 * max_drop
    );
    for b in &basisnets {
        let drops: Vec<f64> = b
            .runs
            .iter()
            .filter_map(|r| {
                let (_, t) = r.metrics.early_exit_choice(max_drop)?;
                Some(t.top1 - r.metrics.evaluation.specialist_top1)
            })
            .collect();
        let cost = b.spread(|m| {
            let (_, t) = m.early_exit_choice(max_drop)?;
            Some(t.avg_madds / m.evaluation.full_madds.max(1) as f64)
        });
        let exits = b.exit(max_drop, |p| p.exit_rate);
        match (Spread::of(&drops), cost, exits) {
            (Some(d), Some(c), Some(e)) => {
                let _ = writeln!(
                    md,
                    "   - {}: {} points ({}) at {}% of the MAdds, {}% of the images exiting after the lightweight stage.",
                    b.name,
                    signed(&d, 100.0, 2),
                    d.show_ci(100.0, 2),
                    c.show(100.0, 1),
                    e.show(100.0, 1)
                );
            }
            _ => {
                let _ = writeln!(md, "   - {}: no early-exit curve on validation.", b.name);
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_is_least_squares() {
        let s = slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((s - 2.0).abs() < 1e-12);
        assert!(slope(&[(1.0, 1.0)]).is_none());
        assert!(slope(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }
}
