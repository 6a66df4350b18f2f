//! The per-sample 1x1 convolution at inference in one pass (`cpp/pointwise.cpp`): for
//! each sample and block of 8 to 64 output channels (as many as keep their bank rows in
//! L2), the kernel rows are synthesized from the bank into a buffer that stays in cache
//! (four samples at a time, so that each bank row read from L2 serves four), multiplied
//! with the sample's input by libtorch's batch-reduce GEMM (oneDNN's micro-kernel), and
//! the bias (a folded batch norm included) and the activation are applied to each block of
//! output while it is in cache.
//!
//! [`crate::Strategy::BatchedMatmul`] runs it where it gives the eager result: fp32 on the
//! CPU, a contiguous NCHW input, a plain 1x1 kernel (stride 1, no padding, one group), no
//! gradient needed, no CPU autocast, fused kernels on ([`crate::fused::set_enabled`]).
//! Elsewhere the layer runs as synthesis, `baddbmm` and activation, with autograd. A model
//! cast to bf16 takes it for batches of up to 8 where libtorch's bf16 batch-reduce GEMM
//! runs oneDNN's micro-kernel (AVX-512): the kernel rows are synthesized in fp32 and
//! rounded to bf16, the input is packed in pairs of channels (the micro-kernel's layout),
//! products accumulate in fp32 and the output is rounded once. `basisnet-mv3` bf16 at
//! batch 1: 1.20x (1.11-1.23x, 3 alternating rounds; fp32 unchanged, 0.97-1.01x), with
//! one image kept NCHW as in fp32 (88.0 against 79.3 images/s in `channels_last`, one
//! run).
//!
//! A layer on one vector per sample (a linear layer, a 1x1 convolution on a 1x1 input such
//! as squeeze-excite's) has its own one-pass kernel: for batches above four the GEMMs of
//! the N bases accumulate into each block of output features, their inputs each sample's
//! vector scaled by its coefficient, so the `[B, N, Cout]` outputs of every basis that
//! [`crate::Strategy::MixOutputs`] mixes afterwards are never written (at batch 32 on the
//! shapes of `basisnet-mv3`, N = 8: 9.1 ms against 16.7 for libtorch's `linear` and mix);
//! for batches of one to four, memory-bound, the bank streams once through dot products
//! with every sample's vector on all threads (libtorch's matrix-vector product, MKL's AVX2
//! code on AMD, read it at a quarter of the memory's speed there), and each sample's N
//! results are mixed after (`cpp/dense.cpp`; a bf16 bank streams as bf16, half the bytes,
//! into fp32 sums).
//!
//! Measured on a 2-core AMD EPYC (AVX-512; MKL runs its AVX2 code there), PyTorch 2.13,
//! `basisnet-mv3` fp32 with both kernels against the code before them, 6 alternating
//! rounds: batch 32 1.18x (1.05-1.30x, images/s), 50% early exit 1.08x, batch 1 1.03x
//! (at batch 1 the specialist runs `channels_last`, where the 1x1 kernel does not apply).
//! In the batch-32 profile the specialist's 1x1 layers with their synthesis and
//! activations took 95 against 107 ms, its linear layers 6.9 against 13.6 ms and its
//! squeeze-excite 1x1 layers 6.7 against 9.3 ms. Those runs had the kernels on one thread
//! (the shims were compiled without OpenMP, which `at::parallel_for` needs); on both,
//! batch 32 ran 1.26x faster again (1x1 layers 47.7 against 77.5 ms) and batch 1 1.11x.

