//! `basisnet compare`: one table and plots over finished runs (what `cargo xtask repro`
//! writes). Runs whose recipes differ only in `train.seed` form one row: the mean ± sample
//! standard deviation over their seeds of the validation and test accuracy, the cost and
//! the early exit chosen on validation; then the paper's claims with their intervals.

use crate::claims;
use crate::spread::Spread;
use anyhow::{bail, Context, Result};
use basis_models::ExitPoint;
use basis_train::data::{DatasetKind, FASHION_MNIST_CLASSES};
use basis_train::plot::{coefficient_heatmap, line_chart, Series};
use basis_train::recipe::Stage;
use basis_train::{Metrics, RunDir};
use clap::Args;
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(
    after_help = "Runs that differ only in train.seed are one row (mean ± sd over seeds); a run folder named seed-<n> takes its parent's name.\n\nExamples:\n  basisnet compare runs/static runs/n2 runs/n4 runs/n8 --out runs/compare\n  basisnet compare runs/*/seed-* --out report --max-drop 0.01"
)]
pub struct CompareArgs {
    /// Finished run directories (each with metrics.json and recipe.toml).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// Where the table (results.md, results.json) and plots go; created, files in it
    /// replaced.
    #[arg(long)]
    out: PathBuf,
    /// The early-exit column: the cheapest threshold within this accuracy drop of the
    /// specialist, chosen on validation.
    #[arg(long, default_value_t = 0.005, value_parser = crate::numbers::non_negative, allow_negative_numbers = true)]
    max_drop: f64,
}

/// What a group of runs trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The specialist's architecture as one static network (N = 1).
    Static,
    /// The lightweight model trained alone.
    Lightweight,
    /// The two-stage BasisNet.
    BasisNet,
}

/// One finished run.
pub struct Run {
    dir: PathBuf,
    /// `train.seed` of its recipe.
    pub seed: u64,
    /// Its `metrics.json`.
    pub metrics: Metrics,
}

/// Runs of one configuration, one per seed (sorted by seed).
pub struct Group {
    /// The row's name.
    pub name: String,
    /// What it trained, in words.
    pub what: String,
    /// Its role in the comparison.
    pub role: Role,
    /// Bases per layer (1 for the static and lightweight runs).
    pub bases: i64,
    /// The runs.
    pub runs: Vec<Run>,
    dataset: DatasetKind,
    key: String,
}

impl Group {
    /// The spread over seeds of `f` (runs where it is `None` are left out).
    pub fn spread(&self, f: impl Fn(&Metrics) -> Option<f64>) -> Option<Spread> {
        let values: Vec<f64> = self.runs.iter().filter_map(|r| f(&r.metrics)).collect();
        Spread::of(&values)
    }

    /// The spread over seeds of `f` of the early-exit point chosen on validation (within
    /// `max_drop`), read on test.
    pub fn exit(&self, max_drop: f64, f: fn(&ExitPoint) -> f64) -> Option<Spread> {
        self.spread(|m| m.early_exit_choice(max_drop).map(|(_, t)| f(t)))
    }

    /// `f(self) - f(other)` for every seed both have.
    pub fn paired(&self, other: &Group, f: impl Fn(&Metrics) -> Option<f64>) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|r| {
                let o = other.runs.iter().find(|o| o.seed == r.seed)?;
                Some(f(&r.metrics)? - f(&o.metrics)?)
            })
            .collect()
    }
}

/// Test top-1 of the final weights.
pub fn test_top1(m: &Metrics) -> Option<f64> {
    Some(m.evaluation.specialist_top1)
}

/// Validation top-1 of the final weights.
pub fn validation_top1(m: &Metrics) -> Option<f64> {
    m.validation.as_ref().map(|v| v.specialist_top1)
}

/// Test top-1 of the weights validation prefers: the averaged (EMA) ones when their
/// validation top-1 is higher, else the trained ones.
pub fn chosen_top1(m: &Metrics) -> Option<f64> {
    let v = m.validation.as_ref()?;
    match (v.ema_specialist_top1, m.evaluation.ema_specialist_top1) {
        (Some(val_ema), Some(test_ema)) if val_ema > v.specialist_top1 => Some(test_ema),
        _ => Some(m.evaluation.specialist_top1),
    }
}

