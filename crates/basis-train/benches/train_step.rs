//! Training throughput of `basisnet-mv3` (lightweight MobileNetV3-Large at 128 px,
//! specialist MobileNetV3-Large with N = 8 bases at 224 px), batch 32, fp32, CPU by
//! default: one step is the joint loss (forward of both stages), backward, and an SGD
//! update (momentum 0.9, Nesterov, weight decay 4e-5 off batch norm and biases).
//!
//! Side by side in one run with the strongest PyTorch version of the same model and loss in
//! `scripts/basisnet_train_bench.py` (each kind of basis layer in its fastest formulation,
//! both memory layouts; or `torch.compile` for the static network): the Rust side saves its initial weights and
//! its batch as safetensors, Python loads them, and the first step's loss of both sides
//! (fp32) must agree before any time is compared (relative difference < 1e-4 on the CPU,
//! 1e-3 on CUDA, where cuDNN's convolutions run in TF32 by default on both sides). Dropout
//! and basis dropout are off on both sides so the first step is deterministic. Rounds
//! alternate the sides (`BASISNET_BENCH_ROUNDS`, default 3; PyTorch searches its layout and
//! plan in the first and reuses them); each round's rate is the median of its timed steps
//! after one untimed step, and the ratio reported is the median of the per-round ratios,
//! with their range. Both sides use the same number of libtorch threads.
//!
//! `cargo bench -p basis-train --bench train_step` (needs `cargo xtask setup`). The
//! environment chooses the row: `BASISNET_BENCH_STEPS` (timed steps per side and round, default 5),
//! `BASISNET_BENCH_DEVICE` (`cpu`, `cuda`), `BASISNET_BENCH_BATCH` (default 32),
//! `BASISNET_BENCH_PRECISION` (`fp32`, `bf16`: autocast, fp32 weights),
//! `BASISNET_BENCH_MODEL` (`basisnet-mv3`; `mobilenet-v3-large`: the static network
//! against torchvision's eager; `mobilenet-v3-large-compiled`: against it under
//! `torch.compile`) and `BASISNET_SCRIPTS` (the folder of the PyTorch scripts, for
//! the GPU kit).

use basis_amp::Precision;
use basis_models::{checkpoint, presets, Arch, BasisNet, BasisSpec, MobileNet, MobileNetConfig};
use basis_train::data::Batch;
use basis_train::optim::Optimizer;
use basis_train::recipe::{LossSection, OptimSection, OptimizerKind};
use basis_train::{joint_loss, Model, Phase};
use std::path::Path;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

mod support;
use support::{listed, median, python, record_row};

/// The row to measure, from the environment.
struct Row {
    steps: usize,
    device: Device,
    batch: i64,
    precision: Precision,
    model: String,
}

impl Row {
    fn from_env() -> Self {
        let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.into());
        let device = match var("BASISNET_BENCH_DEVICE", "cpu").as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            other => panic!("BASISNET_BENCH_DEVICE is cpu or cuda, found {other}"),
        };
        let precision = var("BASISNET_BENCH_PRECISION", "fp32");
        Row {
            steps: var("BASISNET_BENCH_STEPS", "5")
                .parse()
                .expect("a step count"),
            device,
            batch: var("BASISNET_BENCH_BATCH", "32")
                .parse()
                .expect("a batch size"),
            precision: precision
                .parse()
                .unwrap_or_else(|e| panic!("BASISNET_BENCH_PRECISION: {e}")),
            model: var("BASISNET_BENCH_MODEL", "basisnet-mv3"),
        }
    }
}

fn optim() -> OptimSection {
    OptimSection {
        name: OptimizerKind::Sgd,
        lr: 0.01,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 4e-5,
        ..OptimSection::default()
    }
}

fn loss_section() -> LossSection {
    LossSection {
        light_weight: 1.0,
        label_smoothing: 0.1,
        ..LossSection::default()
    }
}

