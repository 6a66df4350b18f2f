//! [`TrainError`]: everything that can stop a run, one variant for each layer it comes
//! from (recipe, data, model, libtorch, distributed) and for the run's own files.

use crate::data::DataError;
use crate::recipe::RecipeError;
use basis_models::ModelError;
use std::path::{Path, PathBuf};

/// What can stop a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The recipe.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// The data.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model or a checkpoint.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A device that cannot be had (CUDA asked for where there is none).
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
    /// Mixed precision.
    #[error(transparent)]
    Amp(#[from] basis_amp::AmpError),
    /// libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A loss that became NaN or infinite; the last good checkpoint is kept.
    #[error("the loss became {loss} at step {step} (epoch {epoch}); stopped, the last good checkpoint is kept")]
    NonFinite {
        /// The loss value.
        loss: f64,
        /// Global step.
        step: i64,
        /// Epoch (1-based).
        epoch: usize,
    },
    /// Data-parallel training: the launch, the rendezvous, or another rank failed.
    #[error(transparent)]
    Distributed(#[from] basis_dist::DistError),
    /// A run directory or checkpoint that cannot be used.
    #[error("{0}")]
    Run(String),
    /// Reading or writing run files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl TrainError {
    /// A closure that names `path` in an OS error.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
        move |source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
