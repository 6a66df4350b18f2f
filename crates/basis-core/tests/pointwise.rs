//! The per-sample 1x1 convolution in one pass at inference (`Strategy::BatchedMatmul` on
//! fp32 CPU tensors without gradients): equal to the per-sample reference with the batch
//! norm and every activation applied, across the kernel's row and column blocks; the
//! activation fused only where the kernel runs; out of the way under CPU autocast. And the
//! one-pass kernel of layers on one vector per sample (linear layers, 1x1 convolutions on
//! a 1x1 input, `Strategy::MixOutputs`): equal to the reference, out of the way under
//! autocast. On a model cast to bf16 (where the kernels take it): within bf16's rounding
//! of the reference computed in fp32 from the same bf16 values.

use basis_amp::{autocast, Precision};
use basis_core::{fused, timing, Activation, BasisConv2d, BasisLinear, Conv2dGeometry, Strategy};
use std::sync::{Mutex, MutexGuard};
use tch::{Device, Kind, Tensor};

const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);
const BF16: Kind = Kind::BFloat16;

/// The fused switch and the profile are process-wide: the tests of this file run one at a
/// time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Case {
    layer: BasisConv2d,
    x: Tensor,
    alpha: Tensor,
    bank: Tensor,
    bias: Option<Tensor>,
    scale: Tensor,
    shift: Tensor,
}

/// `c` cast to bf16 (the layer from the rounded bank, `Strategy::BatchedMatmul`), and the
/// same rounded values in fp32 for the reference.
fn rounded(c: &Case) -> (Case, Case) {
    let size = c.bank.size();
    let g = Conv2dGeometry::new(size[2], size[1], 1);
    let cast = |t: &Tensor| t.to_kind(BF16);
    let up = |t: &Tensor| t.to_kind(BF16).to_kind(Kind::Float);
    let build = |f: &dyn Fn(&Tensor) -> Tensor| {
        let bank = f(&c.bank);
        let bias = c.bias.as_ref().map(f);
        Case {
            layer: BasisConv2d::from_bank(&bank, bias.as_ref(), g)
                .unwrap()
                .with_strategy(Strategy::BatchedMatmul),
            x: f(&c.x),
            alpha: f(&c.alpha),
            bank,
            bias,
            scale: f(&c.scale),
            shift: f(&c.shift),
        }
    };
    (build(&cast), build(&up))
}

/// A 1x1 layer of `bases` bases from `cin` to `cout` channels on `batch` inputs of `hw`.
fn case(cin: i64, cout: i64, hw: (i64, i64), batch: i64, bases: i64, bias: bool) -> Case {
    tch::manual_seed(cin * 1000 + cout + batch);
    let g = Conv2dGeometry::new(cin, cout, 1);
    let bank = Tensor::randn([bases, cout, cin, 1, 1], CPU) / (cin as f64).sqrt();
    let bias = bias.then(|| Tensor::randn([bases, cout], CPU));
    let layer = BasisConv2d::from_bank(&bank, bias.as_ref(), g)
        .unwrap()
        .with_strategy(Strategy::BatchedMatmul);
    Case {
        layer,
        x: Tensor::randn([batch, cin, hw.0, hw.1], CPU),
        alpha: Tensor::randn([batch, bases], CPU).softmax(-1, Kind::Float),
        bank,
        bias,
        scale: Tensor::rand([cout], CPU) + 0.5,
        shift: Tensor::randn([cout], CPU),
    }
}

/// Sample by sample: `W_b = sum_i alpha[b, i] W_i`, `conv2d`, the affine map, `act`.
fn reference(c: &Case, act: Activation) -> Tensor {
    let (batch, bases) = (c.x.size()[0], c.bank.size()[0]);
    let outputs: Vec<Tensor> = (0..batch)
        .map(|b| {
            let a = c.alpha.get(b);
            let mut w = c.bank.get(0) * a.get(0);
            let mut bb = c.bias.as_ref().map(|t| t.get(0) * a.get(0));
            for i in 1..bases {
                w += c.bank.get(i) * a.get(i);
                bb = bb.map(|acc| acc + c.bias.as_ref().unwrap().get(i) * a.get(i));
            }
            c.x.narrow(0, b, 1)
                .conv2d(&w, bb.as_ref(), [1, 1], [0, 0], [1, 1], 1)
        })
        .collect();
    let y = Tensor::cat(&outputs, 0) * c.scale.view([1, -1, 1, 1]) + c.shift.view([1, -1, 1, 1]);
    act.apply(y).unwrap()
}

