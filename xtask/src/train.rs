//! `cargo xtask train`: the main job. Setup, Fashion-MNIST, the quick BasisNet recipe on
//! the CPU, evaluation, and the summary `basisnet train` prints (or the static baseline
//! with `--baseline`).

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
    // Build first, in the open: on a fresh machine the release build of libtorch's
    // bindings and the workspace takes minutes, and cargo's own progress shows it moving.
    eprintln!(
        "train: building basisnet (release; about 4 minutes on 2 cores the first time, seconds after)"
    );
    let mut build = Command::new(&cargo);
    build
        .current_dir(&root)
        .args(["build", "--release", "-p", "basis-cli"]);
    torch.apply_env(&mut build);
    let status = build.status().context("could not start cargo build")?;
    if !status.success() {
        bail!("building basisnet failed ({status})");
    }
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
    // `basisnet train` prints the run's summary (from its metrics.json) on stdout and the
    // run directory last.
    let status = cmd
        .status()
        .context("could not start cargo run -p basis-cli")?;
    if !status.success() {
        bail!(
            "training failed ({status}); the run directory is {}",
            out.display()
        );
    }
    Ok(())
}
