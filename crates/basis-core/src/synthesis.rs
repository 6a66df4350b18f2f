//! The strategies' kernels: a bank of `N` kernels, per-sample coefficients, one output.
//!
//! Shapes throughout: input `[B, C, H, W]`, coefficients `[B, N]` (already one row per
//! sample, except for [`shared`]), bank `[N, Cout, Cin/g, kh, kw]`, and each sample's bias
//! `[B, Cout]` (its coefficients times the bias bank, computed once by the caller, plus a
//! folded batch norm's shift).

use crate::activation::Activation;
use crate::error::Result;
use crate::geometry::Conv2dGeometry;
use crate::layout::{is_channels_last, match_layout};
use tch::Tensor;

/// `[R, N] x [N, ...] -> [R, ...]`: each row's weighted sum of the bank.
pub(crate) fn synthesize(coefficients: &Tensor, bank: &Tensor) -> Result<Tensor> {
    crate::timing::span(
        || "kernel synthesis".into(),
        || {
            let mut shape = bank.size();
            let n = shape[0];
            shape[0] = coefficients.size()[0];
            Ok(coefficients
                .f_matmul(&bank.f_reshape([n, -1])?)?
                .f_reshape(shape)?)
        },
    )
}

fn conv(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
    groups: i64,
) -> Result<Tensor> {
    Ok(input.f_conv2d(weight, bias, g.stride, g.padding, g.dilation, groups)?)
}

/// The reference: one plain convolution per sample with that sample's synthesized kernel.
pub(crate) fn per_sample(
    input: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
) -> Result<Tensor> {
    let batch = input.size()[0];
    let mut outputs = Vec::with_capacity(batch as usize);
    for b in 0..batch {
        let alpha = coefficients.f_narrow(0, b, 1)?;
        let weight = synthesize(&alpha, bank)?.f_squeeze_dim(0)?;
        let bias = bias.map(|v| v.f_select(0, b)).transpose()?;
        outputs.push(conv(
            &input.f_narrow(0, b, 1)?,
            &weight,
            bias.as_ref(),
            g,
            g.groups,
        )?);
    }
    match_layout(Tensor::f_cat(&outputs, 0)?, input)
}

/// All `B` kernels at once, then one grouped convolution with `groups = B * g`, the
/// activation fused into it where it can be ([`crate::fused`]).
pub(crate) fn grouped_conv(
    input: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
    act: Activation,
) -> Result<Tensor> {
    if crate::depthwise::applies(input, coefficients, bank, g) {
        let weights = synthesize(coefficients, bank)?;
        if let Some(y) = crate::depthwise::forward(input, &weights, bias, g, act)? {
            return Ok(y);
        }
    }
    if crate::depthwise_grad::trains(input, coefficients, bank, g) {
        let weights = synthesize(coefficients, bank)?;
        let mut y = crate::depthwise_grad::train(input, &weights, g)?;
        if let Some(bias) = bias {
            y = y.f_add(&bias.f_reshape([-1, g.out_channels, 1, 1])?)?;
        }
        return act.apply_timed(y);
    }
    let (b, c, h, w) = input.size4()?;
    let [out, in_per_group, kh, kw] = g.weight_shape();
    let weights = synthesize(coefficients, bank)?.f_reshape([b * out, in_per_group, kh, kw])?;
    let bias = bias.map(|v| v.f_reshape([b * out])).transpose()?;
    let y = crate::fused::conv2d(
        &input.f_reshape([1, b * c, h, w])?,
        &weights,
        bias.as_ref(),
        g,
        b * g.groups,
        act,
    )?;
    let (_, _, oh, ow) = y.size4()?;
    match_layout(y.f_reshape([b, out, oh, ow])?, input)
}

/// 1x1 kernels: all `B` kernels at once, then one `bmm` per group of channels.
pub(crate) fn batched_matmul(
    input: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
) -> Result<Tensor> {
    let (b, c, _, _) = input.size4()?;
    let mut x = input.shallow_clone();
    if g.padding != [0, 0] {
        let [ph, pw] = g.padding;
        x = x.f_constant_pad_nd([pw, pw, ph, ph])?;
    }
    if g.stride != [1, 1] {
        let (_, _, h, w) = x.size4()?;
        x = x
            .f_slice(2, 0, h, g.stride[0])?
            .f_slice(3, 0, w, g.stride[1])?;
    }
    let (_, _, oh, ow) = x.size4()?;
    let groups = g.groups;
    let out = g.out_channels;
    if groups == 1 && is_channels_last(input) {
        // NHWC: [B, H'W', C] x [B, C, Cout] -> [B, H'W', Cout], a channels_last output.
        let weights = synthesize(coefficients, bank)?
            .f_reshape([b, out, c])?
            .f_transpose(1, 2)?;
        let x = x.f_permute([0, 2, 3, 1])?.f_reshape([b, oh * ow, c])?;
        let y = match bias {
            Some(v) => v.f_unsqueeze(1)?.f_baddbmm(&x, &weights, 1.0, 1.0)?,
            None => x.f_bmm(&weights)?,
        };
        return Ok(y.f_reshape([b, oh, ow, out])?.f_permute([0, 3, 1, 2])?);
    }
    // [B, Cout, Cin/g] -> [B*g, Cout/g, Cin/g]; input [B*g, Cin/g, H'W'].
    let weights =
        synthesize(coefficients, bank)?.f_reshape([b * groups, out / groups, c / groups])?;
    let x = x.f_reshape([b * groups, c / groups, oh * ow])?;
    let y = match bias {
        Some(v) => v
            .f_reshape([b * groups, out / groups, 1])?
            .f_baddbmm(&weights, &x, 1.0, 1.0)?,
        None => weights.f_bmm(&x)?,
    };
    match_layout(y.f_reshape([b, out, oh, ow])?, input)
}

