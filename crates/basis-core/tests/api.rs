//! The public API: typed errors on bad input, the static (N = 1) layer, coefficient helpers.

use basis_core::{
    softmax_with_temperature, BasisConv2d, BasisDropout, BasisError, BasisLinear, Conv2dGeometry,
    LayerCost, Strategy,
};
use tch::{nn, nn::Module, Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn conv(bases: i64) -> (nn::VarStore, BasisConv2d) {
    let vs = nn::VarStore::new(Device::Cpu);
    let g = Conv2dGeometry::new(4, 6, 3).padding(1);
    let layer = BasisConv2d::new(&(vs.root() / "conv"), g, bases, true).unwrap();
    (vs, layer)
}

#[test]
fn wrong_coefficient_width_names_both_widths() {
    let (_vs, layer) = conv(8);
    let err = layer
        .forward(
            &Tensor::zeros([2, 4, 5, 5], CPU),
            &Tensor::zeros([2, 7], CPU),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        BasisError::CoefficientWidth {
            expected: 8,
            found: 7
        }
    ));
    assert_eq!(
        err.to_string(),
        "coefficients have 7 columns, expected one per basis (8)"
    );
}

#[test]
fn batch_mismatch_is_an_error_but_one_shared_row_is_not() {
    let (_vs, layer) = conv(8);
    let x = Tensor::zeros([3, 4, 5, 5], CPU);
    let err = layer.forward(&x, &Tensor::zeros([2, 8], CPU)).unwrap_err();
    assert!(matches!(
        err,
        BasisError::BatchMismatch {
            batch: 3,
            coefficients: 2
        }
    ));
    assert!(err.to_string().contains("expected one per sample (3)"));
    let y = layer.forward(&x, &Tensor::ones([1, 8], CPU)).unwrap();
    assert_eq!(y.size(), [3, 6, 5, 5]);
}

#[test]
fn wrong_channels_rank_and_size_are_errors() {
    let (_vs, layer) = conv(2);
    let alpha = Tensor::ones([1, 2], CPU);
    let err = layer
        .forward(&Tensor::zeros([1, 3, 5, 5], CPU), &alpha)
        .unwrap_err();
    assert_eq!(err.to_string(), "input has 3 channels, expected 4");
    let err = layer
        .forward(&Tensor::zeros([4, 5, 5], CPU), &alpha)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "input: expected [batch, 4, height, width], found [4, 5, 5]"
    );
    let err = layer
        .forward(&Tensor::zeros([1, 4, 5, 5], CPU), &Tensor::ones([2], CPU))
        .unwrap_err();
    assert!(err
        .to_string()
        .starts_with("coefficients: expected [batch, 2]"));
    let tiny = Conv2dGeometry::new(4, 4, 5);
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = BasisConv2d::new(&vs.root(), tiny, 2, false).unwrap();
    let err = layer
        .forward(&Tensor::zeros([1, 4, 3, 3], CPU), &alpha)
        .unwrap_err();
    assert!(matches!(err, BasisError::Spatial { .. }), "{err}");
    assert!(err.to_string().contains("3x3"));
}

#[test]
fn impossible_layers_are_refused() {
    let vs = nn::VarStore::new(Device::Cpu);
    let err =
        BasisConv2d::new(&vs.root(), Conv2dGeometry::new(6, 4, 3).groups(4), 2, false).unwrap_err();
    assert!(err.to_string().contains("groups (4) must divide"));
    let err = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(4, 4, 3), 0, false).unwrap_err();
    assert!(err
        .to_string()
        .contains("number of bases must be >= 1, found 0"));
    let err = BasisLinear::from_bank(&Tensor::zeros([2, 3], CPU), None).unwrap_err();
    assert!(err.to_string().contains("expected [N, out, in]"));
}

#[test]
fn batched_matmul_refuses_a_spatial_kernel() {
    let (_vs, layer) = conv(2);
    let err = layer
        .forward_with(
            &Tensor::zeros([2, 4, 5, 5], CPU),
            &Tensor::ones([2, 2], CPU),
            Strategy::BatchedMatmul,
        )
        .unwrap_err();
    assert!(err.to_string().contains("needs a 1x1 kernel"), "{err}");
}

