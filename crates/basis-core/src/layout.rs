//! Memory layout of 4-D activations: NCHW (contiguous) or NHWC (`channels_last`).
//!
//! libtorch's CPU convolutions run several times faster on `channels_last` activations
//! (the measurements are in the benchmark report, `docs/src/bench-report.md`).
//! `tch` has no memory-format API, so the layout is read from and set through strides:
//! a `channels_last` tensor keeps the NCHW shape with strides `[HWC, 1, WC, C]`.

use crate::error::Result;
use tch::Tensor;

/// Whether a 4-D tensor is laid out `channels_last` (NHWC in memory). Tensors where
/// both layouts coincide (one channel, or a 1x1 image) count as contiguous.
///
/// ```
/// use basis_core::{is_channels_last, to_channels_last};
/// use tch::{Device, Kind, Tensor};
/// let x = Tensor::zeros([2, 3, 4, 5], (Kind::Float, Device::Cpu));
/// assert!(!is_channels_last(&x));
/// let y = to_channels_last(&x)?;
/// assert!(is_channels_last(&y));
/// assert_eq!(y.size(), [2, 3, 4, 5]);
/// # Ok::<(), basis_core::BasisError>(())
/// ```
pub fn is_channels_last(x: &Tensor) -> bool {
    let size = x.size();
    let stride = x.stride();
    match (size.as_slice(), stride.as_slice()) {
        (&[_, c, h, w], &[_, sc, sh, sw]) => {
            c > 1 && h * w > 1 && sc == 1 && sw == c && (h == 1 || sh == w * c)
        }
        _ => false,
    }
}

/// A `channels_last` copy of a 4-D tensor (or the tensor itself when it already is).
pub fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    if is_channels_last(x) {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// `y` in the layout of `like`: `channels_last` if `like` is, else as it is.
pub(crate) fn match_layout(y: Tensor, like: &Tensor) -> Result<Tensor> {
    if is_channels_last(like) && !is_channels_last(&y) {
        to_channels_last(&y)
    } else {
        Ok(y)
    }
}