fn ours(c: &Case, act: Activation) -> Tensor {
    c.layer
        .forward_fused(&c.x, Some(&c.alpha), Some((&c.scale, &c.shift)), act)
        .unwrap()
}

/// `|ours - reference| <= 1e-4 * (1 + |reference|)` everywhere.
fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    let excess = ((ours - reference).abs() - (reference.abs() + 1.0) * 1e-4)
        .max()
        .double_value(&[]);
    assert!(excess <= 0.0, "{what}: exceeds 1e-4 by {excess:e}");
}

#[test]
fn one_pass_kernel_equals_the_per_sample_reference() {
    let _serial = serial();
    let acts = [
        Activation::Hardswish,
        Activation::Relu,
        Activation::RELU6,
        Activation::Clamp {
            lower: -0.5,
            upper: 0.7,
        },
        Activation::Hardsigmoid,
        Activation::Identity,
    ];
    // (cin, cout, hw, batch, bases, bias): several row blocks with a remainder (150 rows,
    // 960 inputs: 8 rows per block), several column blocks with a remainder (400 and 272
    // pixels), a batch of one, one basis, no bias, pixels split between threads, samples
    // synthesized in groups of four with a remainder.
    let shapes = [
        (200, 150, (20, 20), 3, 8, true),
        (960, 20, (3, 3), 2, 8, true),
        (16, 24, (5, 7), 1, 1, false),
        (40, 130, (7, 7), 5, 4, true),
        (12, 70, (17, 16), 4, 3, false),
        // One row block and one sample: the pixels are split between the threads.
        (16, 40, (24, 24), 1, 4, true),
        // Four row blocks for nine samples, one run on 2 threads: two groups of four
        // samples whose kernel rows are synthesized together, and one sample alone.
        (24, 200, (6, 6), 9, 8, true),
    ];
    for (i, &(cin, cout, hw, batch, bases, bias)) in shapes.iter().enumerate() {
        let c = case(cin, cout, hw, batch, bases, bias);
        for act in acts.iter().skip(i % 2) {
            let y = tch::no_grad(|| ours(&c, *act));
            assert_close(
                &format!("{cin}->{cout} on {hw:?}, batch {batch}, {bases} bases, {act:?}"),
                &y,
                &reference(&c, *act),
            );
        }
    }
}

/// `|ours - reference| <= tol * (1 + |reference|)` everywhere, `ours` read in fp32.
fn assert_within(what: &str, ours: &Tensor, reference: &Tensor, tol: f64) {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    let excess = ((ours.to_kind(Kind::Float) - reference).abs() - (reference.abs() + 1.0) * tol)
        .max()
        .double_value(&[]);
    assert!(excess <= 0.0, "{what}: exceeds {tol:e} by {excess:e}");
}

#[test]
fn bf16_kernel_is_within_rounding_of_the_reference() {
    let _serial = serial();
    // Where libtorch's bf16 batch-reduce GEMM runs oneDNN's micro-kernel (AVX-512).
    let kernels = fused::per_sample_kernels_run(&Tensor::ones([1, 1], (BF16, Device::Cpu)));
    // (cin, cout, hw, batch, bases, bias): an odd input width (pairs padded with a zero
    // channel), several row blocks with a remainder, column blocks with a remainder, a
    // batch of one split by pixels, groups of four samples with a remainder (nine: above
    // 8, the eager bf16 layers), and a batch of 6.
    let shapes = [
        (23, 70, (17, 16), 3, 8, true),
        (960, 20, (3, 3), 2, 8, true),
        (16, 40, (24, 24), 1, 4, false),
        (24, 200, (6, 6), 9, 8, true),
        (40, 24, (5, 5), 6, 4, true),
    ];
    for &(cin, cout, hw, batch, bases, bias) in &shapes {
        let (c, up) = rounded(&case(cin, cout, hw, batch, bases, bias));
        for act in [
            Activation::Hardswish,
            Activation::RELU6,
            Activation::Identity,
        ] {
            let what = format!("bf16 {cin}->{cout} on {hw:?}, batch {batch}, {act:?}");
            let mut outputs = Vec::new();
            let works = profiled(|| {
                let y = tch::no_grad(|| ours(&c, act));
                outputs.push(y.shallow_clone());
                y
            });
            assert_eq!(outputs[0].kind(), BF16, "{what}: kind");
            // One rounding of the kernel rows, the folded batch norm's and the output's.
            assert_within(&what, &outputs[0], &reference(&up, act), 2e-2);
            let kernel = kernels && batch <= 8;
            // The eager layers synthesize the kernels in a pass of their own.
            let apart = works.iter().any(|w| w == "kernel synthesis");
            assert_eq!(
                apart, !kernel,
                "{what}: the kernel ran: {kernel}; {works:?}"
            );
        }
    }
}