#[test]
fn shared_needs_one_row_or_equal_rows_without_gradient() {
    let (_vs, layer) = conv(2);
    let x = Tensor::randn([3, 4, 5, 5], CPU);
    let differing = Tensor::from_slice(&[0.2f32, 0.8, 0.5, 0.5, 0.9, 0.1]).reshape([3, 2]);
    let err = layer
        .forward_with(&x, &differing, Strategy::Shared)
        .unwrap_err();
    assert!(err.to_string().contains("rows differ"), "{err}");
    let equal = Tensor::from_slice(&[0.3f32, 0.7])
        .reshape([1, 2])
        .repeat([3, 1]);
    let shared = tch::no_grad(|| layer.forward_with(&x, &equal, Strategy::Shared)).unwrap();
    let reference = tch::no_grad(|| layer.forward_with(&x, &equal, Strategy::PerSample)).unwrap();
    assert!(shared.allclose(&reference, 1e-5, 1e-5, false));
    let grad = equal.set_requires_grad(true);
    let err = layer.forward_with(&x, &grad, Strategy::Shared).unwrap_err();
    assert!(err.to_string().contains("require gradients"), "{err}");
}

#[test]
fn one_basis_is_pytorchs_conv2d_with_the_same_names_and_shapes() {
    let vs = nn::VarStore::new(Device::Cpu);
    let g = Conv2dGeometry::new(4, 8, 3).stride(2).padding(1).groups(2);
    let layer = BasisConv2d::new(&(vs.root() / "features" / 0), g, 1, true).unwrap();
    let vars = vs.variables();
    assert_eq!(vars["features.0.weight"].size(), [8, 2, 3, 3]);
    assert_eq!(vars["features.0.bias"].size(), [8]);

    // tch's own Conv2d over the same variables.
    let plain_vs = nn::VarStore::new(Device::Cpu);
    let cfg = nn::ConvConfig {
        stride: 2,
        padding: 1,
        groups: 2,
        ..Default::default()
    };
    let mut plain = nn::conv2d(plain_vs.root() / "features" / 0, 4, 8, 3, cfg);
    tch::no_grad(|| {
        plain.ws.copy_(layer.bank().weight());
        plain
            .bs
            .as_mut()
            .unwrap()
            .copy_(layer.bank().bias().unwrap());
    });
    let x = Tensor::randn([5, 4, 9, 9], CPU);
    let expected = plain.forward(&x);
    assert!(layer.forward_static(&x).unwrap().equal(&expected));
    // With the coefficient 1 (a softmax over one basis) every strategy gives the same.
    let ones = Tensor::ones([5, 1], CPU);
    for strategy in Strategy::CONCRETE {
        if strategy.supports(&g) {
            let y = layer.forward_with(&x, &ones, strategy).unwrap();
            assert!(y.allclose(&expected, 1e-5, 1e-5, false), "{strategy}");
        }
    }
    let (_vs8, layer8) = conv(8);
    assert!(layer8
        .forward_static(&Tensor::zeros([1, 4, 5, 5], CPU))
        .is_err());
}

#[test]
fn one_basis_linear_is_pytorchs_linear() {
    let vs = nn::VarStore::new(Device::Cpu);
    let layer = BasisLinear::new(&(vs.root() / "classifier" / 3), 16, 10, 1, true).unwrap();
    let vars = vs.variables();
    assert_eq!(vars["classifier.3.weight"].size(), [10, 16]);
    let x = Tensor::randn([3, 16], CPU);
    let expected = x.linear(layer.bank().weight(), layer.bank().bias());
    assert!(layer.forward_static(&x).unwrap().equal(&expected));
    // At inference up to four vectors take the streamed kernel: equal to rounding.
    for batch in [1, 3, 4, 5] {
        let x = Tensor::randn([batch, 16], CPU);
        let expected = tch::no_grad(|| x.linear(layer.bank().weight(), layer.bank().bias()));
        let y = tch::no_grad(|| layer.forward_static(&x)).unwrap();
        assert!(y.allclose(&expected, 1e-5, 1e-6, false), "batch {batch}");
    }
    let err = layer
        .forward_static(&Tensor::zeros([3, 15], CPU))
        .unwrap_err();
    assert_eq!(err.to_string(), "input has 15 channels, expected 16");
}

