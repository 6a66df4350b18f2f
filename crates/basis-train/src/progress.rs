//! How a run reports progress: an [`Observer`] receives each step and each finished epoch;
//! the library never prints. The `basisnet` command renders them as a bar or as lines.

use crate::evaluation::Evaluation;
use std::fmt;

/// Receives a run's progress. In a data-parallel run, steps and epochs reach rank 0's
/// observer only; every rank reports the bad samples of its own part of the data.
pub trait Observer {
    /// After each optimizer step.
    fn step(&mut self, _progress: &StepProgress) {}
    /// After each epoch's evaluation and checkpoint.
    fn epoch(&mut self, _result: &EpochResult) {}
    /// The input pipeline's account of an epoch, when it skipped bad samples (prefixed
    /// with the rank in a data-parallel run).
    fn data(&mut self, _epoch: usize, _summary: &str) {}
}

/// An observer that ignores everything (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Observer for Silent {}

/// Where a run is within an epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct StepProgress {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Epochs of the recipe.
    pub epochs: usize,
    /// Steps done in this epoch (1-based).
    pub step: usize,
    /// Steps in an epoch.
    pub steps: usize,
    /// Images trained on in this epoch, over all processes.
    pub images: usize,
    /// Seconds since the epoch started.
    pub seconds: f64,
    /// Mean training loss of the epoch so far.
    pub loss: f64,
    /// The learning rate of the step.
    pub lr: f64,
}

impl StepProgress {
    /// Images per second in this epoch.
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }

    /// Seconds left in this epoch at the current pace.
    pub fn eta_seconds(&self) -> f64 {
        self.steps.saturating_sub(self.step) as f64 * self.seconds / self.step.max(1) as f64
    }
}

impl fmt::Display for StepProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "epoch {}/{} [{}/{}] loss {:.4} lr {:.2e} {:.0} images/s eta {:.0}s",
            self.epoch,
            self.epochs,
            self.step,
            self.steps,
            self.loss,
            self.lr,
            self.images_per_second(),
            self.eta_seconds()
        )
    }
}

/// A finished epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochResult {
    /// Epoch (1-based).
    pub epoch: usize,
    /// Epochs of the recipe.
    pub epochs: usize,
    /// Mean training loss over the epoch (all processes).
    pub train_loss: f64,
    /// Images trained on (all processes).
    pub images: usize,
    /// Seconds of training (evaluation excluded).
    pub seconds: f64,
    /// The evaluation after the epoch.
    pub evaluation: Evaluation,
    /// Processes of a data-parallel run (1 otherwise).
    pub processes: usize,
    /// Seconds rank 0 spent averaging gradients (0 for a single process).
    pub averaging_seconds: f64,
    /// Steps skipped because fp16 gradients overflowed (0 in fp32 and bf16).
    pub skipped_steps: u64,
}

impl fmt::Display for EpochResult {
    /// ```
    /// use basis_train::progress::EpochResult;
    /// let r = EpochResult {
    ///     epoch: 1,
    ///     epochs: 4,
    ///     train_loss: 0.5,
    ///     images: 300,
    ///     seconds: 2.0,
    ///     evaluation: basis_train::Evaluation { specialist_top1: 0.9, ..Default::default() },
    ///     processes: 1,
    ///     averaging_seconds: 0.0,
    ///     skipped_steps: 0,
    /// };
    /// assert_eq!(r.to_string(), "epoch 1/4: loss 0.5000, specialist top-1 90.00%, 150 images/s");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "epoch {}/{}: loss {:.4}, ",
            self.epoch, self.epochs, self.train_loss
        )?;
        if let Some(l) = self.evaluation.light_top1 {
            write!(f, "light top-1 {:.2}%, ", 100.0 * l)?;
        }
        write!(
            f,
            "specialist top-1 {:.2}%, {:.0} images/s",
            100.0 * self.evaluation.specialist_top1,
            self.images as f64 / self.seconds.max(1e-9)
        )?;
        if self.processes > 1 {
            write!(
                f,
                " over {} processes ({:.0}% of rank 0's time averaging gradients)",
                self.processes,
                100.0 * self.averaging_seconds / self.seconds.max(1e-9)
            )?;
        }
        if self.skipped_steps > 0 {
            write!(
                f,
                ", {} step(s) skipped (fp16 gradients overflowed; the loss scale backed off)",
                self.skipped_steps
            )?;
        }
        Ok(())
    }
}
