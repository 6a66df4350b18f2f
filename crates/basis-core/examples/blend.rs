//! basis-core on its own: a tiny two-layer "specialist" whose kernels are blended per
//! sample from coefficients, checked against the per-sample reference, with its cost.
//!
//! `cargo run -p basis-core --example blend`

use basis_core::{softmax_with_temperature, BasisConv2d, BasisLinear, Conv2dGeometry, Strategy};
use tch::{nn, Device, Kind, Tensor};

fn main() -> Result<(), basis_core::BasisError> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let bases = 4;
    // A 3x3 convolution 3 -> 16 (stride 2) and a linear classifier 16 -> 10, 4 bases each.
    let conv = BasisConv2d::new(
        &(vs.root() / "conv"),
        Conv2dGeometry::new(3, 16, 3).stride(2).padding(1),
        bases,
        true,
    )?;
    let head = BasisLinear::new(&(vs.root() / "head"), 16, 10, bases, true)?;

    // Eight images and, for each, coefficients over the 4 bases (here from random logits;
    // in a BasisNet the lightweight model emits them).
    let images = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let alpha =
        softmax_with_temperature(&Tensor::randn([8, bases], (Kind::Float, Device::Cpu)), 1.0)?;

    // `forward` picks the strategy per layer shape; `PerSample` is the reference loop.
    let features = conv.forward(&images, &alpha)?.relu();
    let pooled = features.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
    let logits = head.forward(&pooled, &alpha)?;
    let reference = conv
        .forward_with(&images, &alpha, Strategy::PerSample)?
        .relu()
        .adaptive_avg_pool2d([1, 1])
        .flatten(1, -1);
    let reference = head.forward_with(&reference, &alpha, Strategy::PerSample)?;
    let gap = (&logits - &reference).abs().max().double_value(&[]);
    println!(
        "logits {:?}, max difference to the per-sample loop {gap:.2e}",
        logits.size()
    );
    assert!(gap < 1e-4);

    let cost = conv.cost((32, 32))?;
    println!(
        "conv: {} params, {} MAdds per image, {} MAdds of synthesis",
        cost.params, cost.madds, cost.synthesis_madds
    );
    Ok(())
}
