//! `basisnet compare`: one table and plots over several finished runs (what
//! `cargo xtask repro` writes): accuracy, cost, early exit, and the coefficients.

use anyhow::{bail, Context, Result};
use basis_train::plot::{line_chart, Series};
use basis_train::recipe::Stage;
use basis_train::{Metrics, RunDir};
use clap::Args;
use serde_json::json;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet compare runs/static runs/n2 runs/n4 runs/n8 --out runs/compare\n  basisnet compare runs/* --out report --max-drop 0.01"
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
    /// specialist.
    #[arg(long, default_value_t = 0.005, value_parser = crate::numbers::non_negative, allow_negative_numbers = true)]
    max_drop: f64,
}

struct RunRow {
    dir: PathBuf,
    name: String,
    what: String,
    bases: i64,
    basisnet: bool,
    lightweight_alone: bool,
    metrics: Metrics,
}

fn load(dir: &Path) -> Result<RunRow> {
    let run = RunDir::new(dir);
    let metrics = run.read_metrics()?;
    let recipe = run.read_recipe()?;
    let config = recipe.basisnet()?;
    let backbone =
        |c: &basis_models::MobileNetConfig, r: i64| format!("{} {} at {r} px", c.arch, c.width);
    let (what, bases) = match (recipe.model.baseline, recipe.model.baseline_of) {
        (true, Stage::Lightweight) => (
            format!(
                "lightweight alone: {}",
                backbone(&config.specialist, config.resolution)
            ),
            1,
        ),
        (true, Stage::Specialist) => (
            format!(
                "static: {}",
                backbone(&config.specialist, config.resolution)
            ),
            1,
        ),
        (false, _) => (
            format!(
                "BasisNet, N = {}: {}",
                config.basis.num_bases,
                backbone(&config.specialist, config.resolution)
            ),
            config.basis.num_bases,
        ),
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    Ok(RunRow {
        dir: dir.to_path_buf(),
        name,
        what,
        bases,
        basisnet: !recipe.model.baseline,
        lightweight_alone: recipe.model.baseline && recipe.model.baseline_of == Stage::Lightweight,
        metrics,
    })
}

pub fn run(args: &CompareArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.max_drop) {
        bail!("--max-drop must be in [0, 1), found {}", args.max_drop);
    }
    let rows = args
        .runs
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let pct = |v: f64| format!("{:.2}%", 100.0 * v);
    let mut md = format!(
        "| run | model | epochs | specialist top-1 | EMA top-1 | lightweight top-1 | MAdds | early exit (within {:.1} points) | coefficient entropy / ln N | mean largest coefficient | training s |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        100.0 * args.max_drop
    );
    let mut json_rows = Vec::new();
    for r in &rows {
        let m = &r.metrics;
        // Chosen on validation, reported on test.
        let exit = m.early_exit_choice(args.max_drop).map(|(_, test)| test);
        let coeff = m.evaluation.coefficients.as_ref();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            r.name,
            r.what,
            m.epochs,
            pct(m.evaluation.specialist_top1),
            m.evaluation
                .ema_specialist_top1
                .map(pct)
                .unwrap_or_else(|| "-".into()),
            m.evaluation
                .light_top1
                .map(pct)
                .unwrap_or_else(|| "-".into()),
            m.evaluation.full_madds,
            exit.map(|p| format!(
                "t = {}: {} at {:.0} MAdds ({:.0}% exit)",
                p.threshold,
                pct(p.top1),
                p.avg_madds,
                100.0 * p.exit_rate
            ))
            .unwrap_or_else(|| "-".into()),
            coeff
                .map(|c| format!("{:.3}", c.mean_entropy / (c.num_bases.max(2) as f64).ln()))
                .unwrap_or_else(|| "-".into()),
            coeff
                .map(|c| format!("{:.3}", c.mean_max))
                .unwrap_or_else(|| "-".into()),
            m.train_seconds
        );
        json_rows.push(json!({
            "run": r.name,
            "model": r.what,
            "num_bases": r.bases,
            "epochs": m.epochs,
            "specialist_top1": m.evaluation.specialist_top1,
            "ema_specialist_top1": m.evaluation.ema_specialist_top1,
            "light_top1": m.evaluation.light_top1,
            "light_madds": m.evaluation.light_madds,
            "full_madds": m.evaluation.full_madds,
            "early_exit": m.evaluation.early_exit,
            "operating_point": exit,
            "coefficients": m.evaluation.coefficients,
            "train_seconds": m.train_seconds,
        }));
        let heatmap = r.dir.join("coefficients.svg");
        if heatmap.exists() {
            let copy = args.out.join(format!("coefficients-{}.svg", r.name));
            std::fs::copy(&heatmap, &copy)
                .with_context(|| format!("copying {}", heatmap.display()))?;
        }
    }

    // Accuracy against the number of bases (static = 1) for the specialist-sized runs.
    let mut by_bases: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| !r.lightweight_alone)
        .map(|r| (r.bases as f64, 100.0 * r.metrics.evaluation.specialist_top1))
        .collect();
    by_bases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut series = vec![Series {
        name: "specialist (N = 1: static)".into(),
        points: by_bases,
    }];
    if let Some(light) = rows.iter().find(|r| r.lightweight_alone) {
        let n: Vec<f64> = rows.iter().map(|r| r.bases as f64).collect();
        let (lo, hi) = (
            n.iter().copied().fold(f64::INFINITY, f64::min),
            n.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        );
        let y = 100.0 * light.metrics.evaluation.specialist_top1;
        series.push(Series {
            name: "lightweight model alone".into(),
            points: vec![(lo, y), (hi, y)],
        });
    }
    std::fs::write(
        args.out.join("accuracy_vs_bases.svg"),
        line_chart(
            "Test top-1 against the number of bases",
            "bases N",
            "top-1 (%)",
            &series,
        ),
    )?;
    let curves: Vec<Series> = rows
        .iter()
        .filter(|r| r.basisnet)
        .map(|r| Series {
            name: format!("N = {}", r.bases),
            points: r
                .metrics
                .evaluation
                .early_exit
                .iter()
                .map(|p| (p.avg_madds, 100.0 * p.top1))
                .collect(),
        })
        .collect();
    if !curves.is_empty() {
        std::fs::write(
            args.out.join("early_exit.svg"),
            line_chart(
                "Early exit: accuracy against average MAdds",
                "MAdds per image (average)",
                "top-1 (%)",
                &curves,
            ),
        )?;
    }
    std::fs::write(args.out.join("results.md"), &md)?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json_rows)?,
    )?;
    print!("{md}");
    eprintln!("compare: wrote {}", args.out.join("results.md").display());
    Ok(())
}
