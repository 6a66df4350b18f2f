//! `basisnet predict`, `basisnet specialize`, `basisnet calibrate`: using a trained run.

use anyhow::{bail, Context, Result};
use basis_models::{checkpoint, Stage};
use basis_train::data::{decode, normalize_into, transform, AugmentConfig, Loader, LoaderConfig};
use basis_train::{evaluate, trainer, Model, Recipe};
use clap::Args;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// A trained run: its recipe, variables and model.
pub struct LoadedRun {
    pub recipe: Recipe,
    pub vs: nn::VarStore,
    pub model: Model,
}

/// Load `which` (best or last) weights of the run in `dir`.
pub fn load_run(dir: &Path, which: &str) -> Result<LoadedRun> {
    let recipe_path = dir.join("recipe.toml");
    if !recipe_path.exists() {
        bail!("{} is not a run directory (no recipe.toml)", dir.display());
    }
    if which != "best" && which != "last" {
        bail!("--which is best or last, not {which:?}");
    }
    let recipe = Recipe::load(&recipe_path.display().to_string())?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::build(&vs.root(), &recipe)?;
    checkpoint::load(&vs, &dir.join(format!("{which}.safetensors")))?;
    Ok(LoadedRun { recipe, vs, model })
}

/// The evaluation transforms of a run, at both resolutions.
pub fn eval_augment(recipe: &Recipe) -> Result<AugmentConfig> {
    let config = recipe.basisnet()?;
    Ok(AugmentConfig {
        resolution: config.resolution as u32,
        light_resolution: Some(config.lightweight_resolution as u32),
        ..recipe.data.augment.clone()
    })
}

/// `[N, C, H, W]` tensors at both resolutions for image files.
fn images(paths: &[PathBuf], recipe: &Recipe) -> Result<(Tensor, Tensor)> {
    let augment = eval_augment(recipe)?;
    let channels = recipe.basisnet()?.specialist.in_channels as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (mut full, mut light) = (Vec::new(), Vec::new());
    for path in paths {
        let image =
            decode(path, channels).with_context(|| format!("reading {}", path.display()))?;
        let (f, l) = transform(&augment, &image, false, &mut rng)?;
        let l = l.expect("the evaluation transform makes the light copy");
        let mut fv = vec![0f32; f.len()];
        normalize_into(&f, &augment.mean, &augment.std, &mut fv);
        let mut lv = vec![0f32; l.len()];
        normalize_into(&l, &augment.mean, &augment.std, &mut lv);
        full.push(Tensor::from_slice(&fv).reshape([
            1,
            channels as i64,
            f.dim().0 as i64,
            f.dim().1 as i64,
        ]));
        light.push(Tensor::from_slice(&lv).reshape([
            1,
            channels as i64,
            l.dim().0 as i64,
            l.dim().1 as i64,
        ]));
    }
    Ok((Tensor::cat(&light, 0), Tensor::cat(&full, 0)))
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet predict --checkpoint runs/fashion shoe.png shirt.png\n  basisnet predict --checkpoint runs/fashion --threshold 0.9 --json *.png"
)]
pub struct PredictArgs {
    /// Image files (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// A run directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// best or last weights.
    #[arg(long, default_value = "best")]
    which: String,
    /// Early-exit threshold on the lightweight model's max probability.
    #[arg(long, default_value_t = 0.9)]
    threshold: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    let run = load_run(&args.checkpoint, &args.which)?;
    let classes = trainer::open_dataset(&run.recipe, false)?
        .classes()
        .to_vec();
    let (light, full) = images(&args.images, &run.recipe)?;
    let _guard = tch::no_grad_guard();
    let (logits, stages, madds): (Tensor, Vec<&str>, Vec<i64>) = match &run.model {
        Model::BasisNet(net) => {
            let out = net.early_exit(&light, &full, args.threshold)?;
            let stages = out
                .stages
                .iter()
                .map(|s| {
                    if *s == Stage::Lightweight {
                        "lightweight"
                    } else {
                        "specialist"
                    }
                })
                .collect();
            (out.logits, stages, out.madds)
        }
        Model::Static(net) => {
            let m = run.model.madds(run.recipe.basisnet()?.resolution)?.1;
            let n = args.images.len();
            (
                net.forward_t(&full, &[], false)?,
                vec!["static"; n],
                vec![m; n],
            )
        }
    };
    let probs = logits.softmax(-1, Kind::Float);
    let k = probs.size()[1].min(5);
    let (top_p, top_i) = probs.topk(k, -1, true, true);
    let mut out = Vec::new();
    for (i, path) in args.images.iter().enumerate() {
        let p: Vec<f32> = Vec::try_from(top_p.get(i as i64))?;
        let c: Vec<i64> = Vec::try_from(top_i.get(i as i64))?;
        let top: Vec<serde_json::Value> = c
            .iter()
            .zip(&p)
            .map(|(&c, &p)| {
                serde_json::json!({"class": c, "name": classes.get(c as usize), "probability": p})
            })
            .collect();
        if !args.json {
            println!(
                "{}  ({} decided, {} MAdds)",
                path.display(),
                stages[i],
                madds[i]
            );
            for t in &top {
                println!(
                    "  {:>6.2}%  {} {}",
                    100.0 * t["probability"].as_f64().unwrap_or(0.0),
                    t["class"],
                    t["name"].as_str().unwrap_or("")
                );
            }
        }
        out.push(
            serde_json::json!({"image": path, "stage": stages[i], "madds": madds[i], "top5": top}),
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet specialize --checkpoint runs/fashion --image boot.png --out boot-specialist.safetensors\n  basisnet specialize --checkpoint runs/fashion --coefficients 0.7,0.1,0.1,0.1 --out mix.safetensors"
)]
pub struct SpecializeArgs {
    /// A run directory (of a BasisNet).
    #[arg(long)]
    checkpoint: PathBuf,
    /// best or last weights.
    #[arg(long, default_value = "best")]
    which: String,
    /// Take the coefficients the lightweight model gives this image.
    #[arg(
        long,
        conflicts_with = "coefficients",
        required_unless_present = "coefficients"
    )]
    image: Option<PathBuf>,
    /// Or give them: N comma-separated numbers (one vector per coefficient vector, in order).
    #[arg(long, value_delimiter = ',')]
    coefficients: Option<Vec<f64>>,
    /// Where to write the static network (torchvision's names); never overwritten.
    #[arg(long)]
    out: PathBuf,
}