/// A run, what it trained, its role, bases, dataset and recipe without the seed.
type Loaded = (Run, String, Role, i64, DatasetKind, String);

fn load(dir: &Path) -> Result<Loaded> {
    let run = RunDir::new(dir);
    let metrics = run.read_metrics()?;
    let mut recipe = run.read_recipe()?;
    let config = recipe.basisnet()?;
    let backbone = format!(
        "{} {} at {} px",
        config.specialist.arch, config.specialist.width, config.resolution
    );
    let (what, role, bases) = match (recipe.model.baseline, recipe.model.baseline_of) {
        (true, Stage::Lightweight) => (
            format!("lightweight alone: {backbone}"),
            Role::Lightweight,
            1,
        ),
        (true, Stage::Specialist) => (format!("static: {backbone}"), Role::Static, 1),
        (false, _) => (
            format!("BasisNet, N = {}: {backbone}", config.basis.num_bases),
            Role::BasisNet,
            config.basis.num_bases,
        ),
    };
    let seed = recipe.train.seed;
    recipe.train.seed = 0;
    let key = serde_json::to_string(&recipe)?;
    let run = Run {
        dir: dir.to_path_buf(),
        seed,
        metrics,
    };
    Ok((run, what, role, bases, recipe.data.dataset, key))
}

/// The runs grouped by recipe (all but the seed); a group is named after its first run's
/// folder, or that folder's parent when the folder is `seed-<n>`.
fn group(dirs: &[PathBuf]) -> Result<Vec<Group>> {
    let mut groups: Vec<Group> = Vec::new();
    for dir in dirs {
        let (run, what, role, bases, dataset, key) = load(dir)?;
        if let Some(g) = groups.iter_mut().find(|g| g.key == key) {
            if g.runs.iter().any(|r| r.seed == run.seed) {
                bail!(
                    "{} and {} are the same recipe with the same seed {}: pass each run once",
                    g.runs[0].dir.display(),
                    dir.display(),
                    run.seed
                );
            }
            g.runs.push(run);
            continue;
        }
        let folder = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
        let own = folder(dir).unwrap_or_else(|| dir.display().to_string());
        let name = match own.strip_prefix("seed-") {
            Some(n) if n.parse::<u64>().is_ok() => dir.parent().and_then(folder).unwrap_or(own),
            _ => own,
        };
        let taken = groups.iter().filter(|g| g.name == name).count();
        groups.push(Group {
            name: if taken == 0 {
                name
            } else {
                format!("{name}-{}", taken + 1)
            },
            what,
            role,
            bases,
            runs: vec![run],
            dataset,
            key,
        });
    }
    for g in &mut groups {
        g.runs.sort_by_key(|r| r.seed);
    }
    Ok(groups)
}

pub fn run(args: &CompareArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.max_drop) {
        bail!("--max-drop must be in [0, 1), found {}", args.max_drop);
    }
    let groups = group(&args.runs)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let md = format!(
        "{}\n{}",
        table(&groups, args.max_drop),
        claims::write(&groups, args.max_drop)
    );
    // The heatmap of each BasisNet's first seed, drawn again from its metrics.
    for g in &groups {
        if let Some(stats) = &g.runs[0].metrics.evaluation.coefficients {
            let classes: Vec<String> = match g.dataset {
                DatasetKind::FashionMnist => FASHION_MNIST_CLASSES.map(String::from).to_vec(),
                _ => Vec::new(),
            };
            std::fs::write(
                args.out.join(format!("coefficients-{}.svg", g.name)),
                coefficient_heatmap(stats, &classes),
            )?;
        }
    }
    plots(&groups, &args.out)?;
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(args.out.join("summary.md"), summary(&groups, args.max_drop))?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json(&groups, args.max_drop))?,
    )?;
    print!("{md}");
    eprintln!("compare: wrote {}", args.out.join("results.md").display());
    Ok(())
}