/// The first step's loss (fp32) and the seconds of each timed step (after an untimed one).
fn ours(model: &Model, vs: &nn::VarStore, batch: &Batch, row: &Row) -> (f64, Vec<f64>) {
    let mut optimizer = Optimizer::new(vs, optim());
    let loss = loss_section();
    let mut step = |precision: Precision| {
        let value = basis_amp::autocast(row.device, precision, || {
            joint_loss(model, batch, &loss, None, Phase::Joint)
        })
        .unwrap()
        .unwrap();
        optimizer.zero_grad();
        value.backward();
        optimizer.step(optim().lr);
        value.double_value(&[])
    };
    let first = step(Precision::Fp32);
    step(row.precision);
    let seconds = (0..row.steps)
        .map(|_| {
            let start = Instant::now();
            step(row.precision);
            start.elapsed().as_secs_f64()
        })
        .collect();
    (first, seconds)
}

/// One PyTorch process: its first-step loss, timed steps and choice (layout and plan),
/// and the seconds `torch.compile` took (for the compiled model).
struct Theirs {
    first: f64,
    seconds: Vec<f64>,
    choice: serde_json::Value,
    compile_seconds: Option<f64>,
}

/// Run the PyTorch side once; `choice` (an earlier round's) skips its search.
fn pytorch(state: &Path, row: &Row, choice: Option<&serde_json::Value>) -> Result<Theirs, String> {
    let mut cmd = python("basisnet_train_bench.py");
    cmd.arg(state)
        .arg(row.steps.to_string())
        .arg(tch::get_num_threads().to_string())
        .arg(if row.device.is_cuda() { "cuda" } else { "cpu" })
        .arg(row.precision.to_string())
        .arg(&row.model);
    if let Some(choice) = choice {
        cmd.arg(choice.to_string());
    }
    let out = cmd.output().map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    Ok(Theirs {
        first: json["first_loss"].as_f64().ok_or("no first_loss")?,
        seconds: json["seconds"]
            .as_array()
            .ok_or("no seconds")?
            .iter()
            .filter_map(|v| v.as_f64())
            .collect(),
        choice: json["choice"].clone(),
        compile_seconds: json["compile_seconds"].as_f64(),
    })
}