pub fn specialize(args: &SpecializeArgs) -> Result<()> {
    if args.out.exists() {
        bail!(
            "{} exists; choose another --out (nothing is overwritten)",
            args.out.display()
        );
    }
    let run = load_run(&args.checkpoint, &args.which)?;
    let Model::BasisNet(net) = &run.model else {
        bail!(
            "{} holds a static network; there is nothing to specialize",
            args.checkpoint.display()
        );
    };
    let vectors = net.specialist().num_coefficient_vectors();
    let n = net.config().basis.num_bases as usize;
    let coefficients: Vec<Tensor> = match (&args.image, &args.coefficients) {
        (Some(image), _) => {
            let (light, _) = images(std::slice::from_ref(image), &run.recipe)?;
            let out = tch::no_grad(|| net.lightweight().forward_t(&light, false))?;
            out.coefficients.iter().map(|c| c.get(0)).collect()
        }
        (None, Some(values)) => {
            if values.len() != vectors * n {
                bail!(
                    "--coefficients has {} numbers; this specialist reads {vectors} vector(s) of {n}",
                    values.len()
                );
            }
            values
                .chunks(n)
                .map(|c| Tensor::from_slice(c).to_kind(Kind::Float))
                .collect()
        }
        (None, None) => bail!("give --image or --coefficients"),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    net.specialist().specialize(&vs.root(), &coefficients)?;
    checkpoint::save(&vs, &args.out, &Default::default())?;
    let shown: Vec<String> = coefficients
        .iter()
        .map(|c| format!("{:?}", Vec::<f32>::try_from(c).unwrap_or_default()))
        .collect();
    println!(
        "wrote {} ({} as a static network, coefficients {})",
        args.out.display(),
        net.config().specialist.arch,
        shown.join(" ")
    );
    let _ = run.vs;
    Ok(())
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet calibrate --checkpoint runs/fashion --max-drop 0.005\n  basisnet calibrate --checkpoint runs/fashion --madds-budget 3000000 --json"
)]
pub struct CalibrateArgs {
    /// A run directory (of a BasisNet).
    #[arg(long)]
    checkpoint: PathBuf,
    /// best or last weights.
    #[arg(long, default_value = "best")]
    which: String,
    /// Largest accepted top-1 drop from the specialist (fraction: 0.005 = half a point).
    #[arg(long, conflicts_with = "madds_budget")]
    max_drop: Option<f64>,
    /// Or: the best top-1 within this many MAdds per image on average.
    #[arg(long)]
    madds_budget: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let run = load_run(&args.checkpoint, &args.which)?;
    if matches!(run.model, Model::Static(_)) {
        bail!(
            "{} holds a static network; early exit needs a BasisNet",
            args.checkpoint.display()
        );
    }
    let thresholds: Vec<f64> = (0..=100)
        .map(|i| 0.3 + 0.007 * f64::from(i))
        .chain([1.01])
        .collect();
    let loader = Loader::new(
        trainer::open_dataset(&run.recipe, false)?,
        eval_augment(&run.recipe)?,
        false,
        LoaderConfig {
            batch_size: 256,
            shuffle: false,
            workers: run.recipe.data.workers,
            ..Default::default()
        },
    )?;
    let e = evaluate(
        &run.model,
        None,
        &loader,
        &thresholds,
        run.recipe.basisnet()?.resolution,
    )?;
    let chosen = match (args.max_drop, args.madds_budget) {
        (Some(drop), _) => e
            .early_exit
            .iter()
            .filter(|p| p.top1 >= e.specialist_top1 - drop)
            .min_by(|a, b| a.avg_madds.total_cmp(&b.avg_madds)),
        (None, Some(budget)) => e
            .early_exit
            .iter()
            .filter(|p| p.avg_madds <= budget)
            .max_by(|a, b| a.top1.total_cmp(&b.top1)),
        (None, None) => bail!("give --max-drop or --madds-budget"),
    };
    let Some(p) = chosen else {
        bail!(
            "no threshold meets the target (the lightweight stage alone costs {} MAdds)",
            e.light_madds
        );
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "threshold": p.threshold, "exit_rate": p.exit_rate, "top1": p.top1,
                "avg_madds": p.avg_madds, "specialist_top1": e.specialist_top1,
            }))?
        );
    } else {
        println!(
            "threshold {:.3}: exit {:.1}%, top-1 {:.2}% (specialist {:.2}%), {:.0} MAdds on average",
            p.threshold,
            100.0 * p.exit_rate,
            100.0 * p.top1,
            100.0 * e.specialist_top1,
            p.avg_madds
        );
    }
    Ok(())
}
