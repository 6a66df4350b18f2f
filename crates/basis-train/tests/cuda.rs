//! Training checks on a CUDA GPU. Each runs when libtorch sees one; on a machine without
//! (CI) the binary prints which it skipped and why, and counts none of them as passed.
//!
//! The model is `basisnet-fashion` with dropout off, on a fixed random batch of 32
//! 28 x 28 images, trained with SGD (momentum 0.9, Nesterov) from the same initial weights
//! on both devices.

use basis_amp::{LossScaler, Precision};
use basis_dist::{Backend, GroupOptions, Launch, ProcessGroup};
use basis_models::{checkpoint, presets, BasisNet};
use basis_train::data::Batch;
use basis_train::distributed::DataParallel;
use basis_train::optim::Optimizer;
use basis_train::recipe::{DistributedSection, LossSection, OptimSection, OptimizerKind};
use basis_train::{joint_loss, Model, Phase};
use std::sync::Arc;
use std::time::Duration;
use tch::{nn, Device, Kind, Tensor};

use basis_models::cuda_checks::Case;

const CASES: [Case; 5] = [
    (
        "ten_training_steps_on_cuda_follow_the_cpu",
        steps_follow_the_cpu,
    ),
    (
        "bf16_and_fp16_autocast_steps_on_cuda_stay_finite_and_close",
        autocast_steps,
    ),
    (
        "a_cuda_trained_checkpoint_evaluates_the_same_on_the_cpu",
        trained_checkpoint_on_the_cpu,
    ),
    ("a_one_rank_nccl_run_completes", one_rank_nccl),
    (
        "a_resumed_deterministic_run_is_bit_identical",
        deterministic_resume,
    ),
];

/// Relative gap allowed between CUDA and CPU losses over ten steps: cuDNN's convolutions
/// run in TF32 by default (10-bit mantissa inputs), which the trajectory carries along.
const STEP_TOLERANCE: f64 = 5e-3;

fn optim() -> OptimSection {
    OptimSection {
        name: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: 4e-5,
        ..OptimSection::default()
    }
}

/// A fresh `basisnet-fashion` on `device` with the weights of `init` (the same every call).
fn fashion_model(device: Device, init: &std::path::Path) -> (nn::VarStore, Model) {
    let mut config = presets::get("basisnet-fashion").unwrap();
    config.basis_dropout = 0.0;
    config.lightweight.dropout = 0.0;
    config.specialist.dropout = 0.0;
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = BasisNet::new(&vs.root(), config).unwrap();
    if init.exists() {
        checkpoint::load(&vs, init).unwrap();
    } else {
        let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        checkpoint::write(init, &weights, &Default::default()).unwrap();
    }
    vs.set_device(device);
    (vs, Model::BasisNet(Box::new(net)))
}

fn fixed_batch(device: Device) -> Batch {
    tch::manual_seed(7);
    Batch {
        images: Tensor::rand([32, 1, 28, 28], (Kind::Float, Device::Cpu)).to(device),
        light_images: None,
        labels: Tensor::randint(10, [32], (Kind::Int64, Device::Cpu)).to(device),
        targets: None,
    }
}

fn init_file(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "cuda-train-{tag}-{}.safetensors",
        std::process::id()
    ))
}

/// The losses of `steps` training steps at `precision`.
fn train(device: Device, init: &std::path::Path, precision: Precision, steps: usize) -> Vec<f64> {
    let (vs, model) = fashion_model(device, init);
    let batch = fixed_batch(device);
    let mut optimizer = Optimizer::new(&vs, optim());
    let mut scaler = (precision == Precision::Fp16).then(LossScaler::default);
    let loss = LossSection::default();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let value = basis_amp::autocast(device, precision, || {
            joint_loss(&model, &batch, &loss, None, Phase::Joint)
        })
        .unwrap()
        .unwrap();
        optimizer.zero_grad();
        match &mut scaler {
            Some(s) => {
                s.scale_loss(&value).unwrap().backward();
                if s.unscale(&optimizer.gradients()).unwrap() {
                    optimizer.step(optim().lr);
                }
            }
            None => {
                value.backward();
                optimizer.step(optim().lr);
            }
        }
        losses.push(value.double_value(&[]));
    }
    for t in vs.trainable_variables() {
        assert_eq!(t.kind(), Kind::Float, "a weight left fp32 at {precision}");
    }
    losses
}

fn max_relative_gap(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-12))
        .fold(0.0, f64::max)
}

fn steps_follow_the_cpu(cuda: Device) {
    let init = init_file("steps");
    let cpu = train(Device::Cpu, &init, Precision::Fp32, 10);
    let gpu = train(cuda, &init, Precision::Fp32, 10);
    let gap = max_relative_gap(&gpu, &cpu);
    println!("    losses cpu {cpu:.4?}\n    losses cuda {gpu:.4?}\n    largest relative gap {gap:.1e} (tolerance {STEP_TOLERANCE:.0e})");
    assert!(gap < STEP_TOLERANCE, "{gap}");
    assert!(cpu[9] < cpu[0], "the model learns the batch: {cpu:?}");
    std::fs::remove_file(&init).unwrap();
}

fn autocast_steps(cuda: Device) {
    let init = init_file("amp");
    let fp32 = train(cuda, &init, Precision::Fp32, 10);
    for precision in [Precision::Bf16, Precision::Fp16] {
        let low = train(cuda, &init, precision, 10);
        let gap = max_relative_gap(&low, &fp32);
        println!("    {precision}: largest relative gap to fp32 {gap:.1e} (tolerance 5e-2)");
        assert!(low.iter().all(|l| l.is_finite()), "{precision}: {low:?}");
        assert!(gap < 5e-2, "{precision}: {low:?} vs {fp32:?}");
    }
    std::fs::remove_file(&init).unwrap();
}

