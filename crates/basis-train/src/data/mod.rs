//! Datasets and the input pipeline.
//!
//! - [`FashionMnist`] (the default, shipped by Debian), [`Cifar`] (CIFAR-10/100 binary
//!   files you have), [`ImageFolder`] (the ImageNet layout, JPEG and PNG, streamed).
//! - [`AugmentConfig`]: random resized crop, flip, RandAugment, random erasing, resize and
//!   center crop for evaluation, normalization; a second, low-resolution copy of the same
//!   crop for the lightweight model.
//! - [`Loader`]: worker threads and a bounded prefetch queue, deterministic for a seed;
//!   [`MixConfig`]: mixup and cutmix per batch.
//! - Bad samples are skipped, counted and reported ([`EpochReport`]), or, with
//!   `strict`, the first one is an error naming it.

mod augment;
mod batch;
mod dataset;
mod error;
mod folder;
pub mod idx;
mod loader;
mod open;
pub mod randaugment;

pub use augment::{
    center_crop_box, normalize_into, random_resized_crop_box, resize_box, transform, AugmentConfig,
    IMAGENET_MEAN, IMAGENET_STD,
};
pub use batch::{Batch, HostBatch, MixConfig};
pub use dataset::{
    Cifar, CifarVariant, Dataset, FashionMnist, Repeat, Sample, Split, FASHION_MNIST_CLASSES,
};
pub use error::DataError;
pub use folder::{decode, ImageFolder, IMAGE_EXTENSIONS};
pub use loader::{Epoch, EpochReport, Loader, LoaderConfig, Shard};
pub use open::{default_data_root, holdout, DataSection, DatasetKind, VALIDATION_SEED};