#[test]
fn synthesize_bakes_one_vector_into_a_plain_kernel() {
    let (_vs, layer) = conv(4);
    let alpha = Tensor::from_slice(&[0.1f32, 0.2, 0.3, 0.4]);
    let (w, b) = layer.bank().synthesize(&alpha).unwrap();
    assert_eq!(w.size(), [6, 4, 3, 3]);
    let x = Tensor::randn([2, 4, 7, 7], CPU);
    let baked = x.conv2d(&w, b.as_ref(), [1, 1], [1, 1], [1, 1], 1);
    let dynamic = layer.forward(&x, &alpha.reshape([1, 4])).unwrap();
    assert!(baked.allclose(&dynamic, 1e-5, 1e-5, false));
    assert!(layer.bank().synthesize(&Tensor::ones([3], CPU)).is_err());
}

#[test]
fn temperature_must_be_finite_and_positive() {
    let logits = Tensor::randn([2, 4], CPU);
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = softmax_with_temperature(&logits, t).unwrap_err();
        assert!(matches!(err, BasisError::Temperature(_)));
        assert!(err
            .to_string()
            .starts_with("temperature must be a finite number > 0"));
    }
    let a = softmax_with_temperature(&logits, 2.0).unwrap();
    assert!(a.allclose(&(&logits / 2.0).softmax(-1, Kind::Float), 1e-6, 1e-6, false));
    // Lower temperature, more peaked.
    let sharp = softmax_with_temperature(&logits, 0.1).unwrap();
    let max = |t: &Tensor| t.max_dim(-1, false).0.mean(Kind::Float).double_value(&[]);
    assert!(max(&sharp) > max(&a));
}

#[test]
fn basis_dropout_drops_whole_bases_and_renormalizes() {
    assert!(BasisDropout::new(1.0).is_err());
    assert!(BasisDropout::new(-0.1).is_err());
    let dropout = BasisDropout::new(0.5).unwrap();
    let alpha = Tensor::rand([256, 8], CPU).softmax(-1, Kind::Float);
    let out = dropout.forward_t(&alpha, true).unwrap();
    let sums = out.sum_dim_intlist(-1, false, Kind::Float);
    assert!(sums.allclose(&Tensor::ones([256], CPU), 1e-5, 1e-5, false));
    // Kept bases keep their ratios; dropped ones are exactly zero.
    let kept = out.gt(0.0);
    let dropped_fraction = 1.0
        - kept
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
    assert!((0.4..0.6).contains(&dropped_fraction), "{dropped_fraction}");
    let ratio = (&out / &alpha).masked_fill(&kept.logical_not(), 0.0);
    let row_max = ratio.max_dim(-1, true).0;
    let same = (&ratio - &row_max)
        .abs()
        .masked_fill(&kept.logical_not(), 0.0);
    assert!(same.max().double_value(&[]) < 1e-4);
    // Evaluation and p = 0 are the identity.
    assert!(dropout.forward_t(&alpha, false).unwrap().equal(&alpha));
    assert!(BasisDropout::new(0.0)
        .unwrap()
        .forward_t(&alpha, true)
        .unwrap()
        .equal(&alpha));
    // A single basis is never dropped.
    let one = Tensor::ones([64, 1], CPU);
    assert!(dropout.forward_t(&one, true).unwrap().equal(&one));
}

#[test]
fn cost_counts_madds_params_and_synthesis() {
    // MobileNetV3-Large's last 1x1 (160 -> 960 at 7x7) and its 960 -> 1280 head.
    let g = Conv2dGeometry::new(160, 960, 1);
    let c = LayerCost::conv2d(&g, (7, 7), 8, false).unwrap();
    assert_eq!(c.madds, 960 * 7 * 7 * 160);
    assert_eq!(c.params, 8 * 160 * 960);
    assert_eq!(c.synthesis_madds, 8 * 160 * 960);
    let (_vs, layer) = conv(3);
    let c = layer.cost((10, 10)).unwrap();
    assert_eq!(c.params, 3 * (6 * 4 * 9 + 6));
    assert_eq!(c.madds, 6 * 10 * 10 * 4 * 9);
    let total: LayerCost = [c, c].into_iter().sum();
    assert_eq!(total.total_madds(), 2 * (c.madds + c.synthesis_madds));
    assert!(layer.cost((1, 1)).is_ok());
    let dw = Conv2dGeometry::new(8, 8, 5).groups(8);
    assert!(LayerCost::conv2d(&dw, (4, 4), 1, false).is_err());
}

