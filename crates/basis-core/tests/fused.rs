//! The fused inference convolution (`basis_core::fused`): the same numbers as the layer and
//! its activation run apart, on every geometry a MobileNet has, both memory layouts, fp32
//! and bf16 autocast; and it steps aside where it does not apply.

use basis_amp::{autocast, Precision};
use basis_core::{
    fused, is_channels_last, to_channels_last, Activation, BasisConv2d, Conv2dGeometry,
};
use tch::{nn, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

/// The geometries of a MobileNet (stem, pointwise, depthwise with stride, 5x5) and a
/// grouped, dilated one.
fn geometries() -> Vec<Conv2dGeometry> {
    vec![
        Conv2dGeometry::new(3, 16, 3).stride(2).padding(1),
        Conv2dGeometry::new(16, 24, 1),
        Conv2dGeometry::new(24, 24, 3)
            .stride(2)
            .padding(1)
            .groups(24),
        Conv2dGeometry::new(24, 24, 5).padding(2).groups(24),
        Conv2dGeometry::new(8, 12, 3)
            .padding(2)
            .dilation(2)
            .groups(2),
    ]
}

const ACTIVATIONS: [Activation; 5] = [
    Activation::Identity,
    Activation::Relu,
    Activation::RELU6,
    Activation::Hardswish,
    Activation::Hardsigmoid,
];

fn apart(y: Tensor, act: Activation) -> Tensor {
    match act {
        Activation::Identity => y,
        Activation::Relu => y.relu(),
        Activation::Clamp { lower, upper } => y.clamp(lower, upper),
        Activation::Hardswish => y.hardswish(),
        Activation::Hardsigmoid => y.hardsigmoid(),
    }
}

/// A layer, a batch-norm-like affine map (scales around 1, shifts around 0) and an input
/// whose outputs straddle every activation's kinks.
fn case(
    g: Conv2dGeometry,
    bias: bool,
    seed: i64,
) -> (nn::VarStore, BasisConv2d, Tensor, Tensor, Tensor) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = BasisConv2d::new(&vs.root(), g, 1, bias).unwrap();
    let scale = Tensor::rand([g.out_channels], CPU) * 1.5 + 0.25;
    let shift = Tensor::randn([g.out_channels], CPU) * 0.5;
    let x = Tensor::randn([3, g.in_channels, 13, 13], CPU) * 4.0;
    (vs, conv, scale, shift, x)
}