/// The names of the profile's entries for one fused call.
fn profiled(f: impl FnOnce() -> Tensor) -> Vec<String> {
    timing::enable(true);
    let _ = timing::take();
    let _ = f();
    timing::enable(false);
    timing::take().into_iter().map(|e| e.work).collect()
}

#[test]
fn the_activation_is_fused_only_where_the_kernel_runs() {
    let _serial = serial();
    let c = case(24, 40, (9, 9), 4, 4, true);
    let act = Activation::Hardswish;
    let has_activation = |works: &[String]| works.iter().any(|w| w == "activation");

    let one_pass = profiled(|| tch::no_grad(|| ours(&c, act)));
    assert!(!has_activation(&one_pass), "one pass: {one_pass:?}");

    fused::set_enabled(false);
    let apart = profiled(|| tch::no_grad(|| ours(&c, act)));
    fused::set_enabled(true);
    assert!(has_activation(&apart), "fused kernels off: {apart:?}");

    // Coefficients that need a gradient: the autograd path, whose result is the same.
    let alpha = c.alpha.copy().set_requires_grad(true);
    let mut graph = Vec::new();
    let works = profiled(|| {
        let y = c
            .layer
            .forward_fused(&c.x, Some(&alpha), Some((&c.scale, &c.shift)), act)
            .unwrap();
        graph.push(y.detach());
        y
    });
    assert!(has_activation(&works), "gradient needed: {works:?}");
    assert_close("autograd path", &graph[0], &reference(&c, act));
}

/// `run` under CPU bf16 autocast with the fused kernels on and off: the results must be
/// the same, the eager layers' (which autocast runs in bf16).
fn assert_autocast_runs_the_eager_layers(run: impl Fn() -> Tensor) {
    let under = |on: bool| {
        fused::set_enabled(on);
        let y = autocast(Device::Cpu, Precision::Bf16, || tch::no_grad(&run)).unwrap();
        fused::set_enabled(true);
        y
    };
    let (with_kernel_on, eager) = (under(true), under(false));
    assert_eq!(with_kernel_on.kind(), eager.kind());
    let diff = (&with_kernel_on - &eager).abs().max().double_value(&[]);
    assert!(
        diff == 0.0,
        "autocast: differs from the eager layers by {diff}"
    );
}

#[test]
fn cpu_autocast_runs_the_eager_layers() {
    let _serial = serial();
    let c = case(32, 48, (6, 6), 3, 4, true);
    assert_autocast_runs_the_eager_layers(|| ours(&c, Activation::Relu));
}

/// Sample by sample: `y_b = (sum_i alpha[b, i] W_i) x_b + sum_i alpha[b, i] bias_i`.
fn reference_linear(x: &Tensor, alpha: &Tensor, bank: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let rows: Vec<Tensor> = (0..x.size()[0])
        .map(|b| {
            let a = alpha.get(b).view([-1, 1, 1]);
            let w = (bank * &a).sum_dim_intlist(0, false, Kind::Float);
            let y = x.get(b).unsqueeze(0).linear(&w, None::<Tensor>);
            match bias {
                Some(bb) => y + (bb * a.view([-1, 1])).sum_dim_intlist(0, false, Kind::Float),
                None => y,
            }
        })
        .collect();
    Tensor::cat(&rows, 0)
}

