//! The [`Dataset`] trait and the in-memory datasets (Fashion-MNIST, CIFAR).

use super::error::DataError;
use super::idx;
use ndarray::Array3;
use std::path::{Path, PathBuf};

/// One decoded sample: an image `[height, width, channels]` of bytes, and its class.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Pixels, height x width x channels (1 gray, 3 RGB).
    pub image: Array3<u8>,
    /// Class index.
    pub label: i64,
}

/// A labelled image dataset, read sample by sample (from memory or from disk).
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names, by index.
    fn classes(&self) -> &[String];
    /// Channels of every image (1 or 3).
    fn channels(&self) -> usize;
    /// Sample `index`, or an error naming it (a corrupt file, a label out of range...).
    fn get(&self, index: usize) -> Result<Sample, DataError>;
    /// How errors and reports name sample `index` (a path, or dataset and index).
    fn describe(&self, index: usize) -> String;
}

/// The splits of a dataset: its training files make the training and validation splits
/// (the validation images held out of training by [`crate::data::DataSection::open`]),
/// its test files the test split, which only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training images (the training files less the validation images).
    Train,
    /// Validation images: held out of the training files, never trained on; every choice
    /// (best checkpoint, early-exit threshold, calibration) is made on them.
    Val,
    /// Test images (the official test or `val` files): reported, never chosen on.
    Test,
}

impl Split {
    /// `train`, `val` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// The files a split comes from: the training files for [`Split::Val`].
    pub fn files(self) -> Split {
        match self {
            Split::Val => Split::Train,
            s => s,
        }
    }
}

/// Images and labels held in memory, all of one size.
#[derive(Debug)]
struct InMemory {
    name: String,
    pixels: Vec<u8>,
    shape: [usize; 3],
    labels: Vec<u8>,
    /// Samples the files announce.
    declared: usize,
    /// Samples the files announce but do not hold whole, with the reason.
    unreadable: std::collections::BTreeMap<usize, String>,
    /// Samples from this index on are missing from the files (a short read), and why.
    missing_from: Option<(usize, String)>,
    classes: Vec<String>,
}

impl InMemory {
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        if index >= self.declared {
            return Err(DataError::sample(
                self.describe(index),
                format!(
                    "index out of range (the dataset has {} samples)",
                    self.declared
                ),
            ));
        }
        if let Some(problem) = self.unreadable.get(&index) {
            return Err(DataError::sample(self.describe(index), problem.clone()));
        }
        if let Some((from, problem)) = &self.missing_from {
            if index >= *from {
                return Err(DataError::sample(self.describe(index), problem.clone()));
            }
        }
        let label = self.labels[index];
        if usize::from(label) >= self.classes.len() {
            return Err(DataError::sample(
                self.describe(index),
                format!("label {label} out of range (0..{})", self.classes.len()),
            ));
        }
        let n: usize = self.shape.iter().product();
        let image =
            Array3::from_shape_vec(self.shape, self.pixels[index * n..(index + 1) * n].to_vec())
                .expect("the slice has the shape's length");
        Ok(Sample {
            image,
            label: i64::from(label),
        })
    }

    fn describe(&self, index: usize) -> String {
        format!("{} #{index}", self.name)
    }
}

/// `Dataset` for a wrapper of [`InMemory`].
macro_rules! in_memory_dataset {
    ($name:ident) => {
        impl Dataset for $name {
            fn len(&self) -> usize {
                self.0.declared
            }
            fn classes(&self) -> &[String] {
                &self.0.classes
            }
            fn channels(&self) -> usize {
                self.0.shape[2]
            }
            fn get(&self, index: usize) -> Result<Sample, DataError> {
                self.0.get(index)
            }
            fn describe(&self, index: usize) -> String {
                self.0.describe(index)
            }
        }
    };
}

/// Fashion-MNIST (Xiao et al., 2017): 28x28 grayscale, 10 classes, 60,000 training and
/// 10,000 test images, read from the four idx files (gzip or not).
///
/// ```no_run
/// use basis_train::data::{Dataset, FashionMnist, Split};
/// let train = FashionMnist::open("~/.cache/basisnet/data/fashion-mnist".as_ref(), Split::Train)?;
/// assert_eq!((train.len(), train.classes().len()), (60_000, 10));
/// # Ok::<(), basis_train::data::DataError>(())
/// ```
#[derive(Debug)]
pub struct FashionMnist(InMemory);

/// Fashion-MNIST's classes.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