/// MAdds per image with thousands separated (`11,547,512`); the sd only where seeds differ.
fn madds(s: Option<Spread>) -> String {
    let group = |v: f64| {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    match s {
        None => "-".into(),
        Some(s) if s.sd == 0.0 => group(s.mean),
        Some(s) => format!("{} ± {}", group(s.mean), group(s.sd)),
    }
}

fn cell(s: Option<Spread>, scale: f64, decimals: usize) -> String {
    s.map(|s| s.show(scale, decimals))
        .unwrap_or_else(|| "-".into())
}

/// The results table: one row a group, mean ± sd over its seeds.
fn table(groups: &[Group], max_drop: f64) -> String {
    let mut md = format!(
        "Top-1 in %, mean ± sample standard deviation over the seeds of a row; the test split only reports. The early exit is the cheapest threshold within {:.1} points of the specialist on validation, reported on test.\n\n| run | model | seeds | validation top-1 | test top-1 | test top-1, weights chosen on validation (trained or EMA) | lightweight test top-1 | MAdds | early exit (chosen on validation) | best epoch = last | coefficient entropy / ln N | training s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        100.0 * max_drop
    );
    for g in groups {
        let seeds: Vec<String> = g.runs.iter().map(|r| r.seed.to_string()).collect();
        let exit = |f: fn(&ExitPoint) -> f64| g.exit(max_drop, f);
        let thresholds: Vec<String> = g
            .runs
            .iter()
            .filter_map(|r| r.metrics.early_exit_choice(max_drop))
            .map(|(v, _)| v.threshold.to_string())
            .collect();
        let early = match (
            exit(|p| p.top1),
            exit(|p| p.avg_madds),
            exit(|p| p.exit_rate),
        ) {
            (Some(top1), Some(madds), Some(rate)) => format!(
                "t = {}: {} at {} MAdds ({:.0}% exit)",
                thresholds.join("/"),
                top1.show(100.0, 2),
                self::madds(Some(madds)),
                100.0 * rate.mean
            ),
            _ => "-".into(),
        };
        let last_is_best = g
            .runs
            .iter()
            .filter(|r| r.metrics.best_epoch == r.metrics.epochs)
            .count();
        let _ = writeln!(
            md,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} of {} | {} | {} |",
            g.name,
            g.what,
            g.runs.len(),
            seeds.join(", "),
            cell(g.spread(validation_top1), 100.0, 2),
            cell(g.spread(test_top1), 100.0, 2),
            cell(g.spread(chosen_top1), 100.0, 2),
            cell(g.spread(|m| m.evaluation.light_top1), 100.0, 2),
            madds(g.spread(|m| Some(m.evaluation.full_madds as f64))),
            early,
            last_is_best,
            g.runs.len(),
            cell(
                g.spread(|m| m
                    .evaluation
                    .coefficients
                    .as_ref()
                    .map(|c| { c.mean_entropy / (c.num_bases.max(2) as f64).ln() })),
                1.0,
                3
            ),
            cell(g.spread(|m| Some(m.train_seconds)), 1.0, 0),
        );
    }
    md
}

