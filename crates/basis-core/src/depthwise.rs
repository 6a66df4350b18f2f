//! The depthwise convolution at inference on NCHW planes (`cpp/depthwise.cpp`): each plane
//! (one channel of one sample, with that sample's kernel, or one kernel for the batch) is
//! copied once into a zero-padded buffer in cache and convolved four output rows at a
//! time, with the bias (a folded batch norm's shift) and the activation applied before
//! the rows are stored. libtorch's grouped convolution over `[1, B*C, H, W]` goes through
//! oneDNN's blocked layout, reordering the planes in and out.
//!
//! It runs where it gives the eager result and was measured faster: fp32 or bf16 (a model
//! cast to bf16; read into fp32, accumulated in fp32, rounded once) on the CPU, a
//! contiguous NCHW input at least [`MIN_WIDTH`] columns wide, a depthwise geometry (one
//! input and one output channel per group) with a square 3x3, 5x5 or 7x7 kernel, stride 1
//! or 2 and padding below the kernel size on both axes, dilation 1, no gradient needed, no
//! CPU autocast, fused kernels on ([`crate::fused::set_enabled`]). Elsewhere the layer
//! runs as before.
//!
//! Measured on a 2-core AMD EPYC (AVX-512), PyTorch 2.13, fp32, the 15 depthwise layers
//! of `basisnet-mv3` at batch 32 with hard swish, each against oneDNN's fused grouped
//! convolution (the activation a post-op): 1.9x on the 112- and 56-column stride-1 layers,
//! 1.2x at stride 2 on 112 columns, 1.1-1.4x on the 56-column stride-2 and the 28-column
//! layers, 1.0x on the 28-column stride-2 layer, and 0.3-0.9x on planes of 14 and 7
//! columns (left to oneDNN). In the network, batch 32: 1.06x (3 alternating rounds).
//!
//! In training, `crate::depthwise_grad` runs the layer with this crate's kernel gradient.

