//! Squeeze-and-excitation's squeeze: the global average pool of a block's activation.
//!
//! In inference on the CPU, on `channels_last` fp32 and bf16 tensors, [`squeeze`] is one
//! vectorized pass of the shim (`cpp/squeeze.cpp`, summing in fp32) instead of libtorch's
//! `adaptive_avg_pool2d`: on the 2-core benchmark machine (AMD EPYC, AVX-512) the pools
//! of MobileNetV3-Large's eight squeeze-excite blocks at batch 32 in bf16 took 1.8-1.9 ms
//! against 2.9-9.5 ms (alternating runs). Elsewhere (NCHW, other dtypes, a gradient
//! needed, [`set_enabled`] off) it is libtorch's pool, with autograd as usual. (A scale
//! pass written the same way was slower than libtorch's in-place `mul_`, which stays.)

use crate::error::Result;
use crate::fused::{check, owned, ptr};
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn bc_squeeze(input: *mut C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turn the shim's squeeze on or off for the whole process (on by default); off, it runs
/// libtorch's pool. For A/B measurements.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// The global average pool of `x` `[B, C, H, W]`: `[B, C, 1, 1]`, in `x`'s dtype.
///
/// ```
/// use tch::{Device, Kind, Tensor};
///
/// let x = Tensor::randn([2, 8, 5, 5], (Kind::Float, Device::Cpu));
/// let nhwc = basis_core::to_channels_last(&x)?;
/// let pooled = tch::no_grad(|| basis_core::squeeze::squeeze(&nhwc))?;
/// assert_eq!(pooled.size(), [2, 8, 1, 1]);
/// assert!(pooled.allclose(&x.adaptive_avg_pool2d([1, 1]), 1e-5, 1e-6, false));
/// # Ok::<(), basis_core::BasisError>(())
/// ```
pub fn squeeze(x: &Tensor) -> Result<Tensor> {
    if ENABLED.load(Ordering::Relaxed) {
        let mut out: *mut C_tensor = std::ptr::null_mut();
        // SAFETY: `x` outlives the call; the shim writes `out` or leaves it null.
        check(unsafe { bc_squeeze(ptr(x), &mut out) })?;
        if let Some(y) = owned(out) {
            return Ok(y);
        }
    }
    Ok(x.f_adaptive_avg_pool2d([1, 1])?)
}