/// Every basis on every sample, then each sample's outputs mixed by its coefficients.
pub(crate) fn mix_outputs(
    input: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
) -> Result<Tensor> {
    let (b, c, h, w) = input.size4()?;
    if is_dense_on_one_pixel(g, (h, w)) {
        let x = input.f_reshape([b, c])?;
        let bank = bank.f_reshape([bank.size()[0], g.out_channels, c])?;
        let y = mix_outputs_dense(&x, coefficients, &bank, bias)?;
        return Ok(y.f_reshape([b, g.out_channels, 1, 1])?);
    }
    let n = bank.size()[0];
    let groups = g.groups;
    let [out, in_per_group, kh, kw] = g.weight_shape();
    // Output channels of a grouped convolution are ordered group by group, so put the N
    // bases inside each group: [N, g, Cout/g, ...] -> [g, N, Cout/g, ...].
    let all = bank
        .f_reshape([n, groups, out / groups, in_per_group, kh, kw])?
        .f_transpose(0, 1)?
        .f_reshape([groups * n * (out / groups), in_per_group, kh, kw])?;
    let y = conv(input, &all, None, g, groups)?;
    let (_, _, oh, ow) = y.size4()?;
    let y = y.f_reshape([b, groups, n, (out / groups) * oh * ow])?;
    let mixed = Tensor::f_einsum("bn,bgnk->bgk", &[coefficients, &y], None::<i64>)?;
    let mut y = mixed.f_reshape([b, out, oh, ow])?;
    if let Some(v) = bias {
        y = y.f_add(&v.f_reshape([b, out, 1, 1])?)?;
    }
    match_layout(y, input)
}

/// One kernel from one coefficient row (`[1, N]`), one ordinary convolution (the
/// activation fused where it can be); `bias` is that row's `[1, Cout]`.
pub(crate) fn shared(
    input: &Tensor,
    coefficient_row: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    g: &Conv2dGeometry,
    act: Activation,
) -> Result<Tensor> {
    if crate::depthwise::applies(input, coefficient_row, bank, g) {
        let weights = synthesize(coefficient_row, bank)?;
        if let Some(y) = crate::depthwise::forward(input, &weights, bias, g, act)? {
            return Ok(y);
        }
    }
    let weight = synthesize(coefficient_row, bank)?.f_squeeze_dim(0)?;
    let bias = bias.map(|v| v.f_reshape([-1])).transpose()?;
    crate::fused::conv2d(input, &weight, bias.as_ref(), g, g.groups, act)
}

/// A 1x1 kernel with one group on a 1x1 input: a linear layer (or a squeeze-excite conv).
pub(crate) fn is_dense_on_one_pixel(g: &Conv2dGeometry, input_hw: (i64, i64)) -> bool {
    g.is_pointwise()
        && g.groups == 1
        && input_hw == (1, 1)
        && g.stride == [1, 1]
        && g.padding == [0, 0]
}

/// Linear layers: every basis in one matrix multiply (`[B, in] x [in, N*out]`), then each
/// sample's `N` outputs mixed by its coefficients: the multiply-adds of synthesis without
/// writing `B` weight matrices (at inference, one pass that does not write the `N` outputs
/// either: `crate::pointwise`). `x` `[B, in]`, bank `[N, out, in]`, each sample's bias
/// `[B, out]`.
pub(crate) fn mix_outputs_dense(
    x: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    if crate::pointwise::dense_applies(x, bank) {
        if let Some(y) = crate::pointwise::dense_forward(x, coefficients, bank, bias)? {
            return Ok(y);
        }
    }
    let batch = x.size()[0];
    let (n, out, inp) = bank.size3()?;
    let all = x
        .f_matmul(&bank.f_reshape([n * out, inp])?.f_transpose(0, 1)?)?
        .f_reshape([batch, n, out])?;
    let y = coefficients.f_unsqueeze(1)?.f_bmm(&all)?.f_squeeze_dim(1)?;
    Ok(match bias {
        Some(v) => y.f_add(v)?,
        None => y,
    })
}