#[test]
fn kernels_on_planes_smaller_than_their_reach_equal_the_full_convolution() {
    // A 5x5 or 3x3 kernel on 1x1 to 3x3 planes runs only the taps that read the plane;
    // output and gradients equal libtorch's convolution with the whole kernel.
    let cpu = (Kind::Float, Device::Cpu);
    for (k, stride, n, groups) in [
        (5, 1, 1, 6),
        (5, 1, 2, 6),
        (5, 2, 2, 6),
        (3, 2, 2, 6),
        (3, 1, 1, 1),
        (5, 1, 3, 3),
    ] {
        let g = Conv2dGeometry::new(6, 6, k)
            .stride(stride)
            .padding(k / 2)
            .groups(groups);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = BasisConv2d::new(&vs.root(), g, 1, true).unwrap();
        let x = Tensor::randn([4, 6, n, n], cpu).set_requires_grad(true);
        let y = conv.forward_static(&x).unwrap();
        let weight = conv.bank().weight();
        let want = x.conv2d(
            weight,
            conv.bank().bias(),
            g.stride,
            g.padding,
            g.dilation,
            groups,
        );
        assert!(
            y.allclose(&want, 1e-5, 1e-6, false),
            "{k}x{k}/{stride} on {n}x{n}"
        );
        let upstream = Tensor::randn_like(&y);
        let grads = |y: &Tensor| {
            let g = Tensor::run_backward(
                &[(y * &upstream).sum(Kind::Float)],
                &[&x, weight],
                false,
                false,
            );
            (g[0].shallow_clone(), g[1].shallow_clone())
        };
        let ((gx, gw), (gx_ref, gw_ref)) = (grads(&y), grads(&want));
        assert!(
            gx.allclose(&gx_ref, 1e-5, 1e-6, false),
            "input gradient, {k}x{k}/{stride} on {n}x{n}"
        );
        assert!(
            gw.allclose(&gw_ref, 1e-5, 1e-6, false),
            "kernel gradient, {k}x{k}/{stride} on {n}x{n}"
        );
    }
}

#[test]
fn basis_layers_on_planes_smaller_than_their_reach_equal_the_full_convolution() {
    // Each sample's synthesized kernel, cropped on 1x1 and 2x2 planes, in every strategy
    // that convolves: outputs and the bank's gradient equal the whole kernels' convolution.
    let cpu = (Kind::Float, Device::Cpu);
    for (k, stride, n) in [(5, 1, 1), (5, 1, 2), (5, 2, 2), (3, 1, 2)] {
        let g = Conv2dGeometry::new(4, 4, k)
            .stride(stride)
            .padding(k / 2)
            .groups(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = BasisConv2d::new(&vs.root(), g, 3, false).unwrap();
        let x = Tensor::randn([2, 4, n, n], cpu);
        let alpha = Tensor::rand([2, 3], cpu);
        let bank = conv.bank().weight_bank();
        let upstream = Tensor::randn(
            [
                2,
                4,
                g.output_hw(n, n).unwrap().0,
                g.output_hw(n, n).unwrap().1,
            ],
            cpu,
        );
        let want: Vec<Tensor> = (0..2)
            .map(|b| {
                let w = (alpha.get(b).view([3, 1, 1, 1, 1]) * &bank).sum_dim_intlist(
                    0,
                    false,
                    Kind::Float,
                );
                x.narrow(0, b, 1)
                    .conv2d(&w, None::<&Tensor>, g.stride, g.padding, g.dilation, 4)
            })
            .collect();
        let want = Tensor::cat(&want, 0);
        let want_grad = Tensor::run_backward(
            &[(&want * &upstream).sum(Kind::Float)],
            &[&bank],
            false,
            false,
        );
        for strategy in [Strategy::PerSample, Strategy::GroupedConv] {
            let y = conv.forward_with(&x, &alpha, strategy).unwrap();
            let what = format!("{k}x{k}/{stride} on {n}x{n}, {strategy}");
            assert!(y.allclose(&want, 1e-5, 1e-6, false), "{what}");
            let grad =
                Tensor::run_backward(&[(&y * &upstream).sum(Kind::Float)], &[&bank], false, false);
            assert!(
                grad[0].allclose(&want_grad[0], 1e-5, 1e-6, false),
                "bank gradient, {what}"
            );
        }
    }
}
