//! [`LossScaler`]: dynamic loss scaling for fp16 training (PyTorch's `GradScaler`).

use serde::{Deserialize, Serialize};
use tch::{Kind, TchError, Tensor};

/// Multiplies the loss before backward so small fp16 gradients do not flush to zero, then
/// divides the gradients back. A step whose gradients hold an infinity or a NaN is skipped
/// and the scale halves; after `growth_interval` good steps in a row it doubles.
///
/// ```
/// use basis_amp::LossScaler;
/// use tch::Tensor;
///
/// let mut scaler = LossScaler::default();
/// assert_eq!(scaler.scale(), 65536.0);
/// // A gradient that overflowed: the step is skipped and the scale backs off.
/// let grads = [Tensor::from_slice(&[f32::INFINITY, 1.0])];
/// assert!(!scaler.unscale(&grads)?);
/// assert_eq!((scaler.scale(), scaler.skipped()), (32768.0, 1));
/// // A finite one is divided by the scale and the step goes ahead.
/// let grads = [Tensor::from_slice(&[32768.0f32, 65536.0])];
/// assert!(scaler.unscale(&grads)?);
/// assert_eq!(Vec::<f32>::try_from(&grads[0])?, [1.0, 2.0]);
/// # Ok::<(), tch::TchError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    scale: f64,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
    good_steps: u32,
    skipped: u64,
}

impl Default for LossScaler {
    /// PyTorch's defaults: scale 2^16, doubled after 2000 good steps, halved on overflow.
    fn default() -> Self {
        Self {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            good_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Steps skipped so far because their gradients overflowed.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The loss to call backward on: `loss * scale`.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor, TchError> {
        loss.f_mul_scalar(self.scale)
    }

    /// Divide the gradients `grads` (undefined ones are left alone) by the scale in place,
    /// and update the scale. Returns whether every gradient is finite, that is whether the
    /// optimizer should step.
    pub fn unscale(&mut self, grads: &[Tensor]) -> Result<bool, TchError> {
        let inverse = 1.0 / self.scale;
        // One flag per gradient, computed where the gradients live, and one read of them
        // all: a single host synchronization a step, not one per tensor.
        let mut flags = Vec::new();
        for g in grads.iter().filter(|g| g.defined()) {
            flags.push(g.f_isfinite()?.f_all()?);
            let _ = g.shallow_clone().f_mul_scalar_(inverse)?;
        }
        let finite = match flags.is_empty() {
            true => true,
            false => {
                Tensor::f_stack(&flags, 0)?
                    .f_all()?
                    .f_to_kind(Kind::Int64)?
                    .f_int64_value(&[])?
                    != 0
            }
        };
        if finite {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= self.growth_factor;
                self.good_steps = 0;
            }
        } else {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
            self.skipped += 1;
        }
        Ok(finite)
    }
}