use crate::activation::Activation;
use crate::error::Result;
use crate::fused::{check, enabled, grad_enabled, owned, ptr};
use crate::geometry::Conv2dGeometry;
use crate::layout::is_channels_last;
use std::os::raw::c_char;
use tch::{Device, Kind, Tensor};
use torch_sys::C_tensor;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn bc_pointwise_forward(
        input: *mut C_tensor,
        alpha: *mut C_tensor,
        bank: *mut C_tensor,
        bias: *mut C_tensor,
        attr: *const c_char,
        lower: f64,
        upper: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn bc_cpu_autocast_enabled() -> std::os::raw::c_int;
    fn bc_bf16_gemm() -> std::os::raw::c_int;
    fn bc_dense_forward(
        input: *mut C_tensor,
        alpha: *mut C_tensor,
        bank: *mut C_tensor,
        bias: *mut C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Whether CPU autocast is on for this thread (the kernels then step aside).
pub(crate) fn cpu_autocast() -> bool {
    // SAFETY: no arguments; reads a thread-local flag.
    unsafe { bc_cpu_autocast_enabled() == 1 }
}

/// Whether the 1x1 kernel takes bf16 operands here: libtorch's bf16 batch-reduce GEMM runs
/// oneDNN's micro-kernel (AVX-512) and gave the right product on a first try (asked once).
pub(crate) fn bf16_gemm() -> bool {
    static WORKS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    // SAFETY: no arguments; the shim catches its own exceptions.
    *WORKS.get_or_init(|| unsafe { bc_bf16_gemm() == 1 })
}

/// The largest batch the 1x1 kernel takes in bf16 (`basisnet-mv3` images/s, kernel
/// against the eager bf16 layers, which run oneDNN's bf16 code too): batch 2 1.10-1.23x,
/// batch 8 1.06-1.10x (2 runs each), batch 16 0.90-1.05x (3 runs), batch 32 0.90-0.97x
/// (2 runs; on wide planes the kernel's separate bf16 store costs more than the GEMM
/// saves).
const BF16_MAX_BATCH: i64 = 8;

/// Whether the one-pass kernel gives the eager result for these operands (see the module's
/// notes); the caller checks it before building the kernel's arguments.
pub(crate) fn applies(input: &Tensor, bank: &Tensor, geometry: &Conv2dGeometry) -> bool {
    let plain = geometry.is_pointwise()
        && geometry.groups == 1
        && geometry.stride == [1, 1]
        && geometry.padding == [0, 0];
    let typed = match input.kind() {
        Kind::Float => true,
        Kind::BFloat16 => bf16_gemm() && input.dim() == 4 && input.size()[0] <= BF16_MAX_BATCH,
        _ => false,
    };
    let no_grad = !grad_enabled() || !(input.requires_grad() || bank.requires_grad());
    enabled()
        && !cpu_autocast()
        && plain
        && no_grad
        && typed
        && input.device() == Device::Cpu
        && bank.device() == Device::Cpu
        && bank.kind() == input.kind()
        && input.dim() == 4
        && input.is_contiguous()
        && !is_channels_last(input)
}

/// The coefficients, bank and bias as the kernels read them (contiguous), or `None` when
/// the coefficients or the bias need a gradient (the kernels have no backward).
fn operands(
    alpha: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<(Tensor, Tensor, Option<Tensor>)>> {
    let gradient = [Some(alpha), bias]
        .into_iter()
        .flatten()
        .any(Tensor::requires_grad);
    if gradient && grad_enabled() {
        return Ok(None);
    }
    let bias = bias.map(Tensor::f_contiguous).transpose()?;
    Ok(Some((alpha.f_contiguous()?, bank.f_contiguous()?, bias)))
}

/// `act(W_b x_b + bias_b)` with `W_b = sum_i alpha[b, i] * bank[i]` for every sample `b` of
/// `input` `[B, Cin, H, W]` (`alpha` `[B, N]`, `bank` `[N, Cout, Cin, 1, 1]`, `bias`
/// `[B, Cout]`), where [`applies`] holds; `None` under CPU autocast (the caller then runs
/// the eager layers, whose GEMM autocast runs in its own dtype).
pub(crate) fn forward(
    input: &Tensor,
    alpha: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
    act: Activation,
) -> Result<Option<Tensor>> {
    let Some((alpha, bank, bias)) = operands(alpha, bank, bias)? else {
        return Ok(None);
    };
    let (attr, lower, upper) = act.onednn();
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensors outlive the call and the shim only reads them; it writes `out` (a
    // new tensor it hands over, or null) and returns null or a message it malloc'ed.
    check(unsafe {
        bc_pointwise_forward(
            ptr(input),
            ptr(&alpha),
            ptr(&bank),
            bias.as_ref().map_or(std::ptr::null_mut(), ptr),
            attr.as_ptr(),
            lower,
            upper,
            &mut out,
        )
    })?;
    Ok(owned(out))
}

/// Whether the dense one-pass kernel runs for `x` `[B, in]` and `bank` `[N, out, in]`: as
/// [`applies`], fp32 for any batch, bf16 for batches of at most four (streamed).
pub(crate) fn dense_applies(x: &Tensor, bank: &Tensor) -> bool {
    let no_grad = !grad_enabled() || !(x.requires_grad() || bank.requires_grad());
    let typed = match x.kind() {
        Kind::Float => true,
        Kind::BFloat16 => x.dim() == 2 && x.size()[0] <= STREAM_BATCH,
        _ => false,
    };
    enabled()
        && !cpu_autocast()
        && no_grad
        && typed
        && x.device() == Device::Cpu
        && bank.device() == Device::Cpu
        && bank.kind() == x.kind()
        && x.dim() == 2
        && bank.dim() == 3
}

/// Batches of at most this many vectors stream the bank in the dense kernel (as
/// `kStreamBatch` in `cpp/pointwise.cpp`).
const STREAM_BATCH: i64 = 4;

/// Whether the dense kernel runs for `x` and `bank` and streams the bank (a batch of at
/// most four): a static linear layer then takes it too (libtorch's matrix-vector product
/// read the weights at a quarter of the memory's speed on AMD CPUs).
pub(crate) fn streams(x: &Tensor, bank: &Tensor) -> bool {
    dense_applies(x, bank) && x.size()[0] <= STREAM_BATCH
}

/// `y[b] = sum_i alpha[b, i] * bank[i] x[b] + bias[b]` for `x` `[B, in]`, `alpha` `[B, N]`,
/// `bank` `[N, out, in]` and `bias` `[B, out]`, where [`dense_applies`] holds; `None` under
/// CPU autocast or when the coefficients or the bias need a gradient.
pub(crate) fn dense_forward(
    x: &Tensor,
    alpha: &Tensor,
    bank: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let x = x.f_contiguous()?;
    let Some((alpha, bank, bias)) = operands(alpha, bank, bias)? else {
        return Ok(None);
    };
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as in `forward`.
    check(unsafe {
        bc_dense_forward(
            ptr(&x),
            ptr(&alpha),
            ptr(&bank),
            bias.as_ref().map_or(std::ptr::null_mut(), ptr),
            &mut out,
        )
    })?;
    Ok(owned(out))
}
