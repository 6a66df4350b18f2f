//! `basisnet train` and `basisnet eval`.

use crate::progress::Terminal;
use crate::weights::Which;
use anyhow::{bail, Context, Result};
use basis_amp::{autocast, Precision};
use basis_dist::ProcessGroup;
use basis_train::data::Split;
use basis_train::distributed;
use basis_train::{eval_loader, evaluate, DeviceChoice, Evaluation, Metrics, Recipe, Run, RunDir};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet train --recipe fashion-quick --out runs/fashion\n  basisnet train --recipe my.toml --set train.epochs=3 --set optim.lr=0.01 --out runs/short\n  basisnet train --resume runs/fashion"
)]
pub struct TrainArgs {
    /// A shipped recipe (fashion-quick, imagenet-basisnet-mv3) or a TOML file.
    #[arg(long, default_value = "fashion-quick")]
    recipe: std::ffi::OsString,
    /// Override a recipe key: `section.key=value` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Train the static network of the specialist's size instead (N = 1, no lightweight).
    #[arg(long)]
    baseline: bool,
    /// The run directory: a new folder, or an empty one (anything else is refused and left
    /// untouched).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Folder of the dataset (overrides data.dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop at the first bad sample (with its path) instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
    /// Print the final metrics as JSON.
    #[arg(long)]
    json: bool,
    /// Where to train: auto (CUDA when available), cpu, cuda or cuda:N (overrides
    /// train.device; with --resume, continues the run there).
    #[arg(long)]
    device: Option<DeviceChoice>,
    /// Data-parallel training: join the job this process was started in (torchrun
    /// --no-python, srun, or RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set by hand); rank 0
    /// writes the run directory.
    #[arg(long)]
    distributed: bool,
}

/// The process group of a `--distributed` run, from the launcher's variables.
fn join(args: &TrainArgs, recipe: &Recipe) -> Result<Option<Arc<ProcessGroup>>> {
    if !args.distributed {
        return Ok(None);
    }
    if args.resume.is_none() && args.out.is_none() {
        bail!("--distributed needs --out: every rank must name the same run directory");
    }
    match distributed::join_from_env(recipe)? {
        Some(group) => Ok(Some(group)),
        None => bail!(
            "--distributed found no launcher: run under `torchrun --no-python`, under `srun`, \
             or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT"
        ),
    }
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let mut run = if let Some(dir) = &args.resume {
        if !args.set.is_empty() || args.baseline || args.strict || args.data_dir.is_some() {
            bail!(
                "--resume continues the recipe saved in {}; --set, --baseline, --strict and --data-dir do not apply",
                dir.display()
            );
        }
        let mut saved = RunDir::new(dir)
            .read_recipe()
            .with_context(|| format!("resuming {}", dir.display()))?;
        if let Some(device) = args.device {
            saved.train.device = device;
        }
        // A device that cannot be had is refused before the ranks meet.
        saved.train.device.resolve(None)?;
        let group = join(args, &saved)?;
        Run::resume_with(dir, group, args.device)
            .with_context(|| format!("resuming {}", dir.display()))?
    } else {
        let mut recipe = Recipe::load(&args.recipe)?.with_overrides(&args.set)?;
        if args.baseline {
            recipe.model.baseline = true;
        }
        if let Some(dir) = &args.data_dir {
            recipe.data.dir = Some(dir.clone());
        }
        if args.strict {
            recipe.data.strict = true;
        }
        if let Some(device) = args.device {
            recipe.train.device = device;
        }
        let out = args.out.clone().unwrap_or_else(|| {
            let kind = if recipe.model.baseline {
                "baseline"
            } else {
                "basisnet"
            };
            PathBuf::from("runs").join(format!(
                "{}-{kind}-{}",
                Path::new(&args.recipe)
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy(),
                std::process::id()
            ))
        });
        // Refuse a bad recipe or a device that cannot be had before meeting the other
        // ranks and before the run directory is made.
        recipe.validate()?;
        recipe.train.device.resolve(None)?;
        match join(args, &recipe)? {
            Some(group) => {
                let (main, world, backend) = (group.is_main(), group.world_size(), group.backend());
                let run = Run::new_distributed(recipe, &out, group)?;
                if main {
                    eprintln!(
                        "run directory: {} ({world} processes, {backend} backend)",
                        out.display()
                    );
                }
                run
            }
            None => {
                let run = Run::new(recipe, &out)?;
                eprintln!("run directory: {}", out.display());
                run
            }
        }
    };
    if let Some(note) = run.resume_note() {
        eprintln!("note: {note}");
    }
    if run.is_main() {
        for line in run.notes() {
            eprintln!("{line}");
        }
    }
    let log_every = run.recipe().train.log_every;
    run.observe(Box::new(Terminal::new(log_every)));
    let summary = run.train()?;
    if !run.is_main() {
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary.metrics)?);
    } else {
        print_summary(&summary.metrics);
    }
    eprintln!("run directory: {}", summary.dir.display());
    Ok(())
}

