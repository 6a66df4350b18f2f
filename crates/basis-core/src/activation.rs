//! [`Activation`]: the nonlinearity after a layer, as one value the fused convolution
//! ([`crate::fused`]) and the unfused fallback both read.

use crate::error::Result;
use std::ffi::CStr;
use tch::Tensor;

/// The activation after a layer.
///
/// ```
/// use basis_core::Activation;
/// use tch::Tensor;
///
/// let x = Tensor::from_slice(&[-4.0f32, -1.0, 0.5, 7.0]);
/// let y = Activation::RELU6.apply(x.copy())?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, [0.0, 0.0, 0.5, 6.0]);
/// let y = Activation::Hardswish.apply(x)?;
/// assert_eq!(Vec::<f32>::try_from(&y)?, [-0.0, -1.0 / 3.0, 0.5 * 3.5 / 6.0, 7.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// None: the layer's output as it is.
    Identity,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, lower), upper)` (PyTorch's `hardtanh`; ReLU6 is `0..6`).
    Clamp {
        /// The lower bound.
        lower: f64,
        /// The upper bound.
        upper: f64,
    },
    /// `x * relu6(x + 3) / 6` (MobileNetV3's `HS`).
    Hardswish,
    /// `relu6(x + 3) / 6`, the gate of MobileNetV3's squeeze-excite.
    Hardsigmoid,
}

impl Activation {
    /// ReLU6 (MobileNetV2): a clamp to `0..6`.
    pub const RELU6: Self = Self::Clamp {
        lower: 0.0,
        upper: 6.0,
    };

    /// Apply to `x`; in place when `x` needs no gradient (inference), as torchvision's
    /// `inplace=True` activations do, which saves one activation-sized allocation.
    pub fn apply(self, mut x: Tensor) -> Result<Tensor> {
        let in_place = !x.requires_grad();
        Ok(match (self, in_place) {
            (Self::Identity, _) => x,
            (Self::Relu, true) => x.f_relu_()?,
            (Self::Relu, false) => x.f_relu()?,
            (Self::Clamp { lower, upper }, true) => x.f_clamp_(lower, upper)?,
            // ReLU6 through PyTorch's own op, so its gradient at the bounds is PyTorch's.
            (Self::Clamp { lower, upper }, false) if (lower, upper) == (0.0, 6.0) => x.f_relu6()?,
            (Self::Clamp { lower, upper }, false) => x.f_clamp(lower, upper)?,
            (Self::Hardswish, true) => x.f_hardswish_()?,
            (Self::Hardswish, false) => x.f_hardswish()?,
            (Self::Hardsigmoid, true) => x.f_hardsigmoid_()?,
            (Self::Hardsigmoid, false) => x.f_hardsigmoid()?,
        })
    }

    /// [`Activation::apply`] as its own entry (`activation`) in the timing profile.
    pub(crate) fn apply_timed(self, x: Tensor) -> Result<Tensor> {
        if self == Self::Identity {
            return Ok(x);
        }
        crate::timing::span(|| "activation".into(), || self.apply(x))
    }

    /// oneDNN's name for the activation (as the C shims take it), and its two scalars.
    pub(crate) fn onednn(self) -> (&'static CStr, f64, f64) {
        match self {
            Self::Identity => (c"none", 0.0, 0.0),
            Self::Relu => (c"relu", 0.0, 0.0),
            Self::Clamp { lower, upper } => (c"hardtanh", lower, upper),
            Self::Hardswish => (c"hardswish", 0.0, 0.0),
            Self::Hardsigmoid => (c"hardsigmoid", 0.0, 0.0),
        }
    }
}
