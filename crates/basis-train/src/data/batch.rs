//! Batches on the host (`ndarray`) and as tensors; batch-level mixup and cutmix.

use super::error::DataError;
use ndarray::{s, Array1, Array2, Array4};
use rand::Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

/// A batch on the host: normalized images, channel-major.
#[derive(Debug, Clone)]
pub struct HostBatch {
    /// `[B, C, H, W]` at the full resolution.
    pub images: Array4<f32>,
    /// `[B, C, h, w]` at the lightweight resolution, when the transforms make one.
    pub light_images: Option<Array4<f32>>,
    /// Class of each sample.
    pub labels: Array1<i64>,
    /// Soft targets `[B, classes]` when mixup or cutmix mixed the batch.
    pub targets: Option<Array2<f32>>,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

/// A batch as tensors on a device.
#[derive(Debug)]
pub struct Batch {
    /// `[B, C, H, W]`, float.
    pub images: Tensor,
    /// `[B, C, h, w]`, float, when the transforms make one.
    pub light_images: Option<Tensor>,
    /// `[B]`, int64.
    pub labels: Tensor,
    /// `[B, classes]`, float, when mixed.
    pub targets: Option<Tensor>,
}

/// A host tensor on `device`: on CUDA through page-locked memory, copied without
/// blocking the host (the copy is queued on the device's stream, so it finishes before
/// any kernel queued after it reads the batch).
fn to_device(host: Tensor, device: Device) -> Result<Tensor, DataError> {
    Ok(match device {
        Device::Cuda(_) => {
            host.f_pin_memory(device)?
                .f_to_device_(device, host.kind(), true, false)?
        }
        _ => host.f_to_device(device)?,
    })
}

fn tensor4(a: &Array4<f32>, device: Device) -> Result<Tensor, DataError> {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    let data = a.as_slice().expect("batches are built contiguous");
    to_device(Tensor::f_from_slice(data)?.f_reshape(&shape)?, device)
}

impl HostBatch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether every sample of the batch was skipped.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Copy to tensors on `device` (on CUDA: pinned, without blocking the host).
    pub fn to_tensors(&self, device: Device) -> Result<Batch, DataError> {
        Ok(Batch {
            images: tensor4(&self.images, device)?,
            light_images: self
                .light_images
                .as_ref()
                .map(|l| tensor4(l, device))
                .transpose()?,
            labels: to_device(
                Tensor::f_from_slice(self.labels.as_slice().expect("contiguous"))?,
                device,
            )?,
            targets: self
                .targets
                .as_ref()
                .map(|t| -> Result<Tensor, DataError> {
                    let (b, k) = t.dim();
                    to_device(
                        Tensor::f_from_slice(t.as_slice().expect("contiguous"))?
                            .f_reshape([b as i64, k as i64])?,
                        device,
                    )
                })
                .transpose()?,
        })
    }
}

/// Mixup and cutmix (timm's `Mixup`, batch mode): with probability `prob`, mix the batch
/// with itself reversed, by mixup (`lam ~ Beta(mixup_alpha)`) or, with probability
/// `switch_prob` when both are on, cutmix (a box of area `1 - lam`); targets become the
/// same mix of label-smoothed one-hot vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MixConfig {
    /// Mixup's Beta parameter (0 turns mixup off).
    pub mixup_alpha: f64,
    /// Cutmix's Beta parameter (0 turns cutmix off).
    pub cutmix_alpha: f64,
    /// Probability of mixing a batch at all.
    pub prob: f64,
    /// Probability of cutmix rather than mixup when both are on.
    pub switch_prob: f64,
    /// Label smoothing of the targets.
    pub label_smoothing: f64,
}

impl Default for MixConfig {
    fn default() -> Self {
        Self {
            mixup_alpha: 0.8,
            cutmix_alpha: 1.0,
            prob: 1.0,
            switch_prob: 0.5,
            label_smoothing: 0.1,
        }
    }
}