impl FashionMnist {
    /// Open a split from `dir` (`train-images-idx3-ubyte[.gz]`, `t10k-...`).
    pub fn open(dir: &Path, split: Split) -> Result<Self, DataError> {
        let split = split.files();
        let prefix = match split {
            Split::Test => "t10k",
            _ => "train",
        };
        let find = |stem: &str| -> Result<PathBuf, DataError> {
            let plain = dir.join(stem);
            let gz = dir.join(format!("{stem}.gz"));
            [gz, plain.clone()]
                .into_iter()
                .find(|p| p.exists())
                .ok_or_else(|| DataError::Empty {
                    path: dir.to_path_buf(),
                    problem: format!(
                        "no {stem}[.gz]; run `cargo xtask data fashion-mnist` or pass the folder holding the idx files"
                    ),
                })
        };
        let images_path = find(&format!("{prefix}-images-idx3-ubyte"))?;
        let labels_path = find(&format!("{prefix}-labels-idx1-ubyte"))?;
        let images = idx::read(&images_path, 3)?;
        let labels = idx::read(&labels_path, 1)?;
        if images.declared() != labels.declared() {
            return Err(DataError::format(
                &labels_path,
                format!(
                    "announces {} labels, {} announces {} images",
                    labels.declared(),
                    images_path.display(),
                    images.declared()
                ),
            ));
        }
        let (h, w) = (images.dims[1], images.dims[2]);
        let declared = images.declared();
        let available = images.available().min(labels.available());
        let problem = format!(
            "short read: the files hold {available} of the {declared} samples their headers announce"
        );
        // A download cut short keeps most of its samples (the rest are counted as bad);
        // a header announcing far more than the files hold is a broken file.
        if available.saturating_mul(2) < declared {
            return Err(DataError::format(
                &images_path,
                format!(
                    "the header announces {declared} images of {h}x{w}, the files hold {available}: \
                     not a complete Fashion-MNIST file (prepare it again with `cargo xtask data`)"
                ),
            ));
        }
        Ok(Self(InMemory {
            name: format!("fashion-mnist {}", split.name()),
            shape: [h, w, 1],
            pixels: images.data,
            labels: labels.data,
            declared,
            unreadable: Default::default(),
            missing_from: (available < declared).then_some((available, problem)),
            classes: FASHION_MNIST_CLASSES
                .iter()
                .map(|c| c.to_string())
                .collect(),
        }))
    }
}

in_memory_dataset!(FashionMnist);

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarVariant {
    /// 10 classes: `data_batch_1..5.bin`, `test_batch.bin` (cifar-10-batches-bin).
    Cifar10,
    /// 100 fine classes: `train.bin`, `test.bin` (cifar-100-binary), one coarse and one
    /// fine label byte per record.
    Cifar100,
}

/// CIFAR-10 or CIFAR-100 (Krizhevsky, 2009) in the binary format: records of label
/// byte(s) and 3072 bytes of 32x32 RGB, channel-major. The project cannot download them;
/// point [`Cifar::open`] at the folder you have.
#[derive(Debug)]
pub struct Cifar(InMemory);

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

impl Cifar {
    /// Open a split of CIFAR from `dir`.
    pub fn open(dir: &Path, variant: CifarVariant, split: Split) -> Result<Self, DataError> {
        let split = split.files();
        let (files, label_bytes, classes): (Vec<String>, usize, Vec<String>) =
            match (variant, split) {
                (CifarVariant::Cifar10, Split::Train | Split::Val) => (
                    (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
                    1,
                    CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
                ),
                (CifarVariant::Cifar10, Split::Test) => (
                    vec!["test_batch.bin".into()],
                    1,
                    CIFAR10_CLASSES.iter().map(|c| c.to_string()).collect(),
                ),
                (CifarVariant::Cifar100, s) => (
                    vec![format!("{}.bin", s.name())],
                    2,
                    (0..100).map(|i| format!("class_{i:02}")).collect(),
                ),
            };
        let record = label_bytes + 3072;
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        let mut unreadable = std::collections::BTreeMap::new();
        for file in &files {
            let path = dir.join(file);
            let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
            for rec in bytes.chunks(record) {
                if rec.len() < record {
                    // A cut record: a placeholder, marked unreadable.
                    unreadable.insert(
                        labels.len(),
                        format!(
                            "short read: {} ends {} bytes into a {record}-byte record",
                            path.display(),
                            rec.len()
                        ),
                    );
                    labels.push(0);
                    pixels.resize(pixels.len() + 3072, 0);
                    continue;
                }
                labels.push(rec[label_bytes - 1]);
                // Channel-major (3 x 32 x 32) to height x width x channel.
                let chw = &rec[label_bytes..];
                for p in 0..1024 {
                    pixels.extend_from_slice(&[chw[p], chw[1024 + p], chw[2048 + p]]);
                }
            }
        }
        let declared = labels.len();
        if declared == 0 {
            return Err(DataError::Empty {
                path: dir.to_path_buf(),
                problem: format!("no CIFAR records in {}", files.join(", ")),
            });
        }
        let name = match variant {
            CifarVariant::Cifar10 => "cifar-10",
            CifarVariant::Cifar100 => "cifar-100",
        };
        Ok(Self(InMemory {
            name: format!("{name} {}", split.name()),
            shape: [32, 32, 3],
            pixels,
            labels,
            declared,
            unreadable,
            missing_from: None,
            classes,
        }))
    }
}

in_memory_dataset!(Cifar);

/// A dataset read `times` times over (sample `i` is sample `i % len` of the inner one):
/// small sets filling an epoch for benchmarks.
pub struct Repeat {
    inner: std::sync::Arc<dyn Dataset>,
    times: usize,
}

impl Repeat {
    /// `inner`, `times` times over.
    pub fn new(inner: std::sync::Arc<dyn Dataset>, times: usize) -> Self {
        Self { inner, times }
    }
}

impl Dataset for Repeat {
    fn len(&self) -> usize {
        self.inner.len() * self.times
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn get(&self, index: usize) -> Result<Sample, DataError> {
        self.inner.get(index % self.inner.len().max(1))
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index % self.inner.len().max(1))
    }
}
