//! Squeeze-and-excitation's squeeze (`basis_core::squeeze`): the shim's pool on
//! `channels_last` fp32 and bf16 tensors equals libtorch's `adaptive_avg_pool2d` (within
//! fp32 summation order, and one bf16 rounding); other layouts and gradients take
//! libtorch's pool.

use basis_core::{squeeze, to_channels_last};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn shapes() -> [[i64; 4]; 5] {
    [
        [2, 72, 28, 28],
        [3, 130, 7, 7],
        [1, 5, 3, 4],
        [4, 960, 1, 1],
        [2, 64, 14, 14],
    ]
}

#[test]
fn squeeze_equals_the_average_pool() {
    for kind in [Kind::Float, Kind::BFloat16] {
        for shape in shapes() {
            let x = (Tensor::randn(shape, CPU) * 3.0 + 1.0).to_kind(kind);
            let nhwc = to_channels_last(&x).unwrap();
            let ours = tch::no_grad(|| squeeze::squeeze(&nhwc)).unwrap();
            let theirs = x.to_kind(Kind::Float).adaptive_avg_pool2d([1, 1]);
            assert_eq!(ours.size(), [shape[0], shape[1], 1, 1]);
            assert_eq!(ours.kind(), kind);
            // fp32: summation order; bf16: one rounding of the fp32 mean.
            let tol = if kind == Kind::Float { 1e-5 } else { 4e-3 };
            let gap = (ours.to_kind(Kind::Float) - &theirs)
                .abs()
                .max()
                .double_value(&[]);
            let scale = theirs.abs().max().double_value(&[]).max(1.0);
            assert!(gap <= tol * scale, "{kind:?} {shape:?}: gap {gap:e}");
        }
    }
}

#[test]
fn gradients_and_other_layouts_take_libtorchs_ops() {
    let x = Tensor::randn([2, 6, 5, 5], CPU).set_requires_grad(true);
    let nhwc = to_channels_last(&x).unwrap();
    let pooled = squeeze::squeeze(&nhwc).unwrap();
    assert!(pooled.requires_grad());
    (pooled * Tensor::arange(6, CPU).view([1, 6, 1, 1]))
        .sum(Kind::Float)
        .backward();
    let expected = (Tensor::arange(6, CPU) / 25.0)
        .view([1, 6, 1, 1])
        .expand([2, 6, 5, 5], false);
    assert!(x.grad().allclose(&expected, 1e-6, 1e-6, false));
    // Turned off: libtorch's pool, the same numbers.
    squeeze::set_enabled(false);
    let off = tch::no_grad(|| squeeze::squeeze(&nhwc)).unwrap();
    squeeze::set_enabled(true);
    let on = tch::no_grad(|| squeeze::squeeze(&nhwc)).unwrap();
    assert!(off.allclose(&on, 1e-5, 1e-6, false));
    // NCHW in inference: libtorch's pool and an in-place mul.
    let plain = Tensor::randn([2, 6, 5, 5], CPU);
    let pooled = tch::no_grad(|| squeeze::squeeze(&plain)).unwrap();
    assert!(pooled.allclose(&plain.adaptive_avg_pool2d([1, 1]), 1e-6, 1e-6, false));
}