impl MixConfig {
    /// Check the numbers.
    pub fn validate(&self) -> Result<(), DataError> {
        if self.mixup_alpha < 0.0 || self.cutmix_alpha < 0.0 {
            return Err(DataError::Config(format!(
                "mixup_alpha and cutmix_alpha must be >= 0, found {} and {}",
                self.mixup_alpha, self.cutmix_alpha
            )));
        }
        for (name, p) in [
            ("prob", self.prob),
            ("switch_prob", self.switch_prob),
            ("label_smoothing", self.label_smoothing),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(DataError::Config(format!(
                    "mix {name} is in [0, 1], found {p}"
                )));
            }
        }
        Ok(())
    }

    /// Mix `batch` in place and set its soft targets over `classes` classes.
    pub fn apply(&self, batch: &mut HostBatch, classes: usize, rng: &mut impl Rng) {
        let n = batch.len();
        let smooth = self.label_smoothing;
        let one_hot = |labels: &[i64]| {
            let off = smooth / classes as f64;
            let mut t = Array2::from_elem((labels.len(), classes), off as f32);
            for (i, &l) in labels.iter().enumerate() {
                t[[i, l as usize]] = (1.0 - smooth + off) as f32;
            }
            t
        };
        let labels: Vec<i64> = batch.labels.to_vec();
        let flipped: Vec<i64> = labels.iter().rev().copied().collect();
        let mut lam = 1.0;
        let enabled = self.mixup_alpha > 0.0 || self.cutmix_alpha > 0.0;
        if n > 1 && enabled && rng.random::<f64>() < self.prob {
            let cutmix = self.cutmix_alpha > 0.0
                && (self.mixup_alpha == 0.0 || rng.random::<f64>() < self.switch_prob);
            let alpha = if cutmix {
                self.cutmix_alpha
            } else {
                self.mixup_alpha
            };
            lam = Beta::new(alpha, alpha)
                .map(|b| b.sample(rng))
                .unwrap_or(1.0);
            if cutmix {
                let (_, _, h, w) = batch.images.dim();
                let cut = (1.0 - lam).sqrt();
                let (ch, cw) = ((h as f64 * cut) as usize, (w as f64 * cut) as usize);
                let (cy, cx) = (rng.random_range(0..h), rng.random_range(0..w));
                let frac = |c: usize, half: usize, size: usize| {
                    let lo = c.saturating_sub(half);
                    let hi = (c + half).min(size);
                    (lo as f64 / size as f64, hi as f64 / size as f64)
                };
                let (y0, y1) = frac(cy, ch / 2, h);
                let (x0, x1) = frac(cx, cw / 2, w);
                lam = 1.0 - (y1 - y0) * (x1 - x0);
                cut_mix(&mut batch.images, (y0, y1, x0, x1));
                if let Some(light) = batch.light_images.as_mut() {
                    cut_mix(light, (y0, y1, x0, x1));
                }
            } else {
                mix_up(&mut batch.images, lam as f32);
                if let Some(light) = batch.light_images.as_mut() {
                    mix_up(light, lam as f32);
                }
            }
        }
        let targets = one_hot(&labels) * lam as f32 + one_hot(&flipped) * (1.0 - lam) as f32;
        batch.targets = Some(targets);
    }
}

/// `x = lam * x + (1 - lam) * reversed(x)`.
fn mix_up(images: &mut Array4<f32>, lam: f32) {
    let reversed = images.slice(s![..;-1, .., .., ..]).to_owned();
    images.zip_mut_with(&reversed, |a, b| *a = lam * *a + (1.0 - lam) * *b);
}

/// Paste the box (fractions of height and width) of the reversed batch.
fn cut_mix(images: &mut Array4<f32>, (y0, y1, x0, x1): (f64, f64, f64, f64)) {
    let (_, _, h, w) = images.dim();
    let (ya, yb) = ((y0 * h as f64) as usize, (y1 * h as f64) as usize);
    let (xa, xb) = ((x0 * w as f64) as usize, (x1 * w as f64) as usize);
    if ya >= yb || xa >= xb {
        return;
    }
    let reversed = images.slice(s![..;-1, .., ya..yb, xa..xb]).to_owned();
    images
        .slice_mut(s![.., .., ya..yb, xa..xb])
        .assign(&reversed);
}
