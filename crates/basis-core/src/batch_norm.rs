//! Batch norm in training on NCHW planes (`cpp/batch_norm.cpp`): the batch's statistics
//! in one pass over the input, the normalization in one more, libtorch's own backward
//! (given the statistics this forward saved). libtorch's NCHW forward ran at 2.6x the
//! time of one read-and-write pass over a `[32, 64, 112, 112]` input (19.4 against 5.1 ms,
//! 2-core AMD EPYC, PyTorch 2.13), most of it in its statistics pass. A per-sample
//! specialist runs NCHW, so its batch norms take this path in training.

use crate::error::{BasisError, Result};
use crate::fused::{check, enabled, owned, ptr};
use crate::layout::is_channels_last;
use crate::pointwise::cpu_autocast;
use std::os::raw::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn bc_batch_norm_train(
        input: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        running_mean: *mut C_tensor,
        running_var: *mut C_tensor,
        momentum: f64,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Training-mode batch norm of `x` `[B, C, H, W]` (PyTorch's `batch_norm` with
/// `training = true`): normalized by the batch's mean and biased variance, scaled by
/// `weight` and shifted by `bias`; `running_mean` and `running_var` move toward the
/// batch's mean and unbiased variance by `momentum`, in place. Gradients reach `x`,
/// `weight` and `bias` as libtorch's.
///
/// `None` (nothing computed, the running statistics untouched) where this kernel does not
/// run and the caller keeps libtorch's: unless `x` is a contiguous NCHW fp32 CPU tensor
/// with more than one value per channel, the parameters fp32 vectors of `C` values on
/// the CPU, no CPU autocast, fused kernels on ([`crate::fused::set_enabled`]).
///
/// ```
/// use tch::{Kind, Tensor};
/// let x = Tensor::randn([4, 3, 5, 5], (Kind::Float, tch::Device::Cpu));
/// let (w, b) = (Tensor::ones([3], (Kind::Float, tch::Device::Cpu)), Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)));
/// let (rm, rv) = (Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)), Tensor::ones([3], (Kind::Float, tch::Device::Cpu)));
/// let y = basis_core::batch_norm_train(&x, &w, &b, &rm, &rv, 0.1, 1e-5)?.expect("NCHW fp32");
/// let want = x.batch_norm(Some(&w), Some(&b), None::<&Tensor>, None::<&Tensor>, true, 0.1, 1e-5, false);
/// assert!(y.allclose(&want, 1e-4, 1e-5, false));
/// # Ok::<(), basis_core::BasisError>(())
/// ```
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Result<Option<Tensor>> {
    let size = x.size();
    let &[b, c, h, w] = size.as_slice() else {
        return Ok(None);
    };
    let vector = |t: &Tensor| {
        t.size() == [c] && t.kind() == Kind::Float && t.device() == Device::Cpu && t.is_contiguous()
    };
    let runs = enabled()
        && !cpu_autocast()
        && x.kind() == Kind::Float
        && x.device() == Device::Cpu
        && x.is_contiguous()
        && !is_channels_last(x)
        && b * h * w > 1
        && [weight, bias, running_mean, running_var]
            .into_iter()
            .all(vector);
    if !runs {
        return Ok(None);
    }
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensors outlive the call; the shim reads `x`, `weight` and `bias` (and
    // keeps references for the backward), updates the running statistics in place, writes
    // `out` (a new tensor it hands over, or null) and returns null or a message it
    // malloc'ed.
    check(unsafe {
        bc_batch_norm_train(
            ptr(x),
            ptr(weight),
            ptr(bias),
            ptr(running_mean),
            ptr(running_var),
            momentum,
            eps,
            &mut out,
        )
    })?;
    owned(out).map(Some).ok_or_else(|| {
        BasisError::Torch(tch::TchError::Torch(
            "the batch norm kernel returned no tensor".into(),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output, gradients of input, weight and bias, and the running statistics after one
    /// call, for `run`.
    fn one_step(
        x: &Tensor,
        run: impl Fn(&Tensor, &Tensor, &Tensor, &Tensor, &Tensor) -> Tensor,
    ) -> Vec<Tensor> {
        let c = x.size()[1];
        let cpu = (Kind::Float, Device::Cpu);
        let x = x.detach().set_requires_grad(true);
        let weight = (Tensor::arange(c, cpu) * 0.3 + 0.5).set_requires_grad(true);
        let bias = (Tensor::arange(c, cpu) * -0.2).set_requires_grad(true);
        let (rm, rv) = (Tensor::full([c], 0.25, cpu), Tensor::full([c], 2.0, cpu));
        let y = run(&x, &weight, &bias, &rm, &rv);
        let upstream = (Tensor::arange(y.numel() as i64, cpu) * 0.37)
            .sin()
            .view_as(&y);
        let grads = Tensor::run_backward(
            &[(&y * &upstream).sum(Kind::Float)],
            &[&x, &weight, &bias],
            false,
            false,
        );
        let mut all = vec![y.detach()];
        all.extend(grads);
        all.extend([rm, rv]);
        all
    }

    #[test]
    fn equals_libtorchs_batch_norm_output_gradients_and_running_statistics() {
        let cpu = (Kind::Float, Device::Cpu);
        // Planes of 1, 4, 49 (a vector remainder) and 1,024 values (whole vectors), a batch
        // of one with one pixel more, and a large common offset (the shifted sums keep the
        // variance).
        for (shape, offset) in [
            ([8, 5, 1, 1], 0.0),
            ([6, 3, 2, 2], 0.0),
            ([4, 7, 7, 7], 0.0),
            ([2, 3, 32, 32], 0.0),
            ([1, 4, 1, 2], 0.0),
            ([4, 3, 9, 9], 1000.0),
        ] {
            tch::manual_seed(23);
            let x = Tensor::randn(shape, cpu) * 3.0 + offset;
            let ours = one_step(&x, |x, w, b, rm, rv| {
                batch_norm_train(x, w, b, rm, rv, 0.1, 1e-5)
                    .unwrap()
                    .expect("runs")
            });
            let theirs = one_step(&x, |x, w, b, rm, rv| {
                x.batch_norm(Some(w), Some(b), Some(rm), Some(rv), true, 0.1, 1e-5, false)
            });
            for (name, (a, b)) in [
                "output",
                "input gradient",
                "weight gradient",
                "bias gradient",
                "running mean",
                "running variance",
            ]
            .iter()
            .zip(ours.iter().zip(&theirs))
            {
                let scale = b.abs().max().double_value(&[]).max(1.0);
                let gap = (a - b).abs().max().double_value(&[]) / scale;
                // The offset case loses digits in libtorch's single-precision statistics too.
                let tol = if offset > 0.0 { 1e-3 } else { 1e-5 };
                assert!(gap < tol, "{shape:?} + {offset}: {name} gap {gap}");
            }
        }
    }

    #[test]
    fn runs_only_where_it_applies() {
        let cpu = (Kind::Float, Device::Cpu);
        let v = |value: f64| Tensor::full([4], value, cpu);
        let (w, b, rm, rv) = (v(1.0), v(0.0), v(0.0), v(1.0));
        let run = |x: &Tensor| {
            batch_norm_train(x, &w, &b, &rm, &rv, 0.1, 1e-5)
                .unwrap()
                .is_some()
        };
        assert!(run(&Tensor::randn([2, 4, 3, 3], cpu)));
        assert!(
            !run(&Tensor::randn([1, 4, 1, 1], cpu)),
            "one value per channel"
        );
        let cl = crate::layout::to_channels_last(&Tensor::randn([2, 4, 3, 3], cpu)).unwrap();
        assert!(!run(&cl), "channels_last keeps libtorch's");
        assert!(!run(&Tensor::randn(
            [2, 4, 3, 3],
            (Kind::BFloat16, Device::Cpu)
        )));
        assert!(
            !run(&Tensor::randn([2, 5, 3, 3], cpu)),
            "parameters of another width"
        );
        let untouched = rm.copy();
        let _ = run(&Tensor::randn([2, 5, 3, 3], cpu));
        assert!(rm.equal(&untouched));
    }
}
