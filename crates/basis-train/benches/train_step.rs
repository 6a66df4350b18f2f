//! Training throughput of `basisnet-mv3` (lightweight MobileNetV3-Large at 128 px,
//! specialist MobileNetV3-Large with N = 8 bases at 224 px), batch 32, CPU: one step is
//! the joint loss (forward of both stages), backward, and an SGD update (momentum 0.9,
//! Nesterov, weight decay 4e-5 off batch norm and biases).
//!
//! Side by side in one run with the PyTorch eager implementation of the same model and
//! loss in `scripts/basisnet_train_bench.py`: the Rust side saves its initial weights and
//! its batch as safetensors, Python loads them, and the first step's loss of both sides
//! must agree (relative difference < 1e-4) before any time is compared. Dropout and basis
//! dropout are off on both sides so the first step is deterministic. Medians of the timed
//! steps; both sides use the same number of libtorch threads.
//!
//! `cargo bench -p basis-train --bench train_step` (needs `cargo xtask setup`).
//! `BASISNET_BENCH_STEPS` sets the timed steps per side (default 10).

use basis_models::{checkpoint, presets, BasisNet};
use basis_train::data::Batch;
use basis_train::optim::Optimizer;
use basis_train::recipe::{LossSection, OptimSection, OptimizerKind};
use basis_train::{joint_loss, Model, Phase};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

mod support;
use support::{median, record_row};

const BATCH: i64 = 32;

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

/// The first step's loss and the seconds of each timed step.
fn ours(model: &Model, vs: &nn::VarStore, batch: &Batch, steps: usize) -> (f64, Vec<f64>) {
    let mut optimizer = Optimizer::new(vs, optim());
    let loss = loss_section();
    let mut step = || {
        let value = joint_loss(model, batch, &loss, None, Phase::Joint).unwrap();
        optimizer.zero_grad();
        value.backward();
        optimizer.step(optim().lr);
        value.double_value(&[])
    };
    let first = step();
    let seconds = (0..steps)
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64()
        })
        .collect();
    (first, seconds)
}

fn pytorch(state: &Path, steps: usize) -> Result<(f64, Vec<f64>), String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join(".libtorch"));
    let site = std::fs::canonicalize(&libtorch)
        .map_err(|e| format!("{}: {e}", libtorch.display()))?
        .parent()
        .ok_or("libtorch has no parent folder")?
        .to_path_buf();
    let out = Command::new("python3")
        .arg(workspace.join("scripts/basisnet_train_bench.py"))
        .arg(state)
        .arg(steps.to_string())
        .arg(tch::get_num_threads().to_string())
        .env("PYTHONPATH", site)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON: {e}"))?;
    let first = json["first_loss"].as_f64().ok_or("no first_loss")?;
    let seconds = json["seconds"]
        .as_array()
        .ok_or("no seconds")?
        .iter()
        .filter_map(|v| v.as_f64())
        .collect();
    Ok((first, seconds))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test` runs benches once in test mode: nothing to check here.
    }
    let steps: usize = std::env::var("BASISNET_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    tch::manual_seed(0);
    let mut config = presets::get("basisnet-mv3").unwrap();
    config.basis_dropout = 0.0;
    config.lightweight.dropout = 0.0;
    config.specialist.dropout = 0.0;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = Model::BasisNet(Box::new(BasisNet::new(&vs.root(), config).unwrap()));
    let batch = Batch {
        images: Tensor::randn([BATCH, 3, 224, 224], (Kind::Float, Device::Cpu)),
        light_images: None,
        labels: Tensor::randint(1000, [BATCH], (Kind::Int64, Device::Cpu)),
        targets: None,
    };

    // The state Python starts from: the weights before any step, and the batch.
    let dir = std::env::temp_dir().join(format!("basisnet-train-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state.safetensors");
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.push(("batch.images".into(), batch.images.shallow_clone()));
    tensors.push(("batch.labels".into(), batch.labels.shallow_clone()));
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

    let theirs = pytorch(&state, steps);
    let (our_first, our_seconds) = ours(&model, &vs, &batch, steps);
    let _ = std::fs::remove_dir_all(&dir);

    let threads = tch::get_num_threads();
    println!(
        "\nTraining step of basisnet-mv3 (N = 8), 224 px specialist + 128 px lightweight, batch {BATCH}, fp32, CPU, {threads} threads, {steps} timed steps each\n"
    );
    let (their_first, their_seconds) = match theirs {
        Ok(t) => t,
        Err(e) => {
            println!(
                "| basis-train | {:.1} images/s |\n\nPyTorch side failed: {e}",
                BATCH as f64 / median(our_seconds)
            );
            std::process::exit(1);
        }
    };
    let gap = (our_first - their_first).abs() / their_first.abs();
    println!(
        "first-step loss: ours {our_first:.6}, PyTorch {their_first:.6} (relative difference {gap:.1e})"
    );
    if gap > 1e-4 {
        println!("parity check FAILED: the two implementations disagree; no timing reported");
        std::process::exit(1);
    }
    let ours_rate = BATCH as f64 / median(our_seconds.clone());
    let their_rate = BATCH as f64 / median(their_seconds.clone());
    println!("\n| implementation | median step (s) | images/s |");
    println!("|---|---|---|");
    println!(
        "| basis-train (Rust, tch) | {:.3} | {ours_rate:.1} |",
        median(our_seconds)
    );
    println!(
        "| PyTorch eager (CondConv-style) | {:.3} | {their_rate:.1} |",
        median(their_seconds)
    );
    println!("\nratio ours / PyTorch: {:.2}x", ours_rate / their_rate);
    record_row(
        "training step, basisnet-mv3, batch 32, fp32 (vs PyTorch eager CondConv-style)",
        ours_rate,
        their_rate,
    );
}
