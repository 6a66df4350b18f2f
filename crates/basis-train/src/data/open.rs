//! Dataset wiring: which dataset a recipe names ([`DataSection`]), where its files are,
//! and opening one split of it, limited to its first samples when the recipe says so.

use super::{
    AugmentConfig, Cifar, CifarVariant, DataError, Dataset, FashionMnist, ImageFolder, MixConfig,
    Sample, Split,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// Which dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Fashion-MNIST idx files (`cargo xtask data fashion-mnist`).
    FashionMnist,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary files.
    Cifar100,
    /// `<dir>/train/<class>/*` and `<dir>/val/<class>/*`.
    Folder,
}

/// The data and its transforms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// The dataset.
    pub dataset: DatasetKind,
    /// Its folder (default: the data folder of `cargo xtask data`).
    pub dir: Option<PathBuf>,
    /// Train on the first `limit` samples only (quick runs, tests).
    pub limit: Option<usize>,
    /// Evaluate on the first `eval_limit` validation and test samples only.
    pub eval_limit: Option<usize>,
    /// Images held out of the training files as the validation split, drawn once with a
    /// fixed seed (the same images for every run and recipe), never trained on.
    pub validation: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Stop at the first bad sample instead of skipping it.
    pub strict: bool,
    /// Skip bad samples up to this fraction of an epoch or an evaluation (0.01: 1%); more,
    /// or every sample bad, stops the command with the count and the first few.
    pub max_bad_fraction: f64,
    /// Training transforms (`resolution` and `light_resolution` come from the model).
    pub augment: AugmentConfig,
    /// Mixup / cutmix, if any.
    pub mix: Option<MixConfig>,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::FashionMnist,
            dir: None,
            limit: None,
            eval_limit: None,
            validation: 5000,
            workers: 2,
            strict: false,
            max_bad_fraction: 0.01,
            augment: AugmentConfig::default(),
            mix: None,
        }
    }
}

/// The default data folder (`BASISNET_DATA_DIR`, else the user cache), where
/// `cargo xtask data` prepares the datasets.
pub fn default_data_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("BASISNET_DATA_DIR") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    cache.join("basisnet/data")
}

impl DataSection {
    /// The dataset's folder: `dir`, else its folder under [`default_data_root`].
    pub fn folder(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| {
            let root = default_data_root();
            match self.dataset {
                DatasetKind::FashionMnist => root.join("fashion-mnist"),
                DatasetKind::Cifar10 => root.join("cifar-10-batches-bin"),
                DatasetKind::Cifar100 => root.join("cifar-100-binary"),
                DatasetKind::Folder => root.join("imagenet"),
            }
        })
    }

    /// Open `split` for a model that takes `channels`-channel images: the training files
    /// less the `validation` held-out images (limited to `limit`), those held-out images
    /// ([`Split::Val`]), or the test files (both limited to `eval_limit`).
    pub fn open(&self, split: Split, channels: usize) -> Result<Arc<dyn Dataset>, DataError> {
        let dir = self.folder();
        let ds: Arc<dyn Dataset> = match self.dataset {
            DatasetKind::FashionMnist => Arc::new(FashionMnist::open(&dir, split)?),
            DatasetKind::Cifar10 => Arc::new(Cifar::open(&dir, CifarVariant::Cifar10, split)?),
            DatasetKind::Cifar100 => Arc::new(Cifar::open(&dir, CifarVariant::Cifar100, split)?),
            DatasetKind::Folder => Arc::new(ImageFolder::open(
                &dir.join(match split.files() {
                    Split::Test => "val",
                    _ => "train",
                }),
                channels,
            )?),
        };
        if ds.channels() != channels {
            return Err(DataError::Config(format!(
                "the model takes {channels}-channel images, the dataset has {}",
                ds.channels()
            )));
        }
        let (mut indices, limit) = match split {
            Split::Test => ((0..ds.len()).collect(), self.eval_limit),
            s => {
                let (train, val) = holdout(ds.len(), self.validation).ok_or_else(|| {
                    DataError::Config(format!(
                        "data.validation = {} leaves no training images: the training files hold {}",
                        self.validation,
                        ds.len()
                    ))
                })?;
                match s {
                    Split::Val => (val, self.eval_limit),
                    _ => (train, self.limit),
                }
            }
        };
        if let Some(n) = limit {
            indices.truncate(n);
        }
        Ok(Arc::new(Subset { inner: ds, indices }))
    }
}

/// The seed the validation images are drawn with: fixed, so that every run of every recipe
/// holds out the same images.
pub const VALIDATION_SEED: u64 = 0x7a11_da7e;

/// The training and validation indices of `len` training images, `validation` of them held
/// out (drawn with [`VALIDATION_SEED`]); both in file order. `None` when nothing is left to
/// train on.
///
/// ```
/// let (train, val) = basis_train::data::holdout(10, 3).unwrap();
/// assert_eq!((train.len(), val.len()), (7, 3));
/// assert!(val.iter().all(|i| !train.contains(i)));
/// assert_eq!(basis_train::data::holdout(10, 3).unwrap().1, val, "the same images every time");
/// assert!(basis_train::data::holdout(3, 3).is_none());
/// ```
pub fn holdout(len: usize, validation: usize) -> Option<(Vec<usize>, Vec<usize>)> {
    if validation >= len && len > 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(VALIDATION_SEED));
    let mut val = order[..validation.min(len)].to_vec();
    let mut train = order[validation.min(len)..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    Some((train, val))
}

/// The samples of a dataset at `indices`.
struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.inner.get(self.indices[index])
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(self.indices[index])
    }
}
