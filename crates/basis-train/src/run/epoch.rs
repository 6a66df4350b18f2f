//! One epoch of a [`Run`]: batches in, one optimizer step each (forward under autocast,
//! backward, gradient averaging across processes, fp16 unscaling, EMA), totals out.

use super::Run;
use crate::data::{Batch, Epoch};
use crate::error::TrainError;
use crate::loss::joint_loss;
use crate::progress::StepProgress;
use crate::run_dir::TrainerState;
use crate::schedule::{learning_rate, Phase};
use basis_amp::autocast;
use std::time::Instant;
use tch::Tensor;

impl Run {
    /// One epoch of training, totalled over all processes.
    pub(super) fn train_epoch(&mut self) -> Result<EpochTotals, TrainError> {
        let epochs = self.recipe.train.epochs;
        let steps = self.train.num_batches().max(1);
        let main = self.is_main();
        let rank = self.parallel.as_ref().map_or(0, |p| p.rank());
        let world = self.parallel.as_ref().map_or(1, |p| p.world_size());
        let epoch = self.state.epoch;
        // Every random stream of an epoch derives from (seed, epoch): a run resumed at an
        // epoch boundary continues exactly as one that never stopped. Each rank draws its
        // own dropout and noise (rank 0's stream is a single process's).
        tch::manual_seed(
            (self.recipe.train.seed as i64).wrapping_mul(1_000_003)
                + epoch as i64
                + ((rank as i64) << 32),
        );
        let start = Instant::now();
        let skipped = |state: &TrainerState| state.loss_scaler.as_ref().map_or(0, |s| s.skipped());
        let skipped_before = skipped(&self.state);
        let (mut loss_sum, mut seen, mut averaging, mut lr) = (0.0, 0usize, 0.0, 0.0);
        let mut batches = self.train.epoch(epoch as u64);
        let device = self.device;
        // One batch in flight: batch i + 1 is copied (pinned, without blocking, on CUDA)
        // after step i is queued and before its loss is read.
        let fetch = |b: &mut Epoch| -> Result<Option<Batch>, TrainError> {
            b.next().map(|r| Ok(r?.to_tensors(device)?)).transpose()
        };
        let mut next = fetch(&mut batches)?;
        let mut i = 0;
        while let Some(batch) = next.take() {
            let progress = epoch as f64 + i as f64 / steps as f64;
            lr = learning_rate(
                &self.recipe.schedule,
                self.recipe.optim.lr,
                epochs,
                progress,
            );
            let phase = Phase::at(progress, epochs, self.recipe.train.static_fraction);
            let loss = self.loss(&batch, phase)?;
            let step_number = self.optimizer.steps() + 1;
            self.optimizer.zero_grad();
            if let Some(p) = &self.parallel {
                p.before_backward();
            }
            match &self.state.loss_scaler {
                Some(scaler) => scaler.scale_loss(&loss)?.f_backward()?,
                None => loss.f_backward()?,
            }
            if let Some(p) = &self.parallel {
                let t = Instant::now();
                p.average_gradients()?;
                averaging += t.elapsed().as_secs_f64();
            }
            // fp16: unscale the (averaged, so identical on every rank) gradients; a step
            // whose gradients overflowed is skipped everywhere.
            let step = match &mut self.state.loss_scaler {
                Some(scaler) => scaler.unscale(&self.optimizer.gradients())?,
                None => true,
            };
            if step {
                self.optimizer.step(lr);
                if let Some((_, _, ema)) = &self.ema {
                    ema.update(self.optimizer.steps());
                }
            }
            next = fetch(&mut batches)?;
            // The step's one read of the device: a non-finite loss ends the run (its
            // update is never checkpointed).
            let value = loss.f_double_value(&[])?;
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    loss: value,
                    step: step_number,
                    epoch: epoch + 1,
                });
            }
            i += 1;
            let n = batch.labels.size()[0] as usize;
            loss_sum += value * n as f64;
            seen += n;
            if main {
                self.observer.step(&StepProgress {
                    epoch: epoch + 1,
                    epochs,
                    step: i,
                    steps,
                    images: seen * world,
                    seconds: start.elapsed().as_secs_f64(),
                    loss: loss_sum / seen as f64,
                    lr,
                });
            }
        }
        // Every rank reads its own part of the data: each reports its bad samples.
        if let Some(summary) = batches.report().summary() {
            let summary = match world {
                1 => summary,
                _ => format!("rank {rank}: {summary}"),
            };
            self.observer.data(epoch + 1, &summary);
        }
        drop(batches);
        if let Some(p) = &self.parallel {
            // Every rank's loss and images; rank 0's running statistics everywhere.
            let total = p.sum(&[loss_sum, seen as f64])?;
            (loss_sum, seen) = (total[0], total[1] as usize);
            p.broadcast_buffers(&self.vs)?;
            if let Some((ema_vs, _, _)) = &self.ema {
                p.broadcast_buffers(ema_vs)?;
            }
        }
        self.state.epoch += 1;
        self.state.step = self.optimizer.steps();
        Ok(EpochTotals {
            loss: loss_sum / seen.max(1) as f64,
            images: seen,
            seconds: start.elapsed().as_secs_f64(),
            averaging,
            lr,
            skipped_steps: skipped(&self.state) - skipped_before,
        })
    }

    fn loss(&self, batch: &Batch, phase: Phase) -> Result<Tensor, TrainError> {
        // The forward pass (and the loss) under autocast; backward outside it, as PyTorch.
        let loss = || {
            autocast(self.device, self.recipe.train.precision, || {
                joint_loss(
                    &self.model,
                    batch,
                    &self.recipe.loss,
                    self.teacher.as_ref(),
                    phase,
                )
            })?
        };
        match &self.parallel {
            Some(p) => p.forward(loss),
            None => loss(),
        }
    }
}

/// What one epoch of training added up to, over all processes.
pub(super) struct EpochTotals {
    /// Mean training loss.
    pub(super) loss: f64,
    /// Images trained on.
    pub(super) images: usize,
    /// Seconds of training.
    pub(super) seconds: f64,
    /// Seconds rank 0 spent averaging gradients.
    pub(super) averaging: f64,
    /// The learning rate of the last step.
    pub(super) lr: f64,
    /// Steps skipped because fp16 gradients overflowed.
    pub(super) skipped_steps: u64,
}