#[test]
fn equals_the_layer_and_activation_apart_in_fp32() {
    assert!(fused::available(), "PyTorch's CPU build has oneDNN");
    let (mut checked, mut fused_runs) = (0, 0);
    for (i, g) in geometries().into_iter().enumerate() {
        for bias in [false, true] {
            let (_vs, conv, scale, shift, x) = case(g, bias, i as i64);
            for channels_last in [false, true] {
                let x = if channels_last {
                    to_channels_last(&x).unwrap()
                } else {
                    x.shallow_clone()
                };
                for act in ACTIVATIONS {
                    tch::no_grad(|| {
                        let want =
                            apart(conv.forward_static_affine(&x, &scale, &shift).unwrap(), act);
                        let got = conv
                            .forward_fused(&x, None, Some((&scale, &shift)), act)
                            .unwrap();
                        assert_eq!(got.size(), want.size());
                        // The oneDNN primitive itself ran (not the fallback).
                        let folded_w = conv.bank().weight() * scale.view([-1, 1, 1, 1]);
                        let folded_b = match conv.bank().bias() {
                            Some(b) => b * &scale + &shift,
                            None => shift.shallow_clone(),
                        };
                        let direct =
                            fused::try_conv2d(&x, &folded_w, Some(&folded_b), &g, g.groups, act)
                                .unwrap();
                        // Fused where it pays: channels_last inputs, depthwise kernels.
                        let depthwise = g.groups == g.in_channels && g.groups == g.out_channels;
                        match direct {
                            Some(direct) => assert!(direct.allclose(&got, 1e-6, 1e-6, false)),
                            None => assert!(!channels_last && !depthwise, "{g:?} not fused"),
                        }
                        fused_runs += usize::from(channels_last || depthwise);
                        let gap = (&got - &want).abs().max().double_value(&[]);
                        let spread = want.abs().max().double_value(&[]);
                        // (A hard sigmoid saturates at 1.)
                        let floor = if act == Activation::Hardsigmoid {
                            0.9
                        } else {
                            1.0
                        };
                        assert!(spread > floor, "outputs of size, not zeros ({spread})");
                        assert!(
                            gap < 1e-4,
                            "{g:?} {act:?} bias {bias} channels_last {channels_last}: gap {gap}"
                        );
                        // The output keeps the input's layout, so the next layer sees it.
                        if g.out_channels > 1 {
                            assert_eq!(is_channels_last(&got), channels_last, "{g:?}");
                        }
                        // Without the affine map: the layer's own bias (or none).
                        let want = apart(conv.forward_static(&x).unwrap(), act);
                        let got = conv.forward_fused(&x, None, None, act).unwrap();
                        assert!(
                            got.allclose(&want, 1e-4, 1e-4, false),
                            "{g:?} {act:?} no affine"
                        );
                    });
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 5 * 2 * 2 * 5);
    // Every channels_last case, and the two depthwise geometries contiguous.
    assert_eq!(fused_runs, 5 * 2 * 5 + 2 * 2 * 5);
}

/// A squeeze-excite gate's 1x1 layers see one pixel per channel, which is both layouts at
/// once: the fused op runs them (with their ReLU and hard sigmoid) whatever the strides
/// say, frozen (prepacked) or not, and matches the layers apart.
#[test]
fn one_pixel_gates_fuse_in_either_layout() {
    use basis_core::frozen;
    tch::manual_seed(31);
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(40, 72, 1), 1, true).unwrap();
    let pooled = Tensor::randn([4, 40, 1, 1], CPU) * 3.0;
    // The pool of a channels_last activation hands back channels_last strides.
    let cl = pooled.as_strided([4, 40, 1, 1], [40, 1, 40, 40], None);
    assert!(cl.equal(&pooled));
    for act in [Activation::Relu, Activation::Hardsigmoid] {
        for x in [&pooled, &cl] {
            let want = tch::no_grad(|| apart(fc.forward_static(x).unwrap(), act));
            let (w, b) = (fc.bank().weight(), fc.bank().bias().unwrap());
            let g = *fc.geometry();
            let direct = tch::no_grad(|| fused::try_conv2d(x, w, Some(b), &g, 1, act)).unwrap();
            let direct = direct.expect("one pixel per channel runs fused");
            assert!(direct.allclose(&want, 1e-5, 1e-5, false), "{act:?}");
            let _guard = frozen::freeze();
            for call in 0..2 {
                let got = tch::no_grad(|| fc.forward_fused(x, None, None, act)).unwrap();
                assert!(
                    got.allclose(&want, 1e-5, 1e-5, false),
                    "{act:?} frozen call {call}"
                );
            }
        }
        let spread = tch::no_grad(|| apart(fc.forward_static(&pooled).unwrap(), act));
        assert!(
            spread.max().double_value(&[]) > 0.9,
            "{act:?} reaches its upper range"
        );
    }
}

#[test]
fn follows_cpu_autocast_to_bf16() {
    for (i, g) in geometries().into_iter().enumerate() {
        let (_vs, conv, scale, shift, x) = case(g, true, 10 + i as i64);
        for act in ACTIVATIONS {
            let (got, want) = tch::no_grad(|| {
                autocast(Device::Cpu, Precision::Bf16, || {
                    let got = conv
                        .forward_fused(&x, None, Some((&scale, &shift)), act)
                        .unwrap();
                    let want = apart(conv.forward_static_affine(&x, &scale, &shift).unwrap(), act);
                    (got, want)
                })
                .unwrap()
            });
            assert_eq!(got.kind(), Kind::BFloat16, "autocast's dtype");
            assert_eq!(want.kind(), Kind::BFloat16);
            let (got, want) = (got.to_kind(Kind::Float), want.to_kind(Kind::Float));
            let gap = (&got - &want).abs().max().double_value(&[]);
            let spread = want.abs().max().double_value(&[]);
            // Both sides round operands and output to bf16 (8 bits of mantissa).
            assert!(gap <= 0.02 * spread, "{g:?} {act:?}: gap {gap} of {spread}");
        }
    }
}

#[test]
fn gradients_flow_when_they_are_needed() {
    // With gradients on, the fused op (which has no backward) steps aside: the layer and
    // its activation run apart, and gradients reach the weights, equal to the plain path's.
    let g = geometries()[2];
    let (_vs, conv, scale, shift, x) = case(g, true, 3);
    let weight = conv.bank().weight();
    let fused = conv
        .forward_fused(&x, None, Some((&scale, &shift)), Activation::Hardswish)
        .unwrap();
    assert!(fused.requires_grad());
    let grad_fused = Tensor::run_backward(&[fused.sum(Kind::Float)], &[weight], false, false)
        .pop()
        .unwrap();
    let apart = conv
        .forward_static_affine(&x, &scale, &shift)
        .unwrap()
        .hardswish();
    let grad_apart = Tensor::run_backward(&[apart.sum(Kind::Float)], &[weight], false, false)
        .pop()
        .unwrap();
    assert!(grad_fused.abs().max().double_value(&[]) > 0.1);
    assert!(grad_fused.allclose(&grad_apart, 1e-5, 1e-5, false));
}

/// A basis layer's per-sample kernels (grouped convolution over the batch, one shared
/// row): the fused activation equals the reference loop over samples, then the activation.
#[test]
fn basis_layers_fuse_and_match_the_per_sample_reference() {
    use basis_core::Strategy;
    // One channel: the per-sample bias `[B * 1]` is then a stride-0 view of the shift.
    let one_channel = Conv2dGeometry::new(1, 1, 3).padding(1);
    for (i, g) in geometries().into_iter().chain([one_channel]).enumerate() {
        tch::manual_seed(20 + i as i64);
        let vs = nn::VarStore::new(Device::Cpu);
        // Without a bias bank the folded shift is an expanded (stride 0) per-sample bias.
        for (strategy, bias) in [
            (Strategy::GroupedConv, true),
            (Strategy::GroupedConv, false),
            (Strategy::Auto, true),
        ] {
            let conv = BasisConv2d::new(&vs.root(), g, 4, bias)
                .unwrap()
                .with_strategy(strategy);
            let x = Tensor::randn([3, g.in_channels, 11, 11], CPU) * 4.0;
            let scale = Tensor::rand([g.out_channels], CPU) + 0.5;
            let shift = Tensor::randn([g.out_channels], CPU) * 0.5;
            for alpha in [Tensor::rand([3, 4], CPU), Tensor::rand([1, 4], CPU)] {
                for act in ACTIVATIONS {
                    tch::no_grad(|| {
                        let got = conv
                            .forward_fused(&x, Some(&alpha), Some((&scale, &shift)), act)
                            .unwrap();
                        let reference = conv.forward_with(&x, &alpha, Strategy::PerSample).unwrap();
                        let reference =
                            reference * scale.view([1, -1, 1, 1]) + shift.view([1, -1, 1, 1]);
                        let want = apart(reference, act);
                        let gap = (&got - &want).abs().max().double_value(&[]);
                        assert!(
                            gap < 1e-4,
                            "{g:?} {strategy:?} {act:?} rows {}: gap {gap}",
                            alpha.size()[0]
                        );
                    });
                }
            }
        }
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let (_vs, conv, scale, shift, _) = case(geometries()[1], false, 4);
    let wrong = Tensor::zeros([2, 5, 8, 8], CPU);
    let err =
        tch::no_grad(|| conv.forward_fused(&wrong, None, None, Activation::Relu)).unwrap_err();
    assert_eq!(err.to_string(), "input has 5 channels, expected 16");
    let x = Tensor::zeros([2, 16, 8, 8], CPU);
    let short = scale.narrow(0, 0, 3);
    let err =
        tch::no_grad(|| conv.forward_fused(&x, None, Some((&short, &shift)), Activation::Relu))
            .unwrap_err();
    assert!(
        err.to_string().contains("must have shape [24], found [3]"),
        "{err}"
    );
}

/// While inference is frozen a static layer keeps its folded kernel prepacked between
/// calls; a new input shape, layout or dtype, or another batch-norm map packs again, and
/// weights trained between two frozen passes are picked up: the output always equals the
/// layer run apart.
#[test]
fn frozen_weights_follow_every_change() {
    use basis_core::frozen;
    use tch::nn::OptimizerConfig;
    let g = Conv2dGeometry::new(8, 16, 3).padding(1);
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = BasisConv2d::new(&(vs.root() / "conv"), g, 1, true).unwrap();
    let mut scale = Tensor::rand([16], CPU) + 0.5;
    let shift = Tensor::randn([16], CPU);
    let x = to_channels_last(&(Tensor::randn([2, 8, 9, 9], CPU) * 3.0)).unwrap();
    let act = Activation::Hardswish;
    let check = |x: &Tensor, scale: &Tensor, what: &str| -> Tensor {
        let got = tch::no_grad(|| conv.forward_fused(x, None, Some((scale, &shift)), act)).unwrap();
        let want =
            tch::no_grad(|| apart(conv.forward_static_affine(x, scale, &shift).unwrap(), act));
        let gap = (&got.to_kind(Kind::Float) - &want.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        let tol = if got.kind() == Kind::BFloat16 {
            0.05 * want.abs().max().double_value(&[])
        } else {
            1e-4
        };
        assert!(gap <= tol, "{what}: gap {gap}");
        got
    };
    let unfrozen = check(&x, &scale, "not frozen");
    let guard = frozen::freeze();
    let first = check(&x, &scale, "first frozen call (packs)");
    let again = check(&x, &scale, "second frozen call (reuses)");
    assert!(first.equal(&again));
    assert!(first.allclose(&unfrozen, 1e-5, 1e-5, false));
    // Within the frozen pass: new batch-norm values, another batch size, a contiguous
    // input (not fused), bf16 autocast, then fp32 again.
    scale = &scale * 0.5;
    let _ = check(&x, &scale, "after the scale changed");
    let x3 = to_channels_last(&Tensor::randn([3, 8, 9, 9], CPU)).unwrap();
    let _ = check(&x3, &scale, "another batch size");
    let _ = check(&x.contiguous(), &scale, "contiguous input");
    let bf16 = autocast(Device::Cpu, Precision::Bf16, || {
        check(&x, &scale, "bf16 autocast")
    })
    .unwrap();
    assert_eq!(bf16.kind(), Kind::BFloat16);
    let back = check(&x, &scale, "fp32 again");
    assert_eq!(back.kind(), Kind::Float);
    drop(guard);

    // Training between two frozen passes (an optimizer step changes the weights in place),
    // then a frozen pass again: the new weights, not the packed old ones.
    let mut opt = nn::Sgd::default().build(&vs, 0.5).unwrap();
    let loss = conv.forward_static(&x).unwrap().square().mean(Kind::Float);
    opt.backward_step(&loss);
    let _guard = frozen::freeze();
    let stepped = check(&x, &scale, "frozen again after an optimizer step");
    assert!(
        (&stepped - &back).abs().max().double_value(&[]) > 1e-3,
        "the step moved the output"
    );
}
