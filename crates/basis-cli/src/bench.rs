//! `basisnet benchmark`: inference throughput of one model, batch size, precision and
//! device, as `cargo xtask bench` runs it side by side with `scripts/inference_bench.py`.

use anyhow::{bail, Context, Result};
use basis_models::{
    checkpoint, presets, Arch, BasisNet, BasisSpec, Layout, MobileNet, MobileNetConfig,
};
use basis_train::DeviceChoice;
use clap::{Args, ValueEnum};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchModel {
    /// The static MobileNetV3-Large (torchvision's), 1000 classes.
    MobilenetV3Large,
    /// `basisnet-mv3`, every sample through both stages.
    BasisnetMv3,
    /// `basisnet-mv3` with early exit: the threshold lets `--exit-rate` of the batch stop
    /// after the lightweight stage.
    BasisnetMv3Exit,
}

/// Memory layout of the activations of the static network or the specialist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LayoutArg {
    /// The model's rule (`Layout::Auto`): `channels_last` when one kernel serves the
    /// whole batch, contiguous for per-sample kernels.
    Auto,
    /// Always `channels_last` (NHWC in memory).
    ChannelsLast,
    /// Always contiguous NCHW (per-sample depthwise layers then run as grouped
    /// convolutions over the batch).
    Contiguous,
}

impl From<LayoutArg> for Layout {
    fn from(layout: LayoutArg) -> Self {
        match layout {
            LayoutArg::Auto => Layout::Auto,
            LayoutArg::ChannelsLast => Layout::ChannelsLast,
            LayoutArg::Contiguous => Layout::Contiguous,
        }
    }
}

/// On or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// Arithmetic precision of weights and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// fp32.
    F32,
    /// bfloat16 weights and activations (AMX on recent Xeons).
    Bf16,
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  basisnet benchmark --model mobilenet-v3-large --batch 32\n  basisnet benchmark --model basisnet-mv3 --batch 1 --precision bf16 --json\n  basisnet benchmark --model basisnet-mv3-exit --exit-rate 0.5 --save-state /tmp/state.safetensors"
)]
pub struct BenchArgs {
    /// The model.
    #[arg(long, value_enum, default_value = "basisnet-mv3")]
    model: BenchModel,
    /// Images per batch (224 px, 3 channels).
    #[arg(long, default_value_t = 32)]
    batch: i64,
    /// Precision.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Where to run: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Memory layout of the static network's or the specialist's activations.
    #[arg(long, value_enum, default_value = "auto")]
    layout: LayoutArg,
    /// Fused inference kernels (convolution, folded batch norm and activation in one
    /// oneDNN pass, CPU; static layers' kernels prepacked while the timed loop runs
    /// frozen; basis layers' per-sample 1x1 and dense layers in one pass through oneDNN's
    /// batch-reduce GEMM): `off` runs them apart as eager libtorch does, for A/B runs.
    #[arg(long, value_enum, default_value = "on")]
    fusion: Switch,
    /// Timed batches (after the warm-up).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed batches first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Fraction of the batch that exits early (basisnet-mv3-exit).
    #[arg(long, default_value_t = 0.5)]
    exit_rate: f64,
    /// Seed of the weights and the batch.
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Write the weights, the batch and the exit threshold here (fp32 safetensors), for the
    /// PyTorch side to run the same numbers. Refuses to overwrite an existing file.
    #[arg(long)]
    save_state: Option<PathBuf>,
    /// Write the model as ONNX graphs into this folder (created; `static.onnx`, or
    /// `lightweight.onnx` and `specialist.onnx` in `--onnx-form`), for ONNX Runtime to run
    /// the same weights.
    #[arg(long)]
    save_onnx: Option<PathBuf>,
    /// The specialist's ONNX form with `--save-onnx`.
    #[arg(long, value_enum, default_value_t = crate::export::FormArg::Scan)]
    onnx_form: crate::export::FormArg,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// After timing, run `--iters` more batches with the timing profile on and print where
    /// a batch spends its time: by stage (lightweight, coefficient head, specialist) and
    /// kind of work (each kind of basis layer with its strategy, kernel synthesis, batch
    /// norm, activations, layout conversions, ...). CPU only.
    #[arg(long)]
    profile: bool,
}

