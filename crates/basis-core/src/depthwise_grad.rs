//! The per-sample depthwise convolution in training (`cpp/depthwise_grad.cpp`): one
//! autograd node whose forward and input gradient are libtorch's grouped convolution and
//! whose kernel gradient is computed per plane, each plane padded in cache as for the
//! inference kernel ([`crate::depthwise`]) and the taps' sums kept in vector registers.
//! libtorch computes that gradient through im2col and a GEMM per group: 4-12x slower on
//! 5x5 kernels and 13-28x on outputs narrower than the kernel ([`MIN_TRAIN_KERNEL`],
//! [`trains`]). `basisnet-mv3` training step: 1.11x (5 alternating pairs, 1.04-1.15x).

use crate::depthwise::kernel_fits;
use crate::error::Result;
use crate::fused::{check, enabled, grad_enabled, owned, ptr};
use crate::geometry::Conv2dGeometry;
use crate::layout::is_channels_last;
use crate::pointwise::cpu_autocast;
use std::os::raw::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn bc_depthwise_train(
        input: *mut C_tensor,
        weight: *mut C_tensor,
        stride: i64,
        padding: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// The smallest kernel whose weight gradient the training kernel always computes:
/// libtorch's (oneDNN's) 5x5 weight gradient ran 4-12x slower than this kernel's on
/// every plane measured (7 to 56 columns), its 3x3 one as fast or faster (0.1-1.1x ours)
/// wherever the output is at least three columns wide, and 13-28x slower on outputs of one
/// or two columns (128 images of 576 channels: 18-22 against 0.8-1.4 ms). So a smaller
/// kernel takes the training kernel where the output is narrower than the kernel.
pub const MIN_TRAIN_KERNEL: i64 = 5;

/// Whether the training kernel ([`train`]) runs a depthwise layer of geometry `g` on
/// `input`, with kernels synthesized from `bank` with `coefficients`: autograd records
/// (some operand needs a gradient), fp32 on the CPU, a contiguous NCHW input, a kernel
/// that the inference kernel's geometry takes, of at least [`MIN_TRAIN_KERNEL`] or wider than the
/// output, no CPU autocast, fused kernels on ([`crate::fused::set_enabled`]).
pub(crate) fn trains(
    input: &Tensor,
    coefficients: &Tensor,
    bank: &Tensor,
    g: &Conv2dGeometry,
) -> bool {
    let grad = grad_enabled()
        && [input, coefficients, bank]
            .into_iter()
            .any(Tensor::requires_grad);
    enabled()
        && grad
        && !cpu_autocast()
        && kernel_fits(g)
        && (g.kernel_size[0] >= MIN_TRAIN_KERNEL || narrow_output(input, g))
        && input.device() == Device::Cpu
        && bank.device() == Device::Cpu
        && input.kind() == Kind::Float
        && bank.kind() == Kind::Float
        && input.dim() == 4
        && input.is_contiguous()
        && !is_channels_last(input)
}

/// An output (of `g` on `input`) narrower or shorter than the kernel.
fn narrow_output(input: &Tensor, g: &Conv2dGeometry) -> bool {
    let &[_, _, h, w] = input.size().as_slice() else {
        return false;
    };
    g.output_hw(h, w)
        .is_ok_and(|(oh, ow)| oh.min(ow) < g.kernel_size[0])
}

/// The depthwise convolution of `input` `[B, C, H, W]` with `weight` `[B, C, 1, k, k]`
/// (each sample's kernels) or `[1, C, 1, k, k]`, recorded for autograd with this crate's
/// backward (`cpp/depthwise_grad.cpp`): the input gradient is libtorch's, the kernel
/// gradient is computed per plane with the taps' sums in vector registers (libtorch's goes
/// through im2col and a GEMM per group: 4-12x slower on the 5x5 layers of `basisnet-mv3`
/// at batch 32, equal on 3x3). Where [`trains`] holds; no bias, no activation.
pub(crate) fn train(input: &Tensor, weight: &Tensor, g: &Conv2dGeometry) -> Result<Tensor> {
    let [_, k] = g.kernel_size;
    let rows = weight.size()[0];
    let weight = weight
        .f_reshape([rows, g.out_channels, k, k])?
        .f_contiguous()?;
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensors outlive the call; the shim reads them (and keeps references for
    // the backward), writes `out` (a new tensor it hands over, or null) and returns null or
    // a message it malloc'ed.
    check(unsafe {
        bc_depthwise_train(
            ptr(input),
            ptr(&weight),
            g.stride[0],
            g.padding[0],
            &mut out,
        )
    })?;
    owned(out).ok_or_else(|| {
        crate::error::BasisError::Torch(tch::TchError::Torch(
            "the depthwise training kernel returned no tensor".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::depthwise::tests::{depthwise, reference};

    /// The output, input gradient and kernel gradient of `run` for a random output
    /// gradient.
    fn with_grads(
        x: &Tensor,
        weight: &Tensor,
        run: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let x = x.detach().set_requires_grad(true);
        let weight = weight.detach().set_requires_grad(true);
        let y = run(&x, &weight);
        tch::manual_seed(3);
        let upstream = Tensor::randn_like(&y);
        (&y * &upstream).sum(Kind::Float).backward();
        (y.detach(), x.grad(), weight.grad())
    }

    #[test]
    fn training_kernel_equals_the_grouped_convolution_and_its_gradients() {
        tch::manual_seed(5);
        let cpu = (Kind::Float, Device::Cpu);
        // (batch, channels, h, w, k, stride, padding, shared kernels): every kernel size
        // (7x7 sums its rows in passes of three) and stride, odd and even padding, planes
        // narrower than one vector and wider than two, one kernel for the batch.
        let cases = [
            (2, 3, 12, 29, 5, 1, 2, false),
            (3, 2, 13, 40, 5, 2, 2, false),
            (2, 2, 9, 7, 5, 1, 2, false),
            (2, 3, 14, 14, 5, 2, 1, false),
            (2, 2, 11, 37, 7, 1, 3, false),
            (1, 2, 15, 20, 7, 2, 3, false),
            (2, 3, 10, 33, 3, 1, 1, false),
            (2, 2, 9, 18, 3, 2, 0, false),
            (3, 2, 12, 31, 5, 1, 2, true),
            (2, 3, 11, 16, 7, 2, 2, true),
        ];
        for &(b, c, h, w, k, stride, padding, shared) in &cases {
            let g = depthwise(c, k, stride, padding);
            let rows = if shared { 1 } else { b };
            let x = Tensor::randn([b, c, h, w], cpu);
            let weight = Tensor::randn([rows, c, 1, k, k], cpu) / k as f64;
            let what = format!(
                "{b}x{c}x{h}x{w}, {k}x{k}, stride {stride}, padding {padding}, shared {shared}"
            );
            let (y, gx, gw) = with_grads(&x, &weight, |x, w| train(x, w, &g).unwrap());
            let (y_ref, gx_ref, gw_ref) = with_grads(&x, &weight, |x, w| {
                reference(x, w, None, &g, Activation::Identity)
            });
            for (name, got, want) in [
                ("output", &y, &y_ref),
                ("input gradient", &gx, &gx_ref),
                ("kernel gradient", &gw, &gw_ref),
            ] {
                assert_eq!(got.size(), want.size(), "{what}: {name}");
                let scale = want.abs().max().double_value(&[]).max(1.0);
                let gap = (got - want).abs().max().double_value(&[]) / scale;
                assert!(gap < 1e-5, "{what}: {name} gap {gap}");
            }
        }
    }

    #[test]
    fn training_kernel_runs_where_measured() {
        let cpu = (Kind::Float, Device::Cpu);
        let coefficients = Tensor::ones([2, 4], cpu).set_requires_grad(true);
        let bank = Tensor::randn([4, 8, 1, 5, 5], cpu);
        let g = depthwise(8, 5, 1, 2);
        let x = Tensor::randn([2, 8, 14, 14], cpu);
        assert!(trains(&x, &coefficients, &bank, &g));
        // 3x3 kernels keep libtorch's weight gradient, as fast as this one there, unless
        // the output is narrower than the kernel.
        let bank3 = Tensor::randn([4, 8, 1, 3, 3], cpu);
        assert!(!trains(&x, &coefficients, &bank3, &depthwise(8, 3, 1, 1)));
        let (three, two) = (
            Tensor::randn([2, 8, 3, 3], cpu),
            Tensor::randn([2, 8, 2, 2], cpu),
        );
        assert!(!trains(
            &three,
            &coefficients,
            &bank3,
            &depthwise(8, 3, 1, 1)
        ));
        assert!(trains(&two, &coefficients, &bank3, &depthwise(8, 3, 1, 1)));
        assert!(trains(
            &three,
            &coefficients,
            &bank3,
            &depthwise(8, 3, 2, 1)
        ));
        // Nothing needs a gradient, or autograd is off: the inference paths.
        let fixed = coefficients.detach();
        assert!(!trains(&x, &fixed, &bank, &g));
        assert!(!tch::no_grad(|| trains(&x, &coefficients, &bank, &g)));
        // bf16, channels_last and autocast keep libtorch's convolution.
        let bf = x.to_kind(Kind::BFloat16);
        assert!(!trains(
            &bf,
            &coefficients,
            &bank.to_kind(Kind::BFloat16),
            &g
        ));
        let cl = crate::layout::to_channels_last(&x).unwrap();
        assert!(!trains(&cl, &coefficients, &bank, &g));
    }

    #[test]
    fn training_kernel_rejects_bad_operands() {
        let cpu = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([2, 3, 12, 12], cpu);
        let wrong_rows = Tensor::randn([3, 3, 1, 5, 5], cpu);
        let err = train(&x, &wrong_rows, &depthwise(3, 5, 1, 2)).unwrap_err();
        assert!(err.to_string().contains("shapes do not match"), "{err}");
        let tiny = Tensor::randn([1, 3, 2, 2], cpu);
        let weight = Tensor::randn([1, 3, 1, 5, 5], cpu);
        let err = train(&tiny, &weight, &depthwise(3, 5, 1, 0)).unwrap_err();
        assert!(err.to_string().contains("smaller than its kernel"), "{err}");
    }
}
