//! `cargo xtask repro`: the paper's claims at the scale of a 2-core machine, on
//! Fashion-MNIST with a fixed seed.
//!
//! Trains, with one recipe: the static network of the specialist's architecture, the
//! lightweight model alone, and BasisNets with N = 2, 4, 8 bases (N = 1 is the static
//! run); then `basisnet compare` writes the results table, accuracy against N, the
//! early-exit curves and a heatmap of the mean coefficient vector per class for every
//! BasisNet. `--quick` trains one epoch on 2,000 images (evaluated on 1,000) so CI can
//! run the whole path in minutes; the full mode trains the recipe as written.

use crate::{data, setup, util};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

#[derive(Args, Default)]
pub struct ReproArgs {
    /// One epoch on 2,000 training images (minutes; what CI runs).
    #[arg(long)]
    pub quick: bool,
    /// The recipe every run shares (default: fashion-quick).
    #[arg(long)]
    pub recipe: Option<String>,
    /// Where the runs and the results go (default: target/repro or target/repro-quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override a recipe key in every run (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(args: &ReproArgs) -> Result<()> {
    let torch = setup::run(&setup::SetupArgs::default())?;
    data::run(&data::DataArgs {
        which: data::Which::FashionMnist,
    })?;
    let root = util::workspace_root();
    let recipe = args
        .recipe
        .clone()
        .unwrap_or_else(|| "fashion-quick".into());
    let out = args.out.clone().unwrap_or_else(|| {
        root.join("target")
            .join(if args.quick { "repro-quick" } else { "repro" })
    });
    if out.join("runs").exists() {
        bail!(
            "{} already holds runs; move it away or pass --out",
            out.join("runs").display()
        );
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let basisnet = |sub: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root).args(["run", "--quiet"]);
        if !args.quick {
            cmd.arg("--release");
        }
        cmd.args(["-p", "basis-cli", "--"]).args(sub);
        torch.apply_env(&mut cmd);
        cmd
    };
    let mut common: Vec<String> = Vec::new();
    if args.quick {
        for s in [
            "data.limit=2000",
            "data.eval_limit=1000",
            "train.epochs=1",
            "train.batch_size=64",
        ] {
            common.push(s.into());
        }
    }
    common.extend(args.set.iter().cloned());
    let runs: [(&str, &[&str]); 5] = [
        ("static", &["--baseline"]),
        (
            "lightweight",
            &["--baseline", "--set", "model.baseline_of=lightweight"],
        ),
        ("basisnet-n2", &["--set", "model.num_bases=2"]),
        ("basisnet-n4", &["--set", "model.num_bases=4"]),
        ("basisnet-n8", &["--set", "model.num_bases=8"]),
    ];
    let data_root = data::data_root()?;
    let started = std::time::Instant::now();
    let mut dirs = Vec::new();
    for (name, extra) in runs {
        let dir = out.join("runs").join(name);
        eprintln!("repro: {name} -> {}", dir.display());
        let mut cmd = basisnet(&["train", "--recipe", &recipe, "--out"]);
        cmd.arg(&dir)
            .args(extra)
            .env("BASISNET_DATA_DIR", &data_root);
        for s in &common {
            cmd.args(["--set", s]);
        }
        util::run(&format!("basisnet train ({name})"), &mut cmd)?;
        dirs.push(dir);
    }
    let mut compare = basisnet(&["compare", "--out"]);
    compare.arg(&out).args(&dirs);
    util::run("basisnet compare", &mut compare)?;
    let command = format!(
        "cargo xtask repro{}{}{}",
        if args.quick { " --quick" } else { "" },
        if recipe == "fashion-quick" {
            String::new()
        } else {
            format!(" --recipe {recipe}")
        },
        args.set
            .iter()
            .map(|s| format!(" --set {s}"))
            .collect::<String>()
    );
    let table = std::fs::read_to_string(out.join("results.md"))
        .with_context(|| format!("reading {}", out.join("results.md").display()))?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let report = format!(
        "# Reproduction: `{command}`\n\n{date}, recipe `{recipe}`, {} s in all.\n\n{table}\nPlots: `accuracy_vs_bases.svg`, `early_exit.svg`, `coefficients-<run>.svg`; runs under `runs/`.\n",
        started.elapsed().as_secs()
    );
    std::fs::write(out.join("README.md"), report)?;
    eprintln!("repro: results in {}", out.join("README.md").display());
    Ok(())
}