/// The process's peak resident memory in MiB (`VmHWM`), on Linux.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A model ready to run a batch.
enum Net {
    Static(MobileNet),
    Basis(Box<BasisNet>, Option<f64>),
}

impl Net {
    fn run(&self, images: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Net::Static(net) => net.forward_t(images, &[], false)?,
            Net::Basis(net, None) => {
                let light = net.lightweight_input(images)?;
                net.forward_t(&light, images, false)?.specialist_logits
            }
            Net::Basis(net, Some(threshold)) => {
                let light = net.lightweight_input(images)?;
                net.early_exit(&light, images, *threshold)?.logits
            }
        })
    }
}

/// The machine's memory in bytes (`MemTotal`), on Linux.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.batch < 1 || args.iters < 1 {
        bail!(
            "--batch and --iters must be >= 1, found {} and {}",
            args.batch,
            args.iters
        );
    }
    if !(0.0..=1.0).contains(&args.exit_rate) {
        bail!("--exit-rate must be in [0, 1], found {}", args.exit_rate);
    }
    // The input batch alone (3 x 224 x 224 fp32) must fit in half the machine's memory.
    let input_bytes = (args.batch as u64).saturating_mul(3 * 224 * 224 * 4);
    if let Some(total) = total_memory() {
        if input_bytes > total / 2 {
            let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
            bail!(
                "--batch {} needs {:.1} GiB for its input images alone; this machine has {:.1} GiB: use a smaller batch",
                args.batch,
                gib(input_bytes),
                gib(total)
            );
        }
    }
    if let Some(path) = &args.save_state {
        if path.exists() {
            bail!("{} already exists; not overwriting it", path.display());
        }
    }
    if let Some(dir) = &args.save_onnx {
        if args.model == BenchModel::BasisnetMv3Exit {
            bail!("--save-onnx writes mobilenet-v3-large or basisnet-mv3; early exit is the caller's loop around the two graphs");
        }
        if dir.join("static.onnx").exists() || dir.join("specialist.onnx").exists() {
            bail!(
                "{} already holds ONNX graphs; not overwriting them",
                dir.display()
            );
        }
    }
    let device = args.device.resolve(None)?;
    if args.profile && device != Device::Cpu {
        bail!(
            "--profile measures CPU wall time per operation; the device is {device:?} (pass --device cpu)"
        );
    }
    basis_core::fused::set_enabled(args.fusion == Switch::On);
    tch::manual_seed(args.seed);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let (net, params, madds) = match args.model {
        BenchModel::MobilenetV3Large => {
            let mut net = MobileNet::new(
                &vs.root(),
                MobileNetConfig::new(Arch::MobilenetV3Large),
                BasisSpec::fixed(),
            )?;
            net.set_layout(args.layout.into());
            let p = net.profile(224)?.total;
            (Net::Static(net), p.params, p.madds as f64)
        }
        BenchModel::BasisnetMv3 | BenchModel::BasisnetMv3Exit => {
            let mut net = BasisNet::new(&vs.root(), presets::get("basisnet-mv3")?)?;
            net.specialist_mut().set_layout(args.layout.into());
            let (params, madds) = (net.profile().params, net.profile().total_madds() as f64);
            (Net::Basis(Box::new(net), None), params, madds)
        }
    };
    let images = Tensor::randn([args.batch, 3, 224, 224], (Kind::Float, Device::Cpu));

    // Early exit: the threshold at the wanted quantile of the lightweight confidences.
    let (net, threshold, madds) = match (net, args.model) {
        (Net::Basis(net, _), BenchModel::BasisnetMv3Exit) => {
            let light_logits = || {
                tch::no_grad(|| -> Result<Tensor> {
                    let input = net.lightweight_input(&images)?;
                    Ok(net.lightweight().forward_t(&input, false)?.logits)
                })
            };
            // Untrained, the lightweight model is equally unsure of every image (max
            // softmax ~1/1000), and a threshold between such close values would not
            // survive bf16 rounding. Scale its last layer so the logits spread with a
            // standard deviation of 4, as a trained model's confidences do.
            let spread = light_logits()?.f_std(true)?.f_double_value(&[])?;
            tch::no_grad(|| -> Result<()> {
                for (name, mut var) in vs.variables() {
                    if name.starts_with("lightweight.classifier.3.") {
                        let _ = var.f_mul_scalar_(4.0 / spread.max(1e-12))?;
                    }
                }
                Ok(())
            })?;
            let light = light_logits()?
                .f_softmax(-1, Kind::Float)?
                .f_amax([-1].as_slice(), false)?;
            let mut confidence: Vec<f32> = Vec::try_from(&light)?;
            confidence.sort_by(f32::total_cmp);
            let exits = (args.exit_rate * args.batch as f64).round() as usize;
            // Samples at or above the threshold exit: the `exits` most confident ones.
            let threshold = if exits == 0 {
                f64::INFINITY
            } else {
                let k = confidence.len() - exits;
                let hi = f64::from(confidence[k]);
                let lo = if k > 0 {
                    f64::from(confidence[k - 1])
                } else {
                    0.0
                };
                (hi + lo) / 2.0
            };
            let exit_rate = exits as f64 / args.batch as f64;
            let p = net.profile();
            let madds = p.average_madds(exit_rate);
            (Net::Basis(net, Some(threshold)), Some(threshold), madds)
        }
        (net, _) => (net, None, madds),
    };

    if let Some(path) = &args.save_state {
        // The fp32 CPU logits, for the other side's parity check.
        let logits = tch::no_grad(|| net.run(&images))?;
        let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        tensors.push(("batch.images".into(), images.shallow_clone()));
        tensors.push(("batch.logits".into(), logits));
        let mut metadata = checkpoint::Metadata::new();
        metadata.insert("model".into(), format!("{:?}", args.model));
        if let Some(t) = threshold {
            metadata.insert("threshold".into(), t.to_string());
        }
        checkpoint::write(path, &tensors, &metadata)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    if let Some(dir) = &args.save_onnx {
        let opset = basis_models::onnx::MIN_OPSET;
        let graphs = match &net {
            Net::Static(net) => vec![("static.onnx", net.to_onnx(224, opset)?)],
            Net::Basis(net, _) => {
                let g = net.to_onnx(opset, args.onnx_form.into(), &Default::default())?;
                vec![
                    ("lightweight.onnx", g.lightweight),
                    ("specialist.onnx", g.specialist),
                ]
            }
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, bytes) in graphs {
            crate::export::write_new(&dir.join(name), &bytes)?;
        }
    }

    if device != Device::Cpu {
        vs.set_device(device);
    }
    let mut images = images.to_device(device);
    if args.precision == Precision::Bf16 {
        vs.bfloat16();
        images = images.to_kind(Kind::BFloat16);
    }
    // The batch arrives in the layout the static network runs, as a data loader would
    // hand it over (and as the PyTorch side of `cargo xtask bench` converts its batch
    // before timing).
    if let Net::Static(net) = &net {
        if net.runs_channels_last(args.batch, &[]) {
            images = basis_core::to_channels_last(&images)?;
        }
    }
    let mut seconds = Vec::with_capacity(args.iters);
    // Inference with weights that do not change: frozen, as an inference server runs
    // (static layers keep their folded, prepacked kernels between batches).
    let _frozen = basis_core::frozen::freeze();
    tch::no_grad(|| -> Result<()> {
        for i in 0..args.warmup + args.iters {
            let start = Instant::now();
            let out = net.run(&images)?;
            sync(device);
            if i >= args.warmup {
                seconds.push(start.elapsed().as_secs_f64());
            }
            if i == 0 && out.f_isnan()?.f_any()?.f_int64_value(&[])? != 0 {
                bail!("the model returned NaN logits");
            }
        }
        Ok(())
    })?;
    // Images that went through the specialist in the timed precision.
    let specialist_images = match &net {
        Net::Basis(basis, Some(t)) => tch::no_grad(|| -> Result<usize> {
            let light = basis.lightweight_input(&images)?;
            let out = basis.early_exit(&light, &images, *t)?;
            Ok(out
                .stages
                .iter()
                .filter(|s| **s == basis_models::Stage::Specialist)
                .count())
        })?,
        Net::Basis(_, None) => args.batch as usize,
        Net::Static(_) => 0,
    };
    let ms = 1000.0 * median(seconds);
    let images_per_s = args.batch as f64 * 1000.0 / ms;
    let profile = if args.profile {
        Some(profile(&net, &images, args.iters)?)
    } else {
        None
    };
    let device_name = match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => format!("{device:?}"),
    };
    if args.json {
        println!(
            "{}",
            json!({
                "model": format!("{:?}", args.model),
                "batch": args.batch,
                "precision": format!("{:?}", args.precision).to_lowercase(),
                "device": device_name,
                "images_per_s": images_per_s,
                "ms_per_batch": ms,
                "peak_rss_mib": peak_rss_mib(),
                "params": params,
                "madds": madds,
                "threshold": threshold,
                "specialist_images": specialist_images,
                "profile": profile.as_ref().map(|(total, rows)| json!({
                    "ms_per_batch": total,
                    "rows": rows.iter().map(|r| json!({
                        "stage": r.0, "work": r.1, "ms_per_batch": r.2, "calls_per_batch": r.3,
                    })).collect::<Vec<_>>(),
                })),
            })
        );
    } else {
        println!(
            "{:?}, batch {}, {:?}, {device_name}: {ms:.2} ms per batch, {images_per_s:.1} images/s, peak memory {:.0} MiB, {params} params, {:.1}M MAdds per image",
            args.model,
            args.batch,
            args.precision,
            peak_rss_mib().unwrap_or(f64::NAN),
            madds / 1e6
        );
        if let Some((total, rows)) = &profile {
            println!("\n{}", profile_table(*total, rows));
        }
    }
    Ok(())
}