fn trained_checkpoint_on_the_cpu(cuda: Device) {
    let init = init_file("ckpt");
    let (vs, model) = fashion_model(cuda, &init);
    let batch = fixed_batch(cuda);
    let mut optimizer = Optimizer::new(&vs, optim());
    for _ in 0..5 {
        let value =
            joint_loss(&model, &batch, &LossSection::default(), None, Phase::Joint).unwrap();
        optimizer.zero_grad();
        value.backward();
        optimizer.step(optim().lr);
    }
    let trained = init_file("trained");
    let weights: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    checkpoint::write(&trained, &weights, &Default::default()).unwrap();
    // Evaluated on both devices from the file: logits within 1e-4, the same predictions.
    let (_cpu_vs, cpu_model) = fashion_model(Device::Cpu, &trained);
    let (_gpu_vs, gpu_model) = fashion_model(cuda, &trained);
    let eval = |m: &Model, d: Device| {
        let b = fixed_batch(d);
        tch::no_grad(|| m.forward_t(&b, false))
            .unwrap()
            .specialist_logits
            .to(Device::Cpu)
    };
    let (a, b) = (eval(&cpu_model, Device::Cpu), eval(&gpu_model, cuda));
    let scale = a.abs().max().double_value(&[]);
    let gap = (&a - &b).abs().max().double_value(&[]) / scale;
    println!("    logits gap {gap:.1e} (tolerance 1e-4)");
    assert!(gap < 1e-4, "{gap}");
    assert!(a.argmax(-1, false).equal(&b.argmax(-1, false)));
    std::fs::remove_file(&init).unwrap();
    std::fs::remove_file(&trained).unwrap();
}

fn one_rank_nccl(cuda: Device) {
    if cuda.is_cuda() && !Backend::nccl_built() {
        panic!("this build has no NCCL backend (libtorch without CUDA at build time)");
    }
    let port = basis_dist::launch::free_port().unwrap();
    let group = ProcessGroup::init(
        &Launch::single(port),
        &GroupOptions {
            backend: Backend::default_for(cuda),
            timeout: Duration::from_secs(60),
            interface: None,
        },
    )
    .unwrap();
    let group = Arc::new(group);
    let init = init_file("nccl");
    let (vs, model) = fashion_model(cuda, &init);
    let parallel = DataParallel::new(group.clone(), &vs, &DistributedSection::default()).unwrap();
    parallel.broadcast_all(&vs).unwrap();
    let batch = fixed_batch(cuda);
    let mut optimizer = Optimizer::new(&vs, optim());
    for _ in 0..3 {
        let value = parallel
            .forward(|| joint_loss(&model, &batch, &LossSection::default(), None, Phase::Joint))
            .unwrap();
        optimizer.zero_grad();
        parallel.before_backward();
        value.backward();
        parallel.average_gradients().unwrap();
        optimizer.step(optim().lr);
    }
    assert_eq!(parallel.sum(&[1.5, 2.0]).unwrap(), vec![1.5, 2.0]);
    parallel.barrier().unwrap();
    std::fs::remove_file(&init).unwrap();
}

/// Six steps straight against three, a checkpoint (weights and optimizer state through
/// files), and three more in a fresh model and optimizer: bit-identical weights with
/// deterministic algorithms on.
fn deterministic_resume(cuda: Device) {
    basis_amp::set_deterministic(true).unwrap();
    let init = init_file("det");
    let run = |model: &Model, optimizer: &mut Optimizer, steps: usize| {
        let batch = fixed_batch(cuda);
        for _ in 0..steps {
            let value =
                joint_loss(model, &batch, &LossSection::default(), None, Phase::Joint).unwrap();
            optimizer.zero_grad();
            value.backward();
            optimizer.step(optim().lr);
        }
    };
    let (straight_vs, straight) = fashion_model(cuda, &init);
    let mut opt = Optimizer::new(&straight_vs, optim());
    run(&straight, &mut opt, 6);

    let (first_vs, first) = fashion_model(cuda, &init);
    let mut opt = Optimizer::new(&first_vs, optim());
    run(&first, &mut opt, 3);
    let (weights, state) = (init_file("det-weights"), init_file("det-optim"));
    let w: Vec<(String, Tensor)> = first_vs.variables().into_iter().collect();
    checkpoint::write(&weights, &w, &Default::default()).unwrap();
    checkpoint::write(&state, &opt.state_tensors(), &Default::default()).unwrap();

    let (resumed_vs, resumed) = fashion_model(cuda, &weights);
    let mut opt = Optimizer::new(&resumed_vs, optim());
    let loaded: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&state)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.to(cuda)))
        .collect();
    opt.load_state(&loaded).unwrap();
    run(&resumed, &mut opt, 3);
    basis_amp::set_deterministic(false).unwrap();
    let straight_vars = straight_vs.variables();
    for (name, t) in resumed_vs.variables() {
        assert!(
            t.equal(&straight_vars[&name]),
            "{name} differs after resuming"
        );
    }
    for f in [init, weights, state] {
        std::fs::remove_file(f).unwrap();
    }
}

fn main() {
    basis_models::cuda_checks::run(&CASES);
}
