//! Metrics accumulated over an evaluation, batch by batch: top-1/top-5 accuracy and the
//! statistics of the coefficient vectors (do the bases specialize by class?).

use crate::error::TrainError;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Top-1 and top-5 counts over the batches added so far.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Accuracy {
    images: usize,
    top1: usize,
    top5: usize,
}

impl Accuracy {
    /// Count a batch of `logits [B, K]` against `labels [B]`; returns whether each
    /// sample's top-1 is right (what the early-exit curve needs).
    ///
    /// ```
    /// use basis_train::metrics::Accuracy;
    /// use tch::Tensor;
    /// let mut acc = Accuracy::default();
    /// let logits = Tensor::from_slice(&[0.1f32, 0.9, 0.8, 0.2]).reshape([2, 2]);
    /// let right = acc.add(&logits, &Tensor::from_slice(&[1i64, 1]))?;
    /// assert_eq!(right, [true, false]);
    /// assert_eq!((acc.top1(), acc.top5(), acc.images()), (0.5, 1.0, 2));
    /// # Ok::<(), basis_train::TrainError>(())
    /// ```
    pub fn add(&mut self, logits: &Tensor, labels: &Tensor) -> Result<Vec<bool>, TrainError> {
        let right = logits.f_argmax(-1, false)?.f_eq_tensor(labels)?;
        let k = logits.size()[1].min(5);
        let (_, idx) = logits.f_topk(k, -1, true, true)?;
        let top5 = idx
            .f_eq_tensor(&labels.f_unsqueeze(1)?)?
            .f_any_dim(1, false)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        let right = Vec::<bool>::try_from(&right)?;
        self.images += right.len();
        self.top1 += right.iter().filter(|&&r| r).count();
        self.top5 += top5 as usize;
        Ok(right)
    }

    /// Images counted.
    pub fn images(&self) -> usize {
        self.images
    }

    /// Fraction whose top-1 class is right.
    pub fn top1(&self) -> f64 {
        self.top1 as f64 / self.images.max(1) as f64
    }

    /// Fraction whose label is among the five highest logits.
    pub fn top5(&self) -> f64 {
        self.top5 as f64 / self.images.max(1) as f64
    }
}

/// Statistics of the (first) coefficient vector over an evaluation: whether the bases
/// specialize by class, and how peaked the vectors are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CoefficientStats {
    /// Bases `N`.
    pub num_bases: usize,
    /// Mean coefficient vector of the images of each true class: `[classes][N]`.
    pub per_class_mean: Vec<Vec<f64>>,
    /// Mean coefficient vector over all images `[N]` (how much each basis is used).
    pub mean: Vec<f64>,
    /// Mean entropy of a vector, in nats (`ln N` for uniform vectors, 0 for one-hot).
    pub mean_entropy: f64,
    /// Mean of each vector's largest coefficient (`1 / N` uniform, 1 one-hot).
    pub mean_max: f64,
}

/// Sums behind [`CoefficientStats`], batch by batch.
#[derive(Debug, Default)]
pub struct CoefficientAccumulator {
    class_sums: Vec<Vec<f64>>,
    class_counts: Vec<usize>,
    entropy_sum: f64,
    max_sum: f64,
}

impl CoefficientAccumulator {
    /// Add the coefficient vectors `[B, N]` of a batch with their true labels `[B]`.
    pub fn add(&mut self, alpha: &Tensor, labels: &Tensor) -> Result<(), TrainError> {
        let n_bases = alpha.size()[1] as usize;
        let rows = Vec::<f32>::try_from(&alpha.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?;
        let labels = Vec::<i64>::try_from(labels)?;
        for (row, &label) in rows.chunks(n_bases).zip(&labels) {
            let k = label.max(0) as usize;
            if self.class_sums.len() <= k {
                self.class_sums.resize(k + 1, vec![0.0; n_bases]);
                self.class_counts.resize(k + 1, 0);
            }
            self.class_counts[k] += 1;
            let mut max = 0.0f64;
            for (sum, &a) in self.class_sums[k].iter_mut().zip(row) {
                let a = f64::from(a);
                *sum += a;
                max = max.max(a);
                if a > 0.0 {
                    self.entropy_sum -= a * a.ln();
                }
            }
            self.max_sum += max;
        }
        Ok(())
    }

    /// The statistics of everything added (`None` when nothing was).
    pub fn finish(self) -> Option<CoefficientStats> {
        let num_bases = self.class_sums.first()?.len();
        let total = self.class_counts.iter().sum::<usize>().max(1) as f64;
        let mut mean = vec![0.0; num_bases];
        for sums in &self.class_sums {
            for (m, s) in mean.iter_mut().zip(sums) {
                *m += s / total;
            }
        }
        Some(CoefficientStats {
            num_bases,
            per_class_mean: self
                .class_sums
                .iter()
                .zip(&self.class_counts)
                .map(|(s, &c)| s.iter().map(|v| v / c.max(1) as f64).collect())
                .collect(),
            mean,
            mean_entropy: self.entropy_sum / total,
            mean_max: self.max_sum / total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficient_statistics_are_the_hand_computed_means() {
        let mut acc = CoefficientAccumulator::default();
        let alpha = Tensor::from_slice(&[1.0f32, 0.0, 0.5, 0.5, 0.25, 0.75]).reshape([3, 2]);
        acc.add(&alpha, &Tensor::from_slice(&[0i64, 1, 1])).unwrap();
        let s = acc.finish().unwrap();
        assert_eq!(s.num_bases, 2);
        assert_eq!(s.per_class_mean, vec![vec![1.0, 0.0], vec![0.375, 0.625]]);
        assert!((s.mean[0] - 1.75 / 3.0).abs() < 1e-12 && (s.mean[1] - 1.25 / 3.0).abs() < 1e-12);
        let h = |p: f64| if p > 0.0 { -p * p.ln() } else { 0.0 };
        let entropy = (0.0 + 2.0 * h(0.5) + h(0.25) + h(0.75)) / 3.0;
        assert!(
            (s.mean_entropy - entropy).abs() < 1e-7,
            "{}",
            s.mean_entropy
        );
        assert!((s.mean_max - 2.25 / 3.0).abs() < 1e-12);
        assert!(CoefficientAccumulator::default().finish().is_none());
    }

    #[test]
    fn accuracy_counts_top1_and_top5() {
        let mut acc = Accuracy::default();
        // Six classes: the label 5 is last of six for the first sample (not in the top 5).
        let logits = Tensor::from_slice(&[
            6.0f32, 5.0, 4.0, 3.0, 2.0, 1.0, //
            1.0, 2.0, 3.0, 4.0, 5.0, 6.0,
        ])
        .reshape([2, 6]);
        let right = acc.add(&logits, &Tensor::from_slice(&[5i64, 4])).unwrap();
        assert_eq!(right, [false, false]);
        assert_eq!((acc.top1(), acc.top5()), (0.0, 0.5));
        acc.add(&logits, &Tensor::from_slice(&[0i64, 5])).unwrap();
        assert_eq!((acc.top1(), acc.top5(), acc.images()), (0.5, 0.75, 4));
    }
}
