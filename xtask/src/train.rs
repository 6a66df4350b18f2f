//! `cargo xtask train`: the main job. Setup, Fashion-MNIST, the quick BasisNet recipe on
//! the CPU, evaluation, and a short summary (or the static baseline with `--baseline`).

use crate::{data, setup, util};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

#[derive(Args)]
pub struct TrainArgs {
    /// Train the static MobileNet of the specialist's size with the same recipe instead.
    #[arg(long)]
    pub baseline: bool,
    /// A shipped recipe or a TOML file.
    #[arg(long, default_value = "fashion-quick")]
    pub recipe: String,
    /// Override a recipe key (repeatable): `train.epochs=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The run directory (default: runs/<recipe>-<basisnet|baseline>-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let torch = setup::run(&setup::SetupArgs::default())?;
    data::run(&data::DataArgs {
        which: data::Which::FashionMnist,
    })?;
    let root = util::workspace_root();
    let kind = if args.baseline {
        "baseline"
    } else {
        "basisnet"
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let out = args.out.clone().unwrap_or_else(|| {
        root.join("runs").join(format!(
            "{}-{kind}-{stamp}",
            args.recipe.trim_end_matches(".toml").replace('/', "_")
        ))
    });
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&root)
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "basis-cli",
            "--",
            "train",
            "--json",
        ])
        .args(["--recipe", &args.recipe, "--out"])
        .arg(&out)
        .env("BASISNET_DATA_DIR", data::data_root()?);
    for s in &args.set {
        cmd.args(["--set", s]);
    }
    if args.baseline {
        cmd.arg("--baseline");
    }
    torch.apply_env(&mut cmd);
    eprintln!(
        "train: {kind}, recipe {}, run directory {}",
        args.recipe,
        out.display()
    );
    let output = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start cargo run -p basis-cli")?;
    if !output.status.success() {
        bail!(
            "training failed ({}); the run directory is {}",
            output.status,
            out.display()
        );
    }
    let metrics: serde_json::Value = serde_json::from_slice(&output.stdout)
        .context("basisnet train --json printed no metrics")?;
    print_summary(&metrics, &out);
    Ok(())
}

fn pct(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|v| format!("{:.2}%", 100.0 * v))
        .unwrap_or_else(|| "-".into())
}

/// The lightweight, specialist and early-exit figures of a run.
fn print_summary(m: &serde_json::Value, out: &std::path::Path) {
    let full = m["full_madds"].as_f64().unwrap_or(0.0);
    let light = m["light_madds"].as_f64().unwrap_or(0.0);
    println!();
    println!("run directory: {}", out.display());
    println!(
        "training: {} epochs in {:.0} s",
        m["epochs"],
        m["train_seconds"].as_f64().unwrap_or(0.0)
    );
    if !m["light_top1"].is_null() {
        println!(
            "lightweight model   top-1 {:>7}   {:>12.0} MAdds",
            pct(&m["light_top1"]),
            light
        );
    }
    println!(
        "specialist          top-1 {:>7}   {:>12.0} MAdds",
        pct(&m["specialist_top1"]),
        full
    );
    if !m["ema_specialist_top1"].is_null() {
        println!(
            "EMA specialist      top-1 {:>7}",
            pct(&m["ema_specialist_top1"])
        );
    }
    // The operating point: the cheapest threshold within 0.5 points of the specialist.
    let target = m["specialist_top1"].as_f64().unwrap_or(0.0) - 0.005;
    let point = m["early_exit"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["top1"].as_f64().unwrap_or(0.0) >= target)
        .min_by(|a, b| {
            let (x, y) = (
                a["avg_madds"].as_f64().unwrap_or(f64::MAX),
                b["avg_madds"].as_f64().unwrap_or(f64::MAX),
            );
            x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal)
        });
    if let Some(p) = point {
        println!(
            "early exit (t={})   top-1 {:>7}   {:>12.0} MAdds on average, {:.1}% exit",
            p["threshold"],
            pct(&p["top1"]),
            p["avg_madds"].as_f64().unwrap_or(0.0),
            100.0 * p["exit_rate"].as_f64().unwrap_or(0.0)
        );
    }
}
