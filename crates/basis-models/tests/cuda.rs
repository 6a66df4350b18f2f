//! Checks on a CUDA GPU. Each runs when libtorch sees one; on a machine without (CI) the
//! binary prints which it skipped and why, and counts none of them as passed.

use basis_core::{BasisConv2d, Conv2dGeometry, Strategy};
use basis_models::{checkpoint, presets, BasisNet};
use tch::{nn, Device, Kind, Tensor};

use basis_models::cuda_checks::Case;

const CASES: [Case; 3] = [
    (
        "basis_layers_on_cuda_equal_the_per_sample_reference_fp32_and_bf16",
        layers_match_the_reference,
    ),
    (
        "basisnet_forward_on_cuda_equals_the_cpu",
        forward_matches_cpu,
    ),
    (
        "a_checkpoint_written_on_cuda_loads_on_the_cpu",
        checkpoints_cross_devices,
    ),
];

/// `|a - b|_max / |b|_max`.
fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - &b).abs().max().double_value(&[]) / scale
}

fn layers_match_the_reference(cuda: Device) {
    let opts = (Kind::Float, Device::Cpu);
    for g in [
        Conv2dGeometry::new(16, 16, 3).padding(1).groups(16),
        Conv2dGeometry::new(16, 24, 1),
        Conv2dGeometry::new(8, 16, 3).stride(2).padding(1),
    ] {
        let mut shape = vec![4];
        shape.extend(g.weight_shape());
        let bank = Tensor::randn(&shape, opts);
        let bias = Tensor::randn([4, g.out_channels], opts);
        let x = Tensor::randn([6, g.in_channels, 9, 9], opts);
        let alpha = Tensor::rand([6, 4], opts).softmax(-1, Kind::Float);
        let reference = BasisConv2d::from_bank(&bank, Some(&bias), g)
            .unwrap()
            .forward_with(&x, &alpha, Strategy::PerSample)
            .unwrap();
        let on_gpu = BasisConv2d::from_bank(&bank.to(cuda), Some(&bias.to(cuda)), g).unwrap();
        for strategy in Strategy::CONCRETE {
            if !strategy.supports(&g) || strategy == Strategy::Shared {
                continue;
            }
            let y = on_gpu
                .forward_with(&x.to(cuda), &alpha.to(cuda), strategy)
                .unwrap();
            let gap = relative(&y, &reference);
            assert!(gap < 1e-4, "{strategy} on {g:?}: {gap}");
        }
        // bf16 bank, input and coefficients (8 mantissa bits): within 3e-2 of the fp32
        // reference's largest magnitude.
        let bf16 = |t: &Tensor| t.to(cuda).to_kind(Kind::BFloat16);
        let low = BasisConv2d::from_bank(&bf16(&bank), Some(&bf16(&bias)), g).unwrap();
        for strategy in Strategy::CONCRETE {
            if !strategy.supports(&g) || strategy == Strategy::Shared {
                continue;
            }
            let y = low
                .forward_with(&bf16(&x), &bf16(&alpha), strategy)
                .unwrap();
            let gap = relative(&y, &reference);
            assert!(gap < 3e-2, "bf16 {strategy} on {g:?}: {gap}");
        }
    }
}

fn forward_matches_cpu(cuda: Device) {
    let config = presets::get("basisnet-fashion").unwrap();
    let cpu_vs = nn::VarStore::new(Device::Cpu);
    let cpu = BasisNet::new(&cpu_vs.root(), config).unwrap();
    let gpu_vs = nn::VarStore::new(cuda);
    let gpu = BasisNet::new(&gpu_vs.root(), config).unwrap();
    let weights: Vec<(String, Tensor)> = cpu_vs.variables().into_iter().collect();
    let file =
        std::env::temp_dir().join(format!("cuda-forward-{}.safetensors", std::process::id()));
    checkpoint::write(&file, &weights, &Default::default()).unwrap();
    checkpoint::load(&gpu_vs, &file).unwrap();
    let images = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let light = cpu.lightweight_input(&images).unwrap();
    let a = tch::no_grad(|| cpu.forward_t(&light, &images, false)).unwrap();
    let b = tch::no_grad(|| gpu.forward_t(&light.to(cuda), &images.to(cuda), false)).unwrap();
    assert!(relative(&b.specialist_logits, &a.specialist_logits) < 1e-4);
    assert!(relative(&b.light_logits, &a.light_logits) < 1e-4);
    std::fs::remove_file(&file).unwrap();
}

fn checkpoints_cross_devices(cuda: Device) {
    let config = presets::get("basisnet-fashion").unwrap();
    let gpu_vs = nn::VarStore::new(cuda);
    let _gpu = BasisNet::new(&gpu_vs.root(), config).unwrap();
    let file = std::env::temp_dir().join(format!("cuda-ckpt-{}.safetensors", std::process::id()));
    let weights: Vec<(String, Tensor)> = gpu_vs.variables().into_iter().collect();
    checkpoint::write(&file, &weights, &Default::default()).unwrap();
    let cpu_vs = nn::VarStore::new(Device::Cpu);
    let _cpu = BasisNet::new(&cpu_vs.root(), config).unwrap();
    checkpoint::load(&cpu_vs, &file).unwrap();
    let cpu_vars = cpu_vs.variables();
    for (name, t) in gpu_vs.variables() {
        assert!(t.to_device(Device::Cpu).equal(&cpu_vars[&name]), "{name}");
    }
    std::fs::remove_file(&file).unwrap();
}

fn main() {
    basis_models::cuda_checks::run(&CASES);
}
