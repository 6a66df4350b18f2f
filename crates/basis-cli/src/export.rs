//! `basisnet export`: a trained run as ONNX graphs with a dynamic batch, for ONNX Runtime
//! and other runtimes.

use crate::deploy::load_run;
use crate::weights::Which;
use anyhow::{bail, Context, Result};
use basis_models::onnx::{SpecialistForm, MIN_OPSET};
use basis_train::{DeviceChoice, LoadedRun, Model, RunDir};
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The formats `export` and `specialize` write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Safetensors with torchvision's names (`specialize` only).
    Safetensors,
    /// ONNX, fp32, dynamic batch.
    Onnx,
}

#[derive(Args)]
#[command(
    after_help = "Writes lightweight.onnx and specialist.onnx for a BasisNet run, static.onnx for a baseline run.\n\nExamples:\n  basisnet export --checkpoint runs/fashion --format onnx --out deploy/fashion\n  basisnet export --checkpoint runs/mv3 --format onnx --opset 18 --out deploy/mv3"
)]
pub struct ExportArgs {
    /// A run directory.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which weights of the run.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    which: Which,
    /// The format: onnx.
    #[arg(long, value_enum)]
    format: Format,
    /// The precision of the graphs: fp32 (the only one written; bf16 and fp16 are refused
    /// in one sentence).
    #[arg(long, default_value = "fp32")]
    precision: basis_amp::Precision,
    /// The ONNX opset (17 to 23).
    #[arg(long, default_value_t = MIN_OPSET)]
    opset: i64,
    /// How the specialist's graph keeps the batch dynamic: scan (a `Scan` over the batch,
    /// each image's kernels synthesized; the faster in ONNX Runtime) or batched (no control
    /// flow, for runtimes without `Scan`; N times the cost of the k x k layers).
    #[arg(long, value_enum, default_value_t = FormArg::Scan)]
    form: FormArg,
    /// Expect a baseline run and write its static network, `static.onnx` (a baseline run
    /// writes it without the flag too).
    #[arg(long = "static")]
    static_network: bool,
    /// A folder for the graphs (created; files already there are never overwritten).
    #[arg(long)]
    out: PathBuf,
}

/// `--form`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormArg {
    /// A `Scan` over the batch.
    Scan,
    /// Batch-independent operators, no control flow.
    Batched,
}

impl From<FormArg> for SpecialistForm {
    fn from(form: FormArg) -> Self {
        match form {
            FormArg::Scan => SpecialistForm::Scan,
            FormArg::Batched => SpecialistForm::Batched,
        }
    }
}

/// What a deployment needs beside the graph: the run's input transform, its classes and
/// the early-exit threshold chosen on the validation split.
pub fn deployment_metadata(dir: &Path, run: &LoadedRun) -> Result<BTreeMap<String, String>> {
    let t = run.recipe.transforms()?;
    let join = |v: &[f32]| v.iter().map(f32::to_string).collect::<Vec<_>>().join(",");
    let mut m = BTreeMap::from([
        ("mean".to_string(), join(&t.mean)),
        ("std".to_string(), join(&t.std)),
        ("crop_pct".to_string(), t.crop_pct.to_string()),
        (
            "classes".to_string(),
            run.recipe.basisnet()?.specialist.num_classes.to_string(),
        ),
    ]);
    if let Ok(metrics) = RunDir::new(dir).read_metrics() {
        if let Some((chosen, _)) = metrics.early_exit_choice(0.005) {
            m.insert("exit_threshold".into(), chosen.threshold.to_string());
        }
    }
    Ok(m)
}

/// Write `bytes` to `path` atomically, refusing to replace a file.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    if path.exists() {
        bail!(
            "{} exists; choose another --out (nothing is overwritten)",
            path.display()
        );
    }
    basis_models::atomic::write_with(path, |f| std::io::Write::write_all(f, bytes))
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: &ExportArgs) -> Result<()> {
    if args.format != Format::Onnx {
        bail!("basisnet export writes --format onnx; a run's weights are already safetensors (its best.safetensors and last.safetensors)");
    }
    if args.precision != basis_amp::Precision::Fp32 {
        bail!(
            "--precision {}: the exporter writes fp32 graphs only (runtimes convert them: onnxruntime's float16 tools, TensorRT's builder)",
            args.precision
        );
    }
    let run = load_run(&args.checkpoint, args.which, DeviceChoice::Cpu)?;
    let metadata = deployment_metadata(&args.checkpoint, &run)?;
    let files: Vec<(&str, Vec<u8>)> = match &run.model {
        Model::BasisNet(_) if args.static_network => bail!(
            "{} holds a BasisNet, and --static exports a baseline run's network; drop --static for lightweight.onnx and specialist.onnx, or bake fixed coefficients with `basisnet specialize --format onnx`",
            args.checkpoint.display()
        ),
        Model::BasisNet(net) => {
            let graphs = net.to_onnx(args.opset, args.form.into(), &metadata)?;
            vec![
                ("lightweight.onnx", graphs.lightweight),
                ("specialist.onnx", graphs.specialist),
            ]
        }
        Model::Static(net) => {
            let resolution = run.recipe.basisnet()?.resolution;
            vec![(
                "static.onnx",
                net.to_onnx_with(resolution, args.opset, SpecialistForm::default(), &metadata)?,
            )]
        }
    };
    if let Some((name, _)) = files.iter().find(|(name, _)| args.out.join(name).exists()) {
        bail!(
            "{} exists; choose another --out (nothing is overwritten)",
            args.out.join(name).display()
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, bytes) in &files {
        write_new(&args.out.join(name), bytes)?;
        println!(
            "wrote {} ({:.1} MB)",
            args.out.join(name).display(),
            bytes.len() as f64 / 1e6
        );
    }
    Ok(())
}