use crate::activation::Activation;
use crate::error::Result;
use crate::fused::{check, enabled, grad_enabled, owned, ptr};
use crate::geometry::Conv2dGeometry;
use crate::layout::is_channels_last;
use crate::pointwise::cpu_autocast;
use std::os::raw::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn bc_depthwise_forward(
        input: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        stride: i64,
        padding: i64,
        attr: *const c_char,
        lower: f64,
        upper: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// The narrowest input (columns) the kernel takes: on narrower planes oneDNN's blocked
/// layout was faster.
pub const MIN_WIDTH: i64 = 28;

/// Whether the kernel runs for `input` and a layer of geometry `g` whose kernels are
/// synthesized from `bank` with `coefficients`: see the module's notes. The caller checks
/// it before synthesizing.
pub(crate) fn applies(
    input: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    g: &Conv2dGeometry,
) -> bool {
    let geometry = kernel_fits(g);
    let cpu = input.device() == Device::Cpu && bank.device() == Device::Cpu;
    let dtype = matches!(input.kind(), Kind::Float | Kind::BFloat16) && bank.kind() == input.kind();
    let no_grad = !grad_enabled()
        || ![input, coefficients, bank]
            .into_iter()
            .any(Tensor::requires_grad);
    enabled()
        && !cpu_autocast()
        && geometry
        && no_grad
        && cpu
        && dtype
        && input.dim() == 4
        && input.size()[3] >= MIN_WIDTH
        && input.is_contiguous()
        && !is_channels_last(input)
}

/// A depthwise geometry (one input and one output channel per group) with a square 3x3,
/// 5x5 or 7x7 kernel, stride 1 or 2 and padding below the kernel size on both axes,
/// dilation 1: what both kernels take.
pub(crate) fn kernel_fits(g: &Conv2dGeometry) -> bool {
    let [kh, kw] = g.kernel_size;
    let depthwise = g.groups == g.in_channels && g.out_channels == g.in_channels;
    depthwise
        && kh == kw
        && matches!(kh, 3 | 5 | 7)
        && g.stride[0] == g.stride[1]
        && matches!(g.stride[0], 1 | 2)
        && g.padding[0] == g.padding[1]
        && (0..kh).contains(&g.padding[0])
        && g.dilation == [1, 1]
}

/// `act(conv(x_b, w_b) + bias_b)` for `input` `[B, C, H, W]`, `weight` `[B, C, 1, k, k]`
/// (each sample's kernels) or `[1, C, 1, k, k]`, `bias` `[B or 1, C]`, where [`applies`]
/// holds; `None` when the bias needs a gradient.
pub(crate) fn forward(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
    act: Activation,
) -> Result<Option<Tensor>> {
    if grad_enabled() && bias.is_some_and(Tensor::requires_grad) {
        return Ok(None);
    }
    let [_, k] = g.kernel_size;
    let rows = weight.size()[0];
    let weight = weight
        .f_reshape([rows, g.out_channels, k, k])?
        .f_contiguous()?;
    let bias = bias.map(Tensor::f_contiguous).transpose()?;
    let (attr, lower, upper) = act.onednn();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensors outlive the call and the shim only reads them; it writes `out` (a
    // new tensor it hands over, or null) and returns null or a message it malloc'ed.
    check(unsafe {
        bc_depthwise_forward(
            ptr(input),
            ptr(&weight),
            bias.as_ref().map_or(std::ptr::null_mut(), ptr),
            g.stride[0],
            g.padding[0],
            attr.as_ptr(),
            lower,
            upper,
            &mut out,
        )
    })?;
    Ok(owned(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// libtorch's grouped convolution over `[1, B*C, H, W]`, then the activation.
    pub(crate) fn reference(
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        g: &Conv2dGeometry,
        act: Activation,
    ) -> Tensor {
        let (b, c, h, w) = x.size4().unwrap();
        let k = g.kernel_size[0];
        let weights = weight
            .expand([b, c, 1, k, k], false)
            .reshape([b * c, 1, k, k]);
        let bias = bias.map(|v| v.expand([b, c], false).reshape([-1]));
        let y = x.reshape([1, b * c, h, w]).conv2d(
            &weights,
            bias.as_ref(),
            g.stride,
            g.padding,
            g.dilation,
            b * c,
        );
        let (_, _, oh, ow) = y.size4().unwrap();
        act.apply(y.reshape([b, c, oh, ow])).unwrap()
    }

    pub(crate) fn depthwise(c: i64, k: i64, stride: i64, padding: i64) -> Conv2dGeometry {
        Conv2dGeometry {
            in_channels: c,
            out_channels: c,
            kernel_size: [k, k],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
            groups: c,
        }
    }

    #[test]
    fn planes_equal_the_grouped_convolution() {
        tch::manual_seed(7);
        let cpu = (Kind::Float, Device::Cpu);
        let acts = [
            Activation::Hardswish,
            Activation::Identity,
            Activation::Relu,
            Activation::Clamp {
                lower: -0.5,
                upper: 0.7,
            },
            Activation::Hardsigmoid,
        ];
        // (batch, channels, h, w, k, stride, padding, shared kernels, bias): every kernel
        // size and stride, odd and even padding (stride 2 splits the columns by the parity
        // of column + padding), no padding, widths above and below 32 and not multiples of
        // 16 (the vector remainders), heights not multiples of 4 (the row remainder).
        let cases = [
            (2, 3, 30, 29, 3, 1, 1, false, true),
            (3, 2, 13, 40, 3, 2, 1, false, true),
            (2, 2, 21, 75, 5, 2, 2, false, false),
            (1, 3, 9, 33, 5, 1, 2, true, true),
            (2, 2, 14, 28, 7, 1, 3, false, true),
            (2, 1, 15, 37, 7, 2, 3, true, true),
            (1, 2, 11, 64, 3, 2, 0, false, true),
            (2, 2, 7, 31, 5, 1, 4, false, true),
            (1, 2, 12, 70, 5, 2, 1, false, true),
        ];
        for (i, &(b, c, h, w, k, stride, padding, shared, with_bias)) in cases.iter().enumerate() {
            let g = depthwise(c, k, stride, padding);
            let rows = if shared { 1 } else { b };
            let x = Tensor::randn([b, c, h, w], cpu);
            let weight = Tensor::randn([rows, c, 1, k, k], cpu) / k as f64;
            let bias = with_bias.then(|| Tensor::randn([rows, c], cpu));
            let act = acts[i % acts.len()];
            let what = format!("case {i}: {b}x{c}x{h}x{w}, {k}x{k}, stride {stride}, padding {padding}, shared {shared}, {act:?}");
            let got = tch::no_grad(|| forward(&x, &weight, bias.as_ref(), &g, act))
                .unwrap()
                .expect("no gradient: the kernel runs");
            let want = tch::no_grad(|| reference(&x, &weight, bias.as_ref(), &g, act));
            assert_eq!(got.size(), want.size(), "{what}");
            let gap = (&got - &want).abs().max().double_value(&[]);
            assert!(gap < 1e-4, "{what}: gap {gap}");
        }
    }

    #[test]
    fn bf16_planes_round_the_fp32_result_once() {
        tch::manual_seed(11);
        let cpu = (Kind::Float, Device::Cpu);
        // (batch, channels, h, w, k, stride, padding, shared): both strides, odd padding,
        // vector remainders.
        for &(b, c, h, w, k, stride, padding, shared) in &[
            (2, 3, 17, 45, 3, 1, 1, false),
            (2, 2, 15, 70, 5, 2, 2, false),
            (1, 3, 9, 33, 3, 2, 1, true),
        ] {
            let g = depthwise(c, k, stride, padding);
            let rows = if shared { 1 } else { b };
            let bf = |t: Tensor| t.to_kind(Kind::BFloat16);
            let x = bf(Tensor::randn([b, c, h, w], cpu));
            let weight = bf(Tensor::randn([rows, c, 1, k, k], cpu) / k as f64);
            let bias = bf(Tensor::randn([rows, c], cpu));
            let act = Activation::Hardswish;
            let got = tch::no_grad(|| forward(&x, &weight, Some(&bias), &g, act))
                .unwrap()
                .expect("no gradient: the kernel runs");
            assert_eq!(got.kind(), Kind::BFloat16);
            let f = |t: &Tensor| t.to_kind(Kind::Float);
            let want = tch::no_grad(|| reference(&f(&x), &f(&weight), Some(&f(&bias)), &g, act));
            // One rounding to bf16 (8 significant bits) of the fp32 result.
            let gap = (f(&got) - &want).abs() - want.abs() * (1.0 / 256.0);
            let worst = gap.max().double_value(&[]);
            assert!(
                worst < 1e-4,
                "{b}x{c}x{h}x{w}, {k}x{k}, stride {stride}: {worst}"
            );
        }
    }

    #[test]
    fn bad_operands_are_errors_not_crashes() {
        let cpu = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3, 30, 30], cpu);
        let g = depthwise(3, 3, 1, 1);
        let wrong_rows = Tensor::randn([3, 3, 1, 3, 3], cpu);
        let err = tch::no_grad(|| forward(&x, &wrong_rows, None, &g, Activation::Relu));
        assert!(err.unwrap_err().to_string().contains("shapes do not match"));
        let tiny = Tensor::randn([1, 3, 2, 2], cpu);
        let weight = Tensor::randn([1, 3, 1, 3, 3], cpu);
        let err = tch::no_grad(|| {
            forward(
                &tiny,
                &weight,
                None,
                &depthwise(3, 3, 1, 0),
                Activation::Relu,
            )
        });
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("smaller than its kernel"));
    }

    #[test]
    fn applies_only_where_measured_and_eager_equal() {
        let cpu = (Kind::Float, Device::Cpu);
        let coefficients = Tensor::ones([2, 4], cpu);
        let bank = Tensor::randn([4, 8, 1, 3, 3], cpu);
        let g = depthwise(8, 3, 1, 1);
        let wide = Tensor::randn([2, 8, 30, MIN_WIDTH], cpu);
        let narrow = Tensor::randn([2, 8, 30, MIN_WIDTH - 1], cpu);
        tch::no_grad(|| {
            assert!(applies(&wide, &coefficients, &bank, &g));
            assert!(!applies(&narrow, &coefficients, &bank, &g));
            let cl = crate::layout::to_channels_last(&wide).unwrap();
            assert!(!applies(&cl, &coefficients, &bank, &g));
            assert!(!applies(
                &wide,
                &coefficients,
                &bank,
                &depthwise(8, 3, 3, 1)
            ));
            let grouped = Conv2dGeometry {
                groups: 4,
                ..depthwise(8, 3, 1, 1)
            };
            assert!(!applies(&wide, &coefficients, &bank, &grouped));
        });
        // A gradient needed: the autograd path.
        let trained = bank.set_requires_grad(true);
        assert!(!applies(&wide, &coefficients, &trained, &g));
        assert!(tch::no_grad(|| applies(&wide, &coefficients, &trained, &g)));
    }
}
