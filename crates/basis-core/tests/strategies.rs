//! Every strategy equals a per-sample reference loop (one plain convolution per sample,
//! its kernel summed basis by basis) within 1e-4 in fp32: the output, and the gradients
//! of the bases, the biases, the coefficients and the input; and with an affine map folded
//! in (`forward_affine`, an inference batch norm), the reference's output mapped.

use basis_core::{
    is_channels_last, to_channels_last, BasisConv2d, BasisLinear, Conv2dGeometry, Strategy,
};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-4;

/// The reference: sample by sample, `W_b = sum_i alpha[b, i] W_i`, then `conv2d`.
fn reference_conv(
    x: &Tensor,
    alpha: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
) -> Tensor {
    let (batch, n) = (x.size()[0], bank.size()[0]);
    let rows = alpha.size()[0];
    let outputs: Vec<Tensor> = (0..batch)
        .map(|b| {
            let row = if rows == 1 { 0 } else { b };
            let mut w = bank.get(0) * alpha.get(row).get(0);
            let mut bb = bias.map(|t| t.get(0) * alpha.get(row).get(0));
            for i in 1..n {
                w += bank.get(i) * alpha.get(row).get(i);
                bb = bb.map(|acc| acc + bias.unwrap().get(i) * alpha.get(row).get(i));
            }
            x.narrow(0, b, 1)
                .conv2d(&w, bb.as_ref(), g.stride, g.padding, g.dilation, g.groups)
        })
        .collect();
    Tensor::cat(&outputs, 0)
}

/// Largest absolute difference, scaled down for large values (allclose with atol = rtol).
fn close(what: &str, ours: &Tensor, reference: &Tensor) -> Result<(), TestCaseError> {
    prop_assert_eq!(ours.size(), reference.size(), "{} shape", what);
    let diff = (ours - reference).abs();
    let bound = reference.abs() * TOL + TOL;
    let worst = (diff - bound).max().double_value(&[]);
    prop_assert!(
        worst <= 0.0,
        "{what}: exceeds 1e-4 by {worst:e} (max |ref| {})",
        reference.abs().max().double_value(&[])
    );
    Ok(())
}

#[derive(Debug)]
struct Case {
    geometry: Conv2dGeometry,
    batch: i64,
    bases: i64,
    hw: (i64, i64),
    bias: bool,
    channels_last: bool,
    seed: i64,
}

fn geometry() -> impl proptest::strategy::Strategy<Value = (Conv2dGeometry, (i64, i64))> {
    (
        prop_oneof![Just(1i64), Just(3), Just(5)],
        prop_oneof![Just("dense"), Just("depthwise"), Just("grouped")],
        1i64..=4,
        1i64..=4,
        prop_oneof![Just(1i64), Just(2)],
        0i64..=2,
        1i64..=2,
        1i64..=9,
        1i64..=9,
    )
        .prop_map(|(k, kind, a, c, stride, pad, dil, h, w)| {
            let (cin, cout, groups) = match kind {
                "dense" => (a, c, 1),
                "depthwise" => (a * 2, a * 2, a * 2),
                _ => (2 * a, 2 * c, 2),
            };
            let g = Conv2dGeometry::new(cin, cout, k)
                .stride(stride)
                .padding(pad.min(k / 2))
                .dilation(if k == 1 { 1 } else { dil })
                .groups(groups);
            // Large enough for the dilated kernel.
            let span = g.dilation[0] * (k - 1) + 1;
            (g, (h.max(span), w.max(span)))
        })
}

fn cases() -> impl proptest::strategy::Strategy<Value = Case> {
    (
        geometry(),
        1i64..=8,
        1i64..=8,
        any::<bool>(),
        any::<bool>(),
        any::<i64>(),
    )
        .prop_map(
            |((geometry, hw), batch, bases, bias, channels_last, seed)| Case {
                geometry,
                batch,
                bases,
                hw,
                bias,
                channels_last,
                seed,
            },
        )
}

