//! [`Teacher`]: the model a student distils from, one of our runs or a TorchScript module.

use crate::data::Batch;
use crate::error::TrainError;
use crate::run_dir::{Checkpoint, LoadedRun, RunDir};
use std::path::Path;
use tch::{Device, Tensor};

/// A distillation teacher: one of our runs, or a TorchScript module.
pub enum Teacher {
    /// A run of ours (its `best` weights), built from its own recipe.
    Run(Box<LoadedRun>),
    /// A TorchScript module: `forward(images) -> logits`.
    Script(tch::CModule),
}

impl Teacher {
    /// Load a run directory (its `best` weights) or a TorchScript file onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, TrainError> {
        if path.is_dir() {
            Ok(Teacher::Run(Box::new(
                RunDir::new(path).load(Checkpoint::Best, device)?,
            )))
        } else {
            let mut module = tch::CModule::load_on_device(path, device).map_err(|e| {
                TrainError::Run(format!(
                    "{}: not a run directory nor a TorchScript module ({e})",
                    path.display()
                ))
            })?;
            module.set_eval();
            Ok(Teacher::Script(module))
        }
    }

    /// The teacher's logits for a batch (no gradient).
    pub fn logits(&self, batch: &Batch) -> Result<Tensor, TrainError> {
        tch::no_grad(|| match self {
            Teacher::Run(run) => Ok(run.model.forward_t(batch, false)?.specialist_logits),
            Teacher::Script(module) => Ok(module.forward_ts(&[&batch.images])?),
        })
    }
}
