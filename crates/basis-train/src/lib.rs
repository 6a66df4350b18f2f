//! Training BasisNet models: datasets and the input pipeline ([`data`]), recipes
//! ([`recipe`]), optimizers and schedules ([`optim`]), the trainer ([`trainer`]).
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
pub mod distributed;
pub mod optim;
pub mod plot;
pub mod recipe;
pub mod trainer;

pub use recipe::{BatchNormMode, DistributedSection, Recipe, RecipeError};
pub use trainer::{
    distillation, evaluate, joint_loss, CoefficientStats, Evaluation, ExitPoint, Model, Phase, Run,
    RunSummary, Teacher, TrainError, TrainerState,
};