/// The peer's choice in words: layout and, for the BasisNet, each kind's formulation.
fn describe(choice: &serde_json::Value) -> String {
    let mut parts = vec![choice["layout"].as_str().unwrap_or("?").to_string()];
    if let Some(plan) = choice["plan"].as_object() {
        parts.extend(
            plan.iter()
                .map(|(kind, f)| format!("{kind} {}", f.as_str().unwrap_or("?"))),
        );
    }
    parts.join(", ")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once in test mode: nothing to check here.
    }
    let row = Row::from_env();
    if row.device.is_cuda() && !tch::Cuda::is_available() {
        println!("Training step: skipped, libtorch sees no CUDA device");
        return;
    }
    let batch_size = row.batch;
    tch::manual_seed(0);
    let mut config = presets::get("basisnet-mv3").unwrap();
    config.basis_dropout = 0.0;
    config.lightweight.dropout = 0.0;
    config.specialist.dropout = 0.0;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let (model, title) = if row.model.starts_with("mobilenet-v3-large") {
        let mut specialist = MobileNetConfig::new(Arch::MobilenetV3Large);
        specialist.dropout = 0.0;
        let net = MobileNet::new(&vs.root(), specialist, BasisSpec::fixed()).unwrap();
        (
            Model::Static(net),
            "MobileNetV3-Large (static) vs torchvision's".to_string(),
        )
    } else {
        let net = BasisNet::new(&vs.root(), config).unwrap();
        (
            Model::BasisNet(Box::new(net)),
            "basisnet-mv3 (N = 8), 224 px specialist + 128 px lightweight".to_string(),
        )
    };
    let images = Tensor::randn([batch_size, 3, 224, 224], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(1000, [batch_size], (Kind::Int64, Device::Cpu));

    // The state Python starts from: the weights before any step, and the batch.
    let dir = std::env::temp_dir().join(format!("basisnet-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.safetensors");
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.push(("batch.images".into(), images.shallow_clone()));
    tensors.push(("batch.labels".into(), labels.shallow_clone()));
    let (o, l) = (optim(), loss_section());
    let metadata = [
        ("num_bases", config.basis.num_bases.to_string()),
        ("classes", config.specialist.num_classes.to_string()),
        (
            "light_resolution",
            config.lightweight_resolution.to_string(),
        ),
        ("temperature", config.temperature.to_string()),
        ("lr", o.lr.to_string()),
        ("momentum", o.momentum.to_string()),
        ("weight_decay", o.weight_decay.to_string()),
        ("label_smoothing", l.label_smoothing.to_string()),
        ("light_weight", l.light_weight.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    checkpoint::write(&state, &tensors, &metadata).unwrap();

    let rounds: usize = std::env::var("BASISNET_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let first_theirs = pytorch(&state, &row, None);
    vs.set_device(row.device);
    let batch = Batch {
        images: images.to_device(row.device),
        light_images: None,
        labels: labels.to_device(row.device),
        targets: None,
    };
    let threads = tch::get_num_threads();
    let (device, steps, precision) = (row.device, row.steps, row.precision);
    let place = if device.is_cuda() {
        "CUDA".to_string()
    } else {
        format!("CPU, {threads} threads")
    };
    println!(
        "\nTraining step of {title}, batch {batch_size}, {precision}, {place}, {rounds} alternating rounds of {steps} timed steps each side\n"
    );
    // Round 1: ours from the saved weights (the parity step), then the rounds alternate.
    let (our_first, seconds) = ours(&model, &vs, &batch, &row);
    let mut our_rounds = vec![seconds];
    let theirs = match first_theirs {
        Ok(t) => t,
        Err(e) => {
            println!("PyTorch side failed: {e}");
            let _ = std::fs::remove_dir_all(&dir);
            std::process::exit(1);
        }
    };
    let gap = (our_first - theirs.first).abs() / theirs.first.abs();
    let tolerance = if device.is_cuda() { 1e-3 } else { 1e-4 };
    println!(
        "first-step loss: ours {our_first:.6}, PyTorch {:.6} (relative difference {gap:.1e}, tolerance {tolerance:.0e})",
        theirs.first
    );
    if gap > tolerance {
        println!("parity check FAILED: the two implementations disagree; no timing reported");
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(1);
    }
    let choice = theirs.choice.clone();
    let compile_seconds = theirs.compile_seconds;
    let mut their_rounds = vec![theirs.seconds];
    for _ in 1..rounds {
        match pytorch(&state, &row, Some(&choice)) {
            Ok(t) => their_rounds.push(t.seconds),
            Err(e) => {
                println!("PyTorch side failed: {e}");
                let _ = std::fs::remove_dir_all(&dir);
                std::process::exit(1);
            }
        }
        our_rounds.push(ours(&model, &vs, &batch, &row).1);
    }
    let _ = std::fs::remove_dir_all(&dir);

    let rate = |s: &Vec<f64>| batch_size as f64 / median(s.clone());
    let ours_rates: Vec<f64> = our_rounds.iter().map(rate).collect();
    let their_rates: Vec<f64> = their_rounds.iter().map(rate).collect();
    let ratios: Vec<f64> = ours_rates
        .iter()
        .zip(&their_rates)
        .map(|(o, t)| o / t)
        .collect();
    let (ours_rate, their_rate) = (median(ours_rates.clone()), median(their_rates.clone()));
    let ratio = median(ratios.clone());
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
    let peer = match row.model.as_str() {
        "mobilenet-v3-large" => "PyTorch eager (torchvision)",
        "mobilenet-v3-large-compiled" => "torch.compile (torchvision)",
        _ => "the fastest PyTorch BasisNet",
    };
    let compiled = compile_seconds
        .map(|s| format!(", first step with compiling {s:.0} s"))
        .unwrap_or_default();
    println!("\n| implementation | images/s per round | median images/s |");
    println!("|---|---|---|");
    println!(
        "| basis-train (Rust, tch) | {} | {ours_rate:.1} |",
        listed(&ours_rates, 1)
    );
    println!(
        "| {peer} ({}{compiled}) | {} | {their_rate:.1} |",
        describe(&choice),
        listed(&their_rates, 1)
    );
    println!(
        "\nratio ours / PyTorch: {ratio:.2}x (median of {rounds} rounds, range {lo:.2}-{hi:.2}x)"
    );
    let model_name = row.model.trim_end_matches("-compiled");
    record_row(
        &format!(
            "training step, {model_name}, batch {batch_size}, {precision}, {} (vs {peer})",
            if device.is_cuda() { "cuda" } else { "cpu" }
        ),
        ours_rate,
        their_rate,
        &ratios,
    );
}
