//! `Auto` while autograd records: a per-sample 1x1 layer on at most `N` pixels runs
//! `MixOutputs` (`Strategy::in_training`), with the output and gradients of the
//! per-sample reference loop. One test in its own process: the timing profile that names
//! the strategy run is process-wide.

use basis_core::{timing, BasisConv2d, Conv2dGeometry};
use tch::{Device, Kind, Tensor};

/// Sample by sample, `W_b = sum_i alpha[b, i] W_i`, then `conv2d`.
fn reference(x: &Tensor, alpha: &Tensor, bank: &Tensor, g: &Conv2dGeometry) -> Tensor {
    let outputs: Vec<Tensor> = (0..x.size()[0])
        .map(|b| {
            let w =
                (alpha.get(b).view([-1, 1, 1, 1, 1]) * bank).sum_dim_intlist(0, false, Kind::Float);
            x.narrow(0, b, 1).conv2d(
                &w,
                None::<&Tensor>,
                g.stride,
                g.padding,
                g.dilation,
                g.groups,
            )
        })
        .collect();
    Tensor::cat(&outputs, 0)
}

#[test]
fn small_planes_mix_outputs_in_training_with_the_reference_gradients() {
    let cpu = (Kind::Float, Device::Cpu);
    let g = Conv2dGeometry::new(6, 10, 1);
    tch::manual_seed(17);
    let bank = Tensor::randn([4, 10, 6, 1, 1], cpu).set_requires_grad(true);
    let layer = BasisConv2d::from_bank(&bank, None, g).unwrap();
    // (input plane, strategy named in the profile): 4 and 3 pixels (at most N = 4) mix the
    // bases' outputs, 16 pixels keep the batched product.
    for ((h, w), strategy) in [
        ((2, 2), "mix-outputs"),
        ((1, 3), "mix-outputs"),
        ((4, 4), "batched-matmul"),
    ] {
        let x = Tensor::randn([5, 6, h, w], cpu).set_requires_grad(true);
        let alpha = Tensor::rand([5, 4], cpu).set_requires_grad(true);
        timing::enable(true);
        let _ = timing::take();
        let y = layer.forward(&x, &alpha).unwrap();
        timing::enable(false);
        let names: Vec<String> = timing::take().into_iter().map(|e| e.work).collect();
        assert!(
            names.iter().any(|n| n.contains(strategy)),
            "{h}x{w}: expected {strategy} in {names:?}"
        );
        let want = reference(&x, &alpha, layer.bank().weight_bank().as_ref(), &g);
        assert!(y.allclose(&want, 1e-5, 1e-5, false), "{h}x{w}: output");
        let upstream = Tensor::randn_like(&y);
        let leaves = [&x, &alpha, &bank];
        let got = Tensor::run_backward(&[(&y * &upstream).sum(Kind::Float)], &leaves, false, false);
        let expected = Tensor::run_backward(
            &[(&want * &upstream).sum(Kind::Float)],
            &leaves,
            false,
            false,
        );
        for (name, (a, b)) in ["input", "coefficients", "bank"]
            .iter()
            .zip(got.iter().zip(&expected))
        {
            assert!(
                a.allclose(b, 1e-5, 1e-5, false),
                "{h}x{w}: gradient of the {name}"
            );
        }
    }
}
