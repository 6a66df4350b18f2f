//! Early exit: the rule that lets a confident image stop after the lightweight stage,
//! and what it costs on average. Inference ([`crate::BasisNet::early_exit`]) and every
//! evaluation curve use these functions, so the rule is stated once.

use crate::error::Result;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Which stage decided a sample in early-exit inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The lightweight model was confident enough.
    Lightweight,
    /// The synthesized specialist.
    Specialist,
}

/// What early-exit inference returns, per sample.
#[derive(Debug)]
pub struct EarlyExitOutput {
    /// Logits `[B, classes]` of the stage that decided.
    pub logits: Tensor,
    /// The stage that decided each sample.
    pub stages: Vec<Stage>,
    /// Multiply-adds spent on each sample (synthesis included for the specialist).
    pub madds: Vec<i64>,
}

/// The lightweight model's confidence in each sample: its max softmax probability `[B]`
/// (computed in fp32 whatever the logits' precision).
pub fn confidence(light_logits: &Tensor) -> Result<Tensor> {
    Ok(light_logits
        .f_softmax(-1, Kind::Float)?
        .f_amax([-1].as_slice(), false)?)
}

/// The rule of the paper: a sample whose confidence is at least `threshold` stops after
/// the lightweight stage. `threshold <= 0` lets every sample exit; `threshold > 1` none.
///
/// ```
/// use basis_models::early_exit::exits;
/// assert!(exits(0.9, 0.9));
/// assert!(!exits(0.89, 0.9));
/// assert!(!exits(1.0, 1.01));
/// ```
pub fn exits(confidence: f64, threshold: f64) -> bool {
    confidence >= threshold
}

/// Average multiply-adds per sample when a fraction `exit_rate` stops after a
/// lightweight stage of `light_madds` and the rest pay `full_madds` (both stages).
///
/// ```
/// use basis_models::early_exit::average_madds;
/// assert_eq!(average_madds(100, 1000, 0.5), 550.0);
/// assert_eq!(average_madds(100, 1000, 1.0), 100.0);
/// ```
pub fn average_madds(light_madds: i64, full_madds: i64, exit_rate: f64) -> f64 {
    light_madds as f64 + (1.0 - exit_rate) * (full_madds - light_madds) as f64
}

/// One point of the early-exit curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitPoint {
    /// Threshold on the lightweight model's max softmax probability.
    pub threshold: f64,
    /// Fraction of images that stop after the lightweight stage.
    pub exit_rate: f64,
    /// Top-1 of the decision (lightweight for exited images, specialist for the rest).
    pub top1: f64,
    /// Average multiply-adds per image.
    pub avg_madds: f64,
}

/// Per-sample outcomes of both stages, from which any threshold's point follows without
/// running the network again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExitOutcomes {
    /// The lightweight model's confidence in each sample.
    pub confidence: Vec<f32>,
    /// Whether the lightweight model's top-1 is right.
    pub light_correct: Vec<bool>,
    /// Whether the specialist's top-1 is right.
    pub specialist_correct: Vec<bool>,
}

impl ExitOutcomes {
    /// The point of the curve at `threshold` for a model whose stages cost `light_madds`
    /// and `full_madds` per sample.
    ///
    /// ```
    /// use basis_models::early_exit::ExitOutcomes;
    /// let o = ExitOutcomes {
    ///     confidence: vec![0.95, 0.5, 0.99, 0.2],
    ///     light_correct: vec![true, false, false, false],
    ///     specialist_correct: vec![false, true, true, true],
    /// };
    /// let p = o.point(0.9, 10, 100);
    /// assert_eq!(p.exit_rate, 0.5);
    /// // Samples 0 and 2 exit (0 right, 2 wrong); 1 and 3 go on, both right.
    /// assert_eq!(p.top1, 0.75);
    /// assert_eq!(p.avg_madds, 55.0);
    /// ```
    pub fn point(&self, threshold: f64, light_madds: i64, full_madds: i64) -> ExitPoint {
        let n = self.confidence.len().max(1) as f64;
        let (mut exited, mut correct) = (0usize, 0usize);
        for (i, &c) in self.confidence.iter().enumerate() {
            let exit = exits(f64::from(c), threshold);
            exited += usize::from(exit);
            let ok = if exit {
                self.light_correct[i]
            } else {
                self.specialist_correct[i]
            };
            correct += usize::from(ok);
        }
        let exit_rate = exited as f64 / n;
        ExitPoint {
            threshold,
            exit_rate,
            top1: correct as f64 / n,
            avg_madds: average_madds(light_madds, full_madds, exit_rate),
        }
    }
}