#[test]
fn dense_kernel_equals_the_per_sample_reference() {
    let _serial = serial();
    // (in, out, batch, bases, bias): batch-reduce GEMMs (batches above four) over several
    // blocks of 128 outputs with a remainder, and one basis; the streamed bank (batches of
    // one to four), with inputs that are and are not a multiple of 16 and shorter than 16.
    for &(inp, out, batch, bases, bias) in &[
        (960, 300, 5, 8, true),
        (64, 10, 7, 1, true),
        (24, 72, 2, 4, false),
        (40, 130, 1, 3, true),
        (100, 70, 4, 8, true),
        (13, 33, 3, 2, false),
        (960, 1280, 1, 8, true),
    ] {
        tch::manual_seed(inp + out);
        let bank = Tensor::randn([bases, out, inp], CPU) / (inp as f64).sqrt();
        let bias_bank = bias.then(|| Tensor::randn([bases, out], CPU));
        let x = Tensor::randn([batch, inp], CPU);
        let alpha = Tensor::randn([batch, bases], CPU).softmax(-1, Kind::Float);
        let expected = reference_linear(&x, &alpha, &bank, bias_bank.as_ref());
        let what = format!("{inp}->{out}, batch {batch}, {bases} bases");

        let linear = BasisLinear::from_bank(&bank, bias_bank.as_ref()).unwrap();
        let y = tch::no_grad(|| linear.forward_with(&x, &alpha, Strategy::MixOutputs)).unwrap();
        assert_close(&format!("linear {what}"), &y, &expected);

        // The same layer as a 1x1 convolution on a 1x1 input (squeeze-excite's).
        let g = Conv2dGeometry::new(inp, out, 1);
        let conv =
            BasisConv2d::from_bank(&bank.view([bases, out, inp, 1, 1]), bias_bank.as_ref(), g)
                .unwrap()
                .with_strategy(Strategy::MixOutputs);
        let y = tch::no_grad(|| conv.forward(&x.view([batch, inp, 1, 1]), &alpha)).unwrap();
        assert_close(
            &format!("1x1 conv {what}"),
            &y.view([batch, out]),
            &expected,
        );
    }
}

#[test]
fn bf16_dense_kernel_is_within_rounding_of_the_reference() {
    let _serial = serial();
    // Batches of one to four stream the bf16 bank; a batch of five runs the eager layers.
    for &(inp, out, batch, bases) in &[
        (960, 130, 1, 8),
        (40, 33, 3, 3),
        (13, 20, 4, 2),
        (24, 72, 5, 4),
    ] {
        tch::manual_seed(inp + out);
        let round = |t: Tensor| t.to_kind(BF16);
        let bank = round(Tensor::randn([bases, out, inp], CPU) / (inp as f64).sqrt());
        let bias_bank = round(Tensor::randn([bases, out], CPU));
        let x = round(Tensor::randn([batch, inp], CPU));
        let alpha = round(Tensor::randn([batch, bases], CPU).softmax(-1, Kind::Float));
        let up = |t: &Tensor| t.to_kind(Kind::Float);
        let expected = reference_linear(&up(&x), &up(&alpha), &up(&bank), Some(&up(&bias_bank)));
        let linear = BasisLinear::from_bank(&bank, Some(&bias_bank)).unwrap();
        let y = tch::no_grad(|| linear.forward_with(&x, &alpha, Strategy::MixOutputs)).unwrap();
        assert_eq!(y.kind(), BF16);
        assert_within(
            &format!("bf16 linear {inp}->{out}, batch {batch}"),
            &y,
            &expected,
            1e-2,
        );
        // A static layer (one basis) on the same vectors takes the streamed kernel too.
        let weight = bank.get(0);
        let bias = bias_bank.get(0);
        let single =
            BasisLinear::from_bank(&weight.unsqueeze(0), Some(&bias.unsqueeze(0))).unwrap();
        let y = tch::no_grad(|| single.forward_static(&x)).unwrap();
        let expected = up(&x).linear(&up(&weight), Some(&up(&bias)));
        assert_within(
            &format!("bf16 static linear {inp}->{out}, batch {batch}"),
            &y,
            &expected,
            1e-2,
        );
    }
}

#[test]
fn cpu_autocast_runs_the_eager_dense_layers() {
    let _serial = serial();
    tch::manual_seed(5);
    let bank = Tensor::randn([4, 40, 30], CPU);
    let linear = BasisLinear::from_bank(&bank, None).unwrap();
    let x = Tensor::randn([6, 30], CPU);
    let alpha = Tensor::rand([6, 4], CPU);
    assert_autocast_runs_the_eager_layers(|| {
        linear
            .forward_with(&x, &alpha, Strategy::MixOutputs)
            .unwrap()
    });
}