/// `summary.md`: the short table (what a README quotes), mean ± sd over seeds.
fn summary(groups: &[Group], max_drop: f64) -> String {
    let mut md = String::from(
        "| configuration | seeds | validation top-1 | test top-1 | MAdds per image | early exit chosen on validation: test top-1 at average MAdds |\n|---|---|---|---|---|---|\n",
    );
    for g in groups {
        let exit = |f: fn(&ExitPoint) -> f64| g.exit(max_drop, f);
        let early = match (exit(|p| p.top1), exit(|p| p.avg_madds)) {
            (Some(top1), Some(madds)) => {
                format!("{}% at {}", top1.show(100.0, 2), self::madds(Some(madds)))
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "| {} ({}) | {} | {}% | {}% | {} | {early} |",
            g.name,
            g.what,
            g.runs.len(),
            cell(g.spread(validation_top1), 100.0, 2),
            cell(g.spread(test_top1), 100.0, 2),
            madds(g.spread(|m| Some(m.evaluation.full_madds as f64))),
        );
    }
    md
}

/// `results.json`: every group with its per-seed values and their spreads.
fn json(groups: &[Group], max_drop: f64) -> serde_json::Value {
    let spread = |s: Option<Spread>| s.map(|s| json!({"n": s.n, "mean": s.mean, "sd": s.sd}));
    let rows: Vec<_> = groups
        .iter()
        .map(|g| {
            json!({
                "run": g.name,
                "model": g.what,
                "num_bases": g.bases,
                "validation_top1": spread(g.spread(validation_top1)),
                "test_top1": spread(g.spread(test_top1)),
                "chosen_weights_test_top1": spread(g.spread(chosen_top1)),
                "light_top1": spread(g.spread(|m| m.evaluation.light_top1)),
                "early_exit_test_top1": spread(g.exit(max_drop, |p| p.top1)),
                "early_exit_avg_madds": spread(g.exit(max_drop, |p| p.avg_madds)),
                "seeds": g.runs.iter().map(|r| json!({
                    "seed": r.seed,
                    "dir": r.dir,
                    "validation_top1": validation_top1(&r.metrics),
                    "test_top1": r.metrics.evaluation.specialist_top1,
                    "chosen_weights_test_top1": chosen_top1(&r.metrics),
                    "light_top1": r.metrics.evaluation.light_top1,
                    "full_madds": r.metrics.evaluation.full_madds,
                    "operating_point": r.metrics.early_exit_choice(max_drop).map(|(_, t)| t),
                    "early_exit": r.metrics.evaluation.early_exit,
                    "coefficients": r.metrics.evaluation.coefficients,
                    "train_seconds": r.metrics.train_seconds,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!(rows)
}

/// Accuracy against N and the early-exit curves, mean ± sd over seeds as error bars.
fn plots(groups: &[Group], out: &Path) -> Result<()> {
    let point = |g: &Group, x: f64| {
        g.spread(test_top1)
            .map(|s| ((x, 100.0 * s.mean), 100.0 * s.sd))
    };
    let mut by_bases: Vec<((f64, f64), f64)> = groups
        .iter()
        .filter(|g| g.role != Role::Lightweight)
        .filter_map(|g| point(g, g.bases as f64))
        .collect();
    by_bases.sort_by(|a, b| a.0 .0.total_cmp(&b.0 .0));
    let (points, errors) = by_bases.into_iter().unzip();
    let mut series = vec![Series::line("specialist (N = 1: static)", points).with_errors(errors)];
    if let Some(light) = groups.iter().find(|g| g.role == Role::Lightweight) {
        if let Some(((_, y), e)) = point(light, 1.0) {
            series.push(Series::markers("lightweight alone", vec![(1.0, y)]).with_errors(vec![e]));
        }
    }
    std::fs::write(
        out.join("accuracy_vs_bases.svg"),
        line_chart(
            "Test top-1 against bases N (mean ± sd over seeds)",
            "bases N",
            "top-1 (%)",
            &series,
        ),
    )?;
    // One curve a BasisNet, averaged over seeds threshold by threshold.
    let mut curves: Vec<Series> = Vec::new();
    for g in groups.iter().filter(|g| g.role == Role::BasisNet) {
        let thresholds = g.runs[0].metrics.evaluation.early_exit.len();
        let mut points = Vec::new();
        let mut errors = Vec::new();
        for i in 0..thresholds {
            let at = |f: fn(&ExitPoint) -> f64| g.spread(|m| m.evaluation.early_exit.get(i).map(f));
            if let (Some(madds), Some(top1)) = (at(|p| p.avg_madds), at(|p| p.top1)) {
                points.push((madds.mean, 100.0 * top1.mean));
                errors.push(100.0 * top1.sd);
            }
        }
        if !points.is_empty() {
            curves
                .push(Series::line(format!("{}: early exit", g.name), points).with_errors(errors));
        }
    }
    if curves.is_empty() {
        return Ok(());
    }
    for g in groups.iter().filter(|g| g.role != Role::BasisNet) {
        let madds = g.runs[0].metrics.evaluation.full_madds as f64;
        if let Some(((_, y), e)) = point(g, madds) {
            curves.push(Series::markers(g.name.clone(), vec![(madds, y)]).with_errors(vec![e]));
        }
    }
    std::fs::write(
        out.join("early_exit.svg"),
        line_chart(
            "Early exit: test top-1 against average MAdds (mean ± sd over seeds)",
            "MAdds per image (average)",
            "top-1 (%)",
            &curves,
        ),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn madds_are_grouped_by_thousands_and_constant_ones_have_no_spread() {
        assert_eq!(madds(Spread::of(&[11_547_512.0; 3])), "11,547,512");
        assert_eq!(madds(Spread::of(&[548_848.0])), "548,848");
        assert_eq!(madds(Spread::of(&[1_000.0, 3_000.0])), "2,000 ± 1,414");
        assert_eq!(madds(None), "-");
    }
}