/// libtorch's RNG is global and tests run on parallel threads: seed and draw under a lock,
/// so a case is reproducible from its seed.
fn seeded<R>(seed: i64, draw: impl FnOnce() -> R) -> R {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    draw()
}

/// An input leaf, in `channels_last` layout when asked.
fn input_leaf(shape: &[i64], channels_last: bool) -> Tensor {
    let x = Tensor::randn(shape, (Kind::Float, Device::Cpu));
    let x = if channels_last {
        to_channels_last(&x).unwrap()
    } else {
        x
    };
    x.set_requires_grad(true)
}

fn leaf(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).set_requires_grad(true)
}

/// Forward + backward of `loss = sum(y * probe)`; returns the output and the gradients.
fn run(
    f: impl Fn(&Tensor, &Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    x: &Tensor,
    alpha: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    probe_seed: i64,
) -> (Tensor, Vec<Tensor>) {
    let y = f(x, alpha, bank, bias);
    // Deterministic, uneven weights for the loss (tests run in parallel threads, so the
    // global RNG is not ours between two calls).
    let probe = (Tensor::arange(y.numel() as i64, (Kind::Float, Device::Cpu)) * 0.731
        + probe_seed as f64)
        .sin()
        .reshape(y.size());
    let loss = (&y * probe).sum(Kind::Float);
    let mut inputs = vec![x, alpha, bank];
    inputs.extend(bias);
    let grads = Tensor::run_backward(&[loss], &inputs, false, false);
    (y.detach(), grads)
}

fn check_conv(case: &Case) -> Result<(), TestCaseError> {
    let g = case.geometry;
    let mut bank_shape = vec![case.bases];
    bank_shape.extend(g.weight_shape());
    let (x, bank, bias, per_sample, one_row, scale, shift) = seeded(case.seed, || {
        (
            input_leaf(
                &[case.batch, g.in_channels, case.hw.0, case.hw.1],
                case.channels_last,
            ),
            leaf(&bank_shape),
            case.bias.then(|| leaf(&[case.bases, g.out_channels])),
            leaf(&[case.batch, case.bases]),
            leaf(&[1, case.bases]),
            Tensor::randn([g.out_channels], (Kind::Float, Device::Cpu)),
            Tensor::randn([g.out_channels], (Kind::Float, Device::Cpu)),
        )
    });
    for strategy in Strategy::CONCRETE {
        if !strategy.supports(&g) {
            continue;
        }
        // Shared runs one coefficient row for the whole batch; the others one per sample.
        let alpha = if strategy == Strategy::Shared {
            &one_row
        } else {
            &per_sample
        };
        let layer = BasisConv2d::from_bank(&bank, bias.as_ref(), g).unwrap();
        let (ours, ours_grads) = run(
            |x, a, _, _| layer.forward_with(x, a, strategy).unwrap(),
            &x,
            alpha,
            &bank,
            bias.as_ref(),
            case.seed % 7,
        );
        let (reference, ref_grads) = run(
            |x, a, w, b| reference_conv(x, a, w, b, &g),
            &x,
            alpha,
            &bank,
            bias.as_ref(),
            case.seed % 7,
        );
        close(&format!("{strategy} output"), &ours, &reference)?;
        // The output keeps the input's layout, so the next layer gets what it expects.
        prop_assert_eq!(
            is_channels_last(&ours),
            is_channels_last(&x) && is_channels_last(&reference),
            "{} layout",
            strategy
        );
        for (name, (o, r)) in ["input", "coefficients", "bases", "biases"]
            .iter()
            .zip(ours_grads.iter().zip(&ref_grads))
        {
            close(&format!("{strategy} grad of {name}"), o, r)?;
        }
        let folded = BasisConv2d::from_bank(&bank, bias.as_ref(), g)
            .unwrap()
            .with_strategy(strategy);
        let folded = tch::no_grad(|| folded.forward_affine(&x, alpha, &scale, &shift).unwrap());
        let mapped = &reference * scale.view([1, -1, 1, 1]) + shift.view([1, -1, 1, 1]);
        close(
            &format!("{strategy} with a folded affine map"),
            &folded,
            &mapped,
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn conv_strategies_equal_the_per_sample_reference(case in cases()) {
        check_conv(&case)?;
    }

    #[test]
    fn linear_strategies_equal_the_per_sample_reference(
        batch in 1i64..=8,
        bases in 1i64..=8,
        in_features in 1i64..=12,
        out_features in 1i64..=12,
        bias in any::<bool>(),
        seed in any::<i64>(),
    ) {
        let (x, bank, bias, per_sample, one_row) = seeded(seed, || {
            (
                leaf(&[batch, in_features]),
                leaf(&[bases, out_features, in_features]),
                bias.then(|| leaf(&[bases, out_features])),
                leaf(&[batch, bases]),
                leaf(&[1, bases]),
            )
        });
        let g = Conv2dGeometry::new(in_features, out_features, 1);
        for strategy in Strategy::CONCRETE {
            let alpha = if strategy == Strategy::Shared { &one_row } else { &per_sample };
            let layer = BasisLinear::from_bank(&bank, bias.as_ref()).unwrap();
            let (ours, ours_grads) = run(
                |x, a, _, _| layer.forward_with(x, a, strategy).unwrap(),
                &x, alpha, &bank, bias.as_ref(), seed % 7,
            );
            // The reference linear layer is a 1x1 convolution on a 1x1 image.
            let (reference, ref_grads) = run(
                |x, a, w, b| {
                    let w4 = w.reshape([bases, out_features, in_features, 1, 1]);
                    reference_conv(&x.reshape([batch, in_features, 1, 1]), a, &w4, b, &g)
                        .reshape([batch, out_features])
                },
                &x, alpha, &bank, bias.as_ref(), seed % 7,
            );
            close(&format!("{strategy} output"), &ours, &reference)?;
            for (name, (o, r)) in ["input", "coefficients", "bases", "biases"]
                .iter()
                .zip(ours_grads.iter().zip(&ref_grads))
            {
                close(&format!("{strategy} grad of {name}"), o, r)?;
            }
        }
    }
}

#[test]
fn auto_equals_the_reference_on_every_kind_of_layer() {
    let layers = [
        Conv2dGeometry::new(8, 16, 1),
        Conv2dGeometry::new(8, 16, 1).stride(2),
        Conv2dGeometry::new(8, 8, 5).padding(2).groups(8),
        Conv2dGeometry::new(8, 8, 3).stride(2).padding(1).groups(8),
        Conv2dGeometry::new(3, 16, 3).stride(2).padding(1),
    ];
    for (i, g) in layers.iter().enumerate() {
        for (batch, rows) in [(1, 1), (6, 6), (6, 1)] {
            let case = Case {
                geometry: *g,
                batch,
                bases: 4,
                hw: (10, 10),
                bias: i % 2 == 0,
                channels_last: false,
                seed: i as i64,
            };
            let mut shape = vec![4];
            shape.extend(g.weight_shape());
            let (x, bank, alpha, bias) = seeded(case.seed, || {
                (
                    Tensor::randn([batch, g.in_channels, 10, 10], (Kind::Float, Device::Cpu)),
                    Tensor::randn(&shape, (Kind::Float, Device::Cpu)),
                    Tensor::rand([rows, 4], (Kind::Float, Device::Cpu)),
                    case.bias
                        .then(|| Tensor::randn([4, g.out_channels], (Kind::Float, Device::Cpu))),
                )
            });
            let layer = BasisConv2d::from_bank(&bank, bias.as_ref(), *g).unwrap();
            assert_eq!(layer.bank().bias().is_some(), case.bias);
            let auto = layer.forward(&x, &alpha).unwrap();
            let reference = reference_conv(&x, &alpha, &bank, bias.as_ref(), g);
            assert!(
                auto.allclose(&reference, TOL, TOL, false),
                "layer {i} (bias: {}), batch {batch}, rows {rows}",
                case.bias
            );
        }
    }
}
