//! [`Loader`]: decode and augment on worker threads, with a bounded prefetch queue.
//!
//! Determinism: the order of an epoch is a permutation drawn from `(seed, epoch)`, and
//! every sample's augmentation from `(seed, epoch, position)`, every batch's mixing from
//! `(seed, epoch, batch)`. So a batch is the same whichever worker makes it: the result
//! depends on the seed, not on the number of workers or on timing. Batch `b` is made by
//! worker `b % workers`, which keeps at most `prefetch` batches ready ahead of the loop.

use super::augment::{normalize_into, transform, AugmentConfig};
use super::batch::{HostBatch, MixConfig};
use super::dataset::Dataset;
use super::error::DataError;
use ndarray::{Array1, Array4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How batches are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Worker threads decoding and augmenting.
    pub workers: usize,
    /// Batches each worker may hold ready.
    pub prefetch: usize,
    /// Shuffle every epoch.
    pub shuffle: bool,
    /// Drop the last, incomplete batch.
    pub drop_last: bool,
    /// Seed of order, augmentation and mixing.
    pub seed: u64,
    /// Turn the first bad sample into an error (default: skip it, count it, report it).
    pub strict: bool,
    /// The fraction of an epoch's samples that may be bad (skipped); more, or no good
    /// sample at all, ends the epoch with [`DataError::TooManyBad`] (default 1: any
    /// number, as long as one sample is good).
    pub max_bad_fraction: f64,
    /// This process's part of every batch, in data-parallel training: batch `b` is made of
    /// the same samples, with the same augmentation, as in a single process, and shard `i`
    /// of `n` takes its `i`-th contiguous `batch_size / n` of them (default: 0 of 1).
    pub shard: Shard,
}

/// Part `index` of `count` of every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// Which part, in `0..count`.
    pub index: usize,
    /// Number of parts.
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            workers: 2,
            prefetch: 2,
            shuffle: true,
            drop_last: false,
            seed: 0,
            strict: false,
            max_bad_fraction: 1.0,
            shard: Shard::default(),
        }
    }
}

/// What an epoch met: samples delivered, bad samples skipped, the first few of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EpochReport {
    /// Samples delivered in batches.
    pub samples: usize,
    /// Bad samples skipped.
    pub skipped: usize,
    /// The first bad samples (up to 10), each `sample: problem`.
    pub first_bad: Vec<String>,
}

impl EpochReport {
    /// The error when more than `max_fraction` of the samples were bad, or all of them.
    ///
    /// ```
    /// use basis_train::data::EpochReport;
    /// let report = EpochReport { samples: 98, skipped: 2, first_bad: vec!["a.jpg: not an image".into()] };
    /// assert!(report.too_many_bad(0.05).is_none());
    /// let err = report.too_many_bad(0.01).unwrap().to_string();
    /// assert!(err.starts_with("2 of 100 samples (2.0%) were bad, more than data.max_bad_fraction = 1.0% allows"), "{err}");
    /// let none_good = EpochReport { samples: 0, skipped: 3, first_bad: vec![] };
    /// assert!(none_good.too_many_bad(1.0).unwrap().to_string().starts_with("every one of the 3 samples was bad"));
    /// ```
    pub fn too_many_bad(&self, max_fraction: f64) -> Option<DataError> {
        let total = self.samples + self.skipped;
        if self.skipped == 0 {
            return None;
        }
        let fraction = self.skipped as f64 / total as f64;
        let first = self.first_bad.join("; ");
        if self.samples == 0 {
            return Some(DataError::TooManyBad(format!(
                "every one of the {total} samples was bad (first: {first}); nothing was trained or evaluated"
            )));
        }
        (fraction > max_fraction).then(|| {
            DataError::TooManyBad(format!(
                "{} of {total} samples ({:.1}%) were bad, more than data.max_bad_fraction = {:.1}% allows (first: {first}); fix or remove them, or raise data.max_bad_fraction",
                self.skipped,
                100.0 * fraction,
                100.0 * max_fraction
            ))
        })
    }