/// Top-1 and multiply-adds of each stage (and of the EMA weights), one line each.
fn print_stages(e: &Evaluation) {
    if e.bad_samples > 0 {
        eprintln!(
            "note: {} unreadable test sample(s) left out of the {} evaluated; first: {}",
            e.bad_samples,
            e.images,
            e.bad_examples.join("; ")
        );
    }
    if let Some(light) = e.light_top1 {
        println!(
            "lightweight model   top-1 {:>6.2}%   {:>12} MAdds",
            100.0 * light,
            e.light_madds
        );
    }
    println!(
        "specialist          top-1 {:>6.2}%   {:>12} MAdds (both stages)",
        100.0 * e.specialist_top1,
        e.full_madds
    );
    if let Some(ema) = e.ema_specialist_top1 {
        println!("EMA specialist      top-1 {:>6.2}%", 100.0 * ema);
    }
}

/// The lightweight, specialist and early-exit figures of a finished run on the test
/// split, with the early-exit threshold chosen on the validation split (within half a
/// point of the validation specialist).
fn print_summary(m: &Metrics) {
    let e = &m.evaluation;
    println!(
        "training: {} epochs in {:.0} s (best validation specialist top-1 {:.2}% at epoch {})",
        m.epochs,
        m.train_seconds,
        100.0 * m.best_top1,
        m.best_epoch
    );
    if let Some(v) = &m.validation {
        println!(
            "validation ({} images): specialist top-1 {:.2}%; test ({} images):",
            v.images,
            100.0 * v.specialist_top1,
            e.images
        );
    }
    print_stages(e);
    if let Some((_, p)) = m.early_exit_choice(0.005) {
        println!(
            "early exit (t={})  top-1 {:>6.2}%   {:>12.0} MAdds on average, {:.1}% exit (threshold chosen on validation)",
            p.threshold,
            100.0 * p.top1,
            p.avg_madds,
            100.0 * p.exit_rate
        );
    }
}

/// The split a command evaluates on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// The validation images held out of the training files (where choices are made).
    Val,
    /// The test images (reported only).
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Val => Split::Val,
            SplitArg::Test => Split::Test,
        }
    }
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet eval --checkpoint runs/fashion --json\n  basisnet eval --checkpoint runs/fashion --csv > curve.csv"
)]
pub struct EvalArgs {
    /// A run directory (its recipe and `best` or `last` weights).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which weights of the run.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    which: Which,
    /// Where to evaluate: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Arithmetic: fp32, or autocast to bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Early-exit thresholds (default: the recipe's).
    #[arg(long, value_delimiter = ',', value_parser = crate::numbers::non_negative, allow_negative_numbers = true)]
    thresholds: Option<Vec<f64>>,
    /// The split: the test images (to report) or the validation images held out of the
    /// training files (to choose on).
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print the early-exit curve as CSV.
    #[arg(long)]
    csv: bool,
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let device = args.device.resolve(None)?;
    let run = RunDir::new(&args.checkpoint).load_with_ema(args.which.into(), device)?;
    let recipe = &run.recipe;
    let loader = eval_loader(recipe, args.split.into())?;
    let thresholds = args
        .thresholds
        .clone()
        .unwrap_or(recipe.train.exit_thresholds.clone());
    let resolution = recipe.basisnet()?.resolution;
    let e = autocast(device, args.precision, || {
        evaluate(
            &run.model,
            run.ema.as_ref().map(|(_, m)| m),
            &loader,
            &thresholds,
            resolution,
        )
    })??;
    if args.csv {
        println!("threshold,exit_rate,top1,avg_madds");
        for p in &e.early_exit {
            println!(
                "{},{:.6},{:.6},{:.0}",
                p.threshold, p.exit_rate, p.top1, p.avg_madds
            );
        }
    } else if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print_stages(&e);
        for p in &e.early_exit {
            println!(
                "threshold {:.2}: exit {:.1}%, top-1 {:.2}%, {:.0} MAdds on average",
                p.threshold,
                100.0 * p.exit_rate,
                100.0 * p.top1,
                p.avg_madds
            );
        }
    }
    Ok(())
}
