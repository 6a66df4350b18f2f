//! Coefficient helpers: softmax with temperature, basis dropout.

use crate::error::{BasisError, Result};
use tch::Tensor;

/// `softmax(logits / temperature)` over the last axis: the combination coefficients the
/// lightweight model emits. A high temperature spreads the weight over the bases, a low
/// one peaks it (Dynamic Convolution anneals it from about 30 to 1).
///
/// ```
/// use basis_core::softmax_with_temperature;
/// use tch::Tensor;
/// let logits = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([1, 3]);
/// let hot = softmax_with_temperature(&logits, 1e6)?;
/// assert!((hot.double_value(&[0, 0]) - 1.0 / 3.0).abs() < 1e-5);
/// assert!(softmax_with_temperature(&logits, 0.0).is_err());
/// # Ok::<(), basis_core::BasisError>(())
/// ```
pub fn softmax_with_temperature(logits: &Tensor, temperature: f64) -> Result<Tensor> {
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(BasisError::Temperature(temperature));
    }
    let kind = logits.f_kind()?;
    Ok(logits.f_div_scalar(temperature)?.f_softmax(-1, kind)?)
}

/// Basis dropout: during training, drop whole bases at random (independently per sample,
/// each with probability `p`) and renormalize each row to sum to one; a row that would
/// lose every basis keeps them all. Identity in evaluation.
///
/// ```
/// use basis_core::BasisDropout;
/// use tch::{Device, Kind, Tensor};
/// let alpha = Tensor::full([4, 8], 0.125, (Kind::Float, Device::Cpu));
/// let dropout = BasisDropout::new(0.5)?;
/// let eval = dropout.forward_t(&alpha, false)?;
/// assert!(eval.equal(&alpha));
/// let train = dropout.forward_t(&alpha, true)?;
/// let sums = train.sum_dim_intlist(-1, false, Kind::Float);
/// assert!(sums.allclose(&Tensor::ones([4], (Kind::Float, Device::Cpu)), 1e-6, 1e-6, false));
/// # Ok::<(), basis_core::BasisError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BasisDropout {
    p: f64,
}

impl BasisDropout {
    /// Dropout of each basis with probability `p` in `[0, 1)`.
    pub fn new(p: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(BasisError::DropoutProbability(p));
        }
        Ok(Self { p })
    }

    /// The drop probability.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// Apply to coefficients `[B, N]` (non-negative rows, as a softmax gives).
    pub fn forward_t(&self, coefficients: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(coefficients.shallow_clone());
        }
        let kind = coefficients.f_kind()?;
        let keep = coefficients.f_rand_like()?.f_ge(self.p)?.f_to_kind(kind)?;
        // Rows that dropped everything keep everything.
        let empty = keep
            .f_sum_dim_intlist(-1, true, kind)?
            .f_eq(0.0)?
            .f_to_kind(kind)?;
        let keep = keep.f_add(&empty)?.f_clamp_max(1.0)?;
        let kept = coefficients.f_mul(&keep)?;
        let total = kept
            .f_sum_dim_intlist(-1, true, kind)?
            .f_clamp_min(f64::from(f32::MIN_POSITIVE))?;
        Ok(kept.f_div(&total)?)
    }
}
