//! `basisnet predict`, `basisnet specialize`, `basisnet calibrate`: using a trained run.

use crate::export::{deployment_metadata, write_new, Format};
use crate::weights::Which;
use anyhow::{bail, Context, Result};
use basis_amp::{autocast, Precision};
use basis_models::{checkpoint, Stage};
use basis_train::data::{decode, normalize_into, transform, Split};
use basis_train::{eval_loader, evaluate, DeviceChoice, LoadedRun, Model, Recipe, RunDir};
use clap::Args;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Open the run in `dir` with its `which` weights on `device`.
pub fn load_run(dir: &Path, which: Which, device: DeviceChoice) -> Result<LoadedRun> {
    let device = device.resolve(None)?;
    Ok(RunDir::new(dir).load(which.into(), device)?)
}

/// The class names of a run's dataset.
fn class_names(recipe: &Recipe) -> Result<Vec<String>> {
    Ok(recipe
        .data
        .open(Split::Test, recipe.in_channels()?)?
        .classes()
        .to_vec())
}

/// `[N, C, H, W]` tensors on `device` for image files through the run's evaluation
/// transforms: the low-resolution copies (a BasisNet only) and the full-resolution images.
fn images(
    paths: &[PathBuf],
    recipe: &Recipe,
    device: tch::Device,
) -> Result<(Option<Tensor>, Tensor)> {
    let augment = recipe.transforms()?;
    let channels = recipe.in_channels()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (mut full, mut light) = (Vec::new(), Vec::new());
    for path in paths {
        let image = decode(path, channels)?;
        let (f, l) = transform(&augment, &image, false, &mut rng)?;
        let tensor = |image: &ndarray::Array3<u8>| {
            let mut values = vec![0f32; image.len()];
            normalize_into(image, &augment.mean, &augment.std, &mut values);
            let (h, w, _) = image.dim();
            Tensor::from_slice(&values).reshape([1, channels as i64, h as i64, w as i64])
        };
        full.push(tensor(&f));
        if let Some(l) = &l {
            light.push(tensor(l));
        }
    }
    let light = (!light.is_empty())
        .then(|| Tensor::f_cat(&light, 0)?.f_to_device(device))
        .transpose()?;
    Ok((light, Tensor::f_cat(&full, 0)?.f_to_device(device)?))
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
    /// Which weights of the run.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    which: Which,
    /// Where to compute: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Early-exit threshold on the lightweight model's max probability.
    #[arg(long, default_value_t = 0.9, value_parser = crate::numbers::non_negative, allow_negative_numbers = true)]
    threshold: f64,
    /// Arithmetic: fp32, or autocast to bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn predict(args: &PredictArgs) -> Result<()> {
    let run = load_run(&args.checkpoint, args.which, args.device)?;
    let classes = class_names(&run.recipe)?;
    let (light, full) = images(&args.images, &run.recipe, run.model.device())?;
    let _guard = tch::no_grad_guard();
    let device = run.model.device();
    let forward = || -> Result<(Tensor, Vec<&str>, Vec<i64>)> {
        Ok(match &run.model {
            Model::BasisNet(net) => {
                let light =
                    light.context("a BasisNet's transforms make the low-resolution copy")?;
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
                let m = run
                    .model
                    .cost(run.recipe.basisnet()?.resolution)?
                    .full_madds;
                let n = args.images.len();
                (
                    net.forward_t(&full, &[], false)?,
                    vec!["static"; n],
                    vec![m; n],
                )
            }
        })
    };
    let (logits, stages, madds) = autocast(device, args.precision, forward)??;
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
    after_help = "Examples:\n  basisnet specialize --checkpoint runs/fashion --image boot.png --out boot-specialist.safetensors\n  basisnet specialize --checkpoint runs/fashion --coefficients 0.7,0.1,0.1,0.1 --out mix.safetensors\n  basisnet specialize --checkpoint runs/fashion --image boot.png --format onnx --out boot.onnx"
)]
pub struct SpecializeArgs {
    /// A run directory (of a BasisNet).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which weights of the run.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    which: Which,
    /// Where to compute: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
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
    /// Where to write the static network; never overwritten.
    #[arg(long)]
    out: PathBuf,
    /// safetensors (torchvision's names) or onnx (fp32, dynamic batch, at the run's
    /// resolution).
    #[arg(long, value_enum, default_value_t = Format::Safetensors)]
    format: Format,
    /// The ONNX opset (17 to 23), with `--format onnx`.
    #[arg(long, default_value_t = basis_models::onnx::MIN_OPSET)]
    opset: i64,
}

pub fn specialize(args: &SpecializeArgs) -> Result<()> {
    if args.out.exists() {
        bail!(
            "{} exists; choose another --out (nothing is overwritten)",
            args.out.display()
        );
    }
    if let Some(values) = &args.coefficients {
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            bail!(
                "--coefficients takes finite numbers; number {} is {v}",
                i + 1
            );
        }
    }
    let run = load_run(&args.checkpoint, args.which, args.device)?;
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
            let (light, _) = images(std::slice::from_ref(image), &run.recipe, run.model.device())?;
            let light = light.context("a BasisNet's transforms make the low-resolution copy")?;
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
                .map(|c| {
                    Tensor::from_slice(c)
                        .to_kind(Kind::Float)
                        .to_device(run.model.device())
                })
                .collect()
        }
        (None, None) => bail!("give --image or --coefficients"),
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let fixed = net.specialist().specialize(&vs.root(), &coefficients)?;
    match args.format {
        Format::Safetensors => checkpoint::save(&vs, &args.out, &Default::default())?,
        Format::Onnx => {
            let metadata = deployment_metadata(&args.checkpoint, &run)?;
            let form = basis_models::onnx::SpecialistForm::default();
            let bytes = fixed.to_onnx_with(net.config().resolution, args.opset, form, &metadata)?;
            write_new(&args.out, &bytes)?;
        }
    }
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
    /// Which weights of the run.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    which: Which,
    /// Where to compute: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Largest accepted top-1 drop from the specialist (fraction: 0.005 = half a point).
    #[arg(long, conflicts_with = "madds_budget", value_parser = crate::numbers::non_negative, allow_negative_numbers = true)]
    max_drop: Option<f64>,
    /// Or: the best top-1 within this many MAdds per image on average.
    #[arg(long, value_parser = crate::numbers::non_negative, allow_negative_numbers = true)]
    madds_budget: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// The split to choose on: the validation images held out of the training files
    /// (default), or the test images (a choice made there is no longer a test result).
    #[arg(long, value_enum, default_value_t = crate::train::SplitArg::Val)]
    split: crate::train::SplitArg,
}

pub fn calibrate(args: &CalibrateArgs) -> Result<()> {
    let run = load_run(&args.checkpoint, args.which, args.device)?;
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
    let loader = eval_loader(&run.recipe, args.split.into())?;
    let e = evaluate(
        &run.model,
        None,
        &loader,
        &thresholds,
        run.recipe.basisnet()?.resolution,
    )?;
    let chosen = match (args.max_drop, args.madds_budget) {
        (Some(drop), _) => e.operating_point(drop),
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
