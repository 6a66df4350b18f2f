//! Dataset wiring: which dataset a recipe names ([`DataSection`]), where its files are,
//! and opening one split of it, limited to its first samples when the recipe says so.

use super::{
    AugmentConfig, Cifar, CifarVariant, DataError, Dataset, FashionMnist, ImageFolder, MixConfig,
    Sample, Split,
};
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
    /// Evaluate on the first `eval_limit` test samples only.
    pub eval_limit: Option<usize>,
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

    /// Open `split` for a model that takes `channels`-channel images: the training split
    /// limited to `limit` samples, the test split to `eval_limit`.
    pub fn open(&self, split: Split, channels: usize) -> Result<Arc<dyn Dataset>, DataError> {
        let dir = self.folder();
        let ds: Arc<dyn Dataset> = match self.dataset {
            DatasetKind::FashionMnist => Arc::new(FashionMnist::open(&dir, split)?),
            DatasetKind::Cifar10 => Arc::new(Cifar::open(&dir, CifarVariant::Cifar10, split)?),
            DatasetKind::Cifar100 => Arc::new(Cifar::open(&dir, CifarVariant::Cifar100, split)?),
            DatasetKind::Folder => Arc::new(ImageFolder::open(
                &dir.join(match split {
                    Split::Train => "train",
                    Split::Test => "val",
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
        let limit = match split {
            Split::Train => self.limit,
            Split::Test => self.eval_limit,
        };
        Ok(match limit {
            Some(n) => Arc::new(Subset { inner: ds, n }),
            None => ds,
        })
    }
}

/// The first `n` samples of a dataset.
struct Subset {
    inner: Arc<dyn Dataset>,
    n: usize,
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.n.min(self.inner.len())
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.inner.get(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}