    /// One paragraph for the log when something was skipped.
    pub fn summary(&self) -> Option<String> {
        (self.skipped > 0).then(|| {
            format!(
                "skipped {} bad sample(s) of {}; first: {}",
                self.skipped,
                self.samples + self.skipped,
                self.first_bad.join("; ")
            )
        })
    }
}

const REPORTED: usize = 10;

/// Makes the batches of a dataset, epoch after epoch.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    augment: Arc<AugmentConfig>,
    mix: Option<Arc<MixConfig>>,
    train: bool,
    config: LoaderConfig,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.dataset.len())
            .field("augment", &self.augment)
            .field("train", &self.train)
            .field("config", &self.config)
            .finish()
    }
}

/// Mix three numbers into one seed (splitmix64 steps).
fn seed_of(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a ^ b.rotate_left(21) ^ c.rotate_left(42) ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..2 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

impl Loader {
    /// A loader of `dataset` with training (`train`) or evaluation transforms.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        augment: AugmentConfig,
        train: bool,
        config: LoaderConfig,
    ) -> Result<Self, DataError> {
        augment.validate(dataset.channels())?;
        if config.batch_size == 0 || config.workers == 0 || config.prefetch == 0 {
            return Err(DataError::Config(format!(
                "batch_size, workers and prefetch must be >= 1, found {}, {} and {}",
                config.batch_size, config.workers, config.prefetch
            )));
        }
        let Shard { index, count } = config.shard;
        if count == 0 || index >= count || config.batch_size % count != 0 {
            return Err(DataError::Config(format!(
                "shard {index} of {count} cannot split batches of {}: expected 0 <= shard < \
                 shards and a batch size divisible by the number of shards",
                config.batch_size
            )));
        }
        if dataset.is_empty() {
            return Err(DataError::Config("the dataset has no samples".into()));
        }
        Ok(Self {
            dataset,
            augment: Arc::new(augment),
            mix: None,
            train,
            config,
        })
    }

    /// Mix training batches (mixup / cutmix).
    pub fn with_mix(mut self, mix: MixConfig) -> Result<Self, DataError> {
        mix.validate()?;
        self.mix = Some(Arc::new(mix));
        Ok(self)
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The batches of epoch `epoch`, made ahead by the workers.
    pub fn epoch(&self, epoch: u64) -> Epoch {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.config.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed_of(
                self.config.seed,
                epoch,
                u64::MAX,
            )));
        }
        let order = Arc::new(order);
        let total = self.num_batches();
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(EpochReport::default()));
        let workers = self.config.workers.min(total.max(1));
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (tx, rx) = sync_channel(self.config.prefetch);
            receivers.push(rx);
            let this = self.clone();
            let (order, stop, report) = (order.clone(), stop.clone(), report.clone());
            handles.push(std::thread::spawn(move || {
                for b in (worker..total).step_by(workers) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let batch = this.make_batch(epoch, b, &order, &report);
                    if tx.send(batch).is_err() {
                        break;
                    }
                }
            }));
        }
        Epoch {
            receivers,
            handles,
            stop,
            report,
            next: 0,
            total,
            failed: false,
            max_bad_fraction: self.config.max_bad_fraction,
        }
    }

    fn make_batch(
        &self,
        epoch: u64,
        b: usize,
        order: &[usize],
        report: &Mutex<EpochReport>,
    ) -> Result<HostBatch, DataError> {
        let bs = self.config.batch_size;
        let batch = b * bs..((b + 1) * bs).min(order.len());
        let Shard { index, count } = self.config.shard;
        let part = batch.len().div_ceil(count);
        let positions = (batch.start + index * part).min(batch.end)
            ..(batch.start + (index + 1) * part).min(batch.end);
        let c = self.dataset.channels();
        let r = self.augment.resolution as usize;
        let light_r = self.augment.light_resolution.map(|l| l as usize);
        let mut images = Vec::with_capacity(positions.len() * c * r * r);
        let mut light = Vec::new();
        let mut labels = Vec::with_capacity(positions.len());
        let mut indices = Vec::with_capacity(positions.len());
        let classes = self.dataset.classes().len();
        for p in positions {
            let index = order[p];
            let mut rng = ChaCha8Rng::seed_from_u64(seed_of(self.config.seed, epoch, p as u64));
            let made = self.dataset.get(index).and_then(|sample| {
                if sample.label < 0 || sample.label as usize >= classes {
                    return Err(DataError::sample(
                        self.dataset.describe(index),
                        format!("label {} out of range (0..{classes})", sample.label),
                    ));
                }
                if sample.image.dim().2 != c {
                    return Err(DataError::sample(
                        self.dataset.describe(index),
                        format!("{} channels, expected {c}", sample.image.dim().2),
                    ));
                }
                let (full, low) = transform(&self.augment, &sample.image, self.train, &mut rng)?;
                Ok((full, low, sample.label))
            });
            match made {
                Ok((full, low, label)) => {
                    let start = images.len();
                    images.resize(start + c * r * r, 0.0);
                    normalize_into(
                        &full,
                        &self.augment.mean,
                        &self.augment.std,
                        &mut images[start..],
                    );
                    if let (Some(low), Some(lr)) = (low, light_r) {
                        let start = light.len();
                        light.resize(start + c * lr * lr, 0.0);
                        normalize_into(
                            &low,
                            &self.augment.mean,
                            &self.augment.std,
                            &mut light[start..],
                        );
                    }
                    labels.push(label);
                    indices.push(index);
                }
                Err(e) if self.config.strict => return Err(e),
                Err(e) => {
                    let mut report = report.lock().unwrap_or_else(|p| p.into_inner());
                    report.skipped += 1;
                    if report.first_bad.len() < REPORTED {
                        report.first_bad.push(e.to_string());
                    }
                }
            }
        }
        let n = labels.len();
        let shape4 = |side: usize, data: Vec<f32>| {
            Array4::from_shape_vec((n, c, side, side), data).expect("sizes add up")
        };
        let mut batch = HostBatch {
            images: shape4(r, images),
            light_images: light_r.map(|lr| shape4(lr, light)),
            labels: Array1::from(labels),
            targets: None,
            indices,
        };
        if let (Some(mix), true) = (&self.mix, self.train) {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed_of(self.config.seed, epoch, (1 << 48) + b as u64));
            mix.apply(&mut batch, classes, &mut rng);
        }
        report.lock().unwrap_or_else(|p| p.into_inner()).samples += n;
        Ok(batch)
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct Epoch {
    receivers: Vec<Receiver<Result<HostBatch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<EpochReport>>,
    next: usize,
    total: usize,
    failed: bool,
    max_bad_fraction: f64,
}

impl Epoch {
    /// Batches of this epoch.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether the epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// What the epoch met so far (complete once the iterator is exhausted).
    pub fn report(&self) -> EpochReport {
        self.report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Iterator for Epoch {
    type Item = Result<HostBatch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.total && !self.failed {
            let worker = self.next % self.receivers.len();
            self.next += 1;
            match self.receivers[worker].recv() {
                Ok(Ok(batch)) if batch.is_empty() => continue,
                Ok(Ok(batch)) => return Some(Ok(batch)),
                Ok(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                Err(_) => {
                    self.failed = true;
                    return Some(Err(DataError::Config(
                        "a data worker stopped unexpectedly".into(),
                    )));
                }
            }
        }
        if !self.failed {
            // Once, at the end: the epoch's bad samples against the limit.
            self.failed = true;
            if let Some(err) = self.report().too_many_bad(self.max_bad_fraction) {
                return Some(Err(err));
            }
        }
        None
    }
}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblock workers waiting to send, then wait for them.
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}
