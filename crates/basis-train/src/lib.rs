//! Training BasisNet models, one module a concept: datasets and the input pipeline
//! ([`data`]), recipes ([`recipe`]), devices ([`device`]), the model being trained
//! ([`model`]), the joint loss ([`loss`], [`teacher`]), optimizers ([`optim`]) and
//! schedules ([`schedule`]), evaluation ([`evaluation`], [`metrics`]), the loaders of a run
//! ([`loaders`]), the run directory ([`run_dir`]), progress reports ([`progress`]), data
//! parallelism ([`distributed`]) and the loop ([`run`]).
//!
//! ```no_run
//! use basis_train::data::{AugmentConfig, Dataset, FashionMnist, Loader, LoaderConfig, Split};
//! use std::sync::Arc;
//!
//! let dir = std::path::Path::new("data/fashion-mnist");
//! let train: Arc<dyn Dataset> = Arc::new(FashionMnist::open(dir, Split::Train)?);
//! let augment = AugmentConfig {
//!     resolution: 28,
//!     light_resolution: Some(20),
//!     crop_pct: 1.0,
//!     mean: vec![0.286],
//!     std: vec![0.353],
//!     ..Default::default()
//! };
//! let loader = Loader::new(train, augment, true, LoaderConfig::default())?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?.to_tensors(tch::Device::Cpu)?;
//!     assert_eq!(batch.images.size()[1..], [1, 28, 28]);
//! }
//! # Ok::<(), basis_train::data::DataError>(())
//! ```

pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod evaluation;
pub mod init;
pub mod loaders;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod plot;
pub mod progress;
pub mod recipe;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod teacher;

pub use basis_models::ExitPoint;
pub use device::DeviceChoice;
pub use error::TrainError;
pub use evaluation::{evaluate, Evaluation};
pub use loaders::{eval_loader, train_loader};
pub use loss::{distillation, joint_loss};
pub use metrics::CoefficientStats;
pub use model::{Cost, Model, ModelOutput};
pub use progress::{EpochResult, Observer, StepProgress};
pub use recipe::{BatchNormMode, DistributedSection, Recipe, RecipeError};
pub use run::{Run, RunSummary};
pub use run_dir::{Checkpoint, LoadedRun, Metrics, RunDir, TrainerState};
pub use schedule::Phase;
pub use teacher::Teacher;