/// One profile row: stage, kind of work, ms per batch, calls per batch.
type ProfileRow = (String, String, f64, f64);

/// `iters` batches with the timing profile on: the mean ms of a whole batch, and where it
/// went (the time no span covers is the row `other`: tensor glue between the layers).
fn profile(net: &Net, images: &Tensor, iters: usize) -> Result<(f64, Vec<ProfileRow>)> {
    use basis_core::timing;
    let _ = timing::take();
    timing::enable(true);
    let start = Instant::now();
    let _frozen = basis_core::frozen::freeze();
    let ran = tch::no_grad(|| -> Result<()> {
        for _ in 0..iters {
            let _ = net.run(images)?;
        }
        Ok(())
    });
    let total = start.elapsed().as_secs_f64() * 1000.0 / iters as f64;
    timing::enable(false);
    ran?;
    let per = |x: f64| x / iters as f64;
    let mut rows: Vec<ProfileRow> = timing::take()
        .into_iter()
        .map(|e| {
            let stage = if e.stage.is_empty() {
                "network"
            } else {
                e.stage
            };
            (
                stage.to_string(),
                e.work,
                per(e.seconds * 1000.0),
                per(e.calls as f64),
            )
        })
        .collect();
    let covered: f64 = rows.iter().map(|r| r.2).sum();
    rows.push((
        "-".into(),
        "other (tensor glue between spans)".into(),
        (total - covered).max(0.0),
        0.0,
    ));
    Ok((total, rows))
}

/// The profile as a markdown table, with each row's share of the batch.
fn profile_table(total: f64, rows: &[ProfileRow]) -> String {
    let mut t = format!(
        "Profile ({total:.1} ms per batch with the profile on):\n\n| stage | work | ms per batch | share | calls per batch |\n|---|---|---|---|---|\n"
    );
    for (stage, work, ms, calls) in rows {
        t.push_str(&format!(
            "| {stage} | {work} | {ms:.2} | {:.1}% | {calls:.0} |\n",
            100.0 * ms / total
        ));
    }
    t
}
