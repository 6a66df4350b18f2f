//! The trainer: joint two-stage loss, checkpoints, resume, metrics, early-exit evaluation.
//!
//! A run directory holds `recipe.toml` (the effective recipe), `summary.csv` (one row an
//! epoch), `metrics.json` (the final evaluation), and checkpoints: `last.*` and `best.*`
//! (and `epoch-K.*` every `checkpoint_every` epochs), each a set of `.safetensors` files
//! (weights, EMA weights, optimizer state) and a `.json` trainer state, written
//! atomically, the JSON last.

use crate::data::{
    AugmentConfig, Batch, Cifar, CifarVariant, DataError, Dataset, FashionMnist, ImageFolder,
    Loader, LoaderConfig, Shard, Split,
};
use crate::distributed::DataParallel;
use crate::optim::{learning_rate, Ema, Optimizer};
use crate::recipe::{DatasetKind, LossSection, Recipe, RecipeError};
use basis_dist::ProcessGroup;
use basis_models::{checkpoint, BasisNet, BasisNetConfig, BasisSpec, MobileNet, ModelError};
use serde::{Deserialize, Serialize};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

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

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model a recipe trains: a BasisNet, or its specialist backbone alone (baseline).
pub enum Model {
    /// Lightweight model + specialist.
    BasisNet(Box<BasisNet>),
    /// The static network of the specialist's architecture.
    Static(MobileNet),
}

impl Model {
    /// Build the model of `recipe` under `path`.
    pub fn build(path: &nn::Path, recipe: &Recipe) -> Result<Self, TrainError> {
        let config = recipe.basisnet()?;
        Ok(if recipe.model.baseline {
            Model::Static(MobileNet::new(path, config.specialist, BasisSpec::fixed())?)
        } else {
            let net = BasisNet::new(path, config)?;
            if let Some(noise) = recipe.model.basis_noise {
                let vs = nn::VarStore::new(path.device());
                let fixed = MobileNet::new(&vs.root(), config.specialist, BasisSpec::fixed())?;
                net.specialist().seed_from(&fixed, noise)?;
            }
            Model::BasisNet(Box::new(net))
        })
    }

    /// `(light logits, specialist logits)` for a batch.
    pub fn forward(
        &self,
        batch: &Batch,
        train: bool,
    ) -> Result<(Option<Tensor>, Tensor), TrainError> {
        let (light, special, _) = self.forward_with_coefficients(batch, train)?;
        Ok((light, special))
    }

    /// `(light logits, specialist logits, coefficient vectors)` for a batch (no
    /// coefficients for a static network).
    pub fn forward_with_coefficients(
        &self,
        batch: &Batch,
        train: bool,
    ) -> Result<(Option<Tensor>, Tensor, Vec<Tensor>), TrainError> {
        self.forward_in(batch, train, Phase::Joint)
    }

    /// [`Model::forward_with_coefficients`] in a training phase: in
    /// [`Phase::StaticWarmup`] a BasisNet's specialist runs with the mean of its bases
    /// ([`BasisNet::forward_mean_t`]).
    pub fn forward_in(
        &self,
        batch: &Batch,
        train: bool,
        phase: Phase,
    ) -> Result<(Option<Tensor>, Tensor, Vec<Tensor>), TrainError> {
        Ok(match self {
            Model::BasisNet(net) => {
                let light = match &batch.light_images {
                    Some(l) => l.shallow_clone(),
                    None => net.lightweight_input(&batch.images)?,
                };
                let out = match phase {
                    Phase::Joint => net.forward_t(&light, &batch.images, train)?,
                    Phase::StaticWarmup => net.forward_mean_t(&light, &batch.images, train)?,
                };
                (
                    Some(out.light_logits),
                    out.specialist_logits,
                    out.coefficients,
                )
            }
            Model::Static(net) => (None, net.forward_t(&batch.images, &[], train)?, Vec::new()),
        })
    }

    /// `(lightweight stage, everything)` multiply-adds per image.
    pub fn madds(&self, resolution: i64) -> Result<(i64, i64), TrainError> {
        Ok(match self {
            Model::BasisNet(net) => {
                let p = net.profile();
                (p.lightweight_stage_madds(), p.total_madds())
            }
            Model::Static(net) => {
                let m = net.profile(resolution)?.total.madds;
                (0, m)
            }
        })
    }
}

/// What the specialist of a BasisNet runs with during a training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The first `train.static_fraction` of the steps: every image uses the mean of the bases
    /// (one kernel for the batch, the cost of a static network); the lightweight model
    /// trains on its own loss and the bases all move together.
    StaticWarmup,
    /// Per-image coefficients from the lightweight model: the two-stage network.
    Joint,
}

impl Phase {
    /// The phase at `progress` epochs into a run of `epochs` whose first
    /// `static_fraction` is the warm-up.
    ///
    /// ```
    /// use basis_train::Phase;
    /// assert_eq!(Phase::at(2.9, 4, 0.75), Phase::StaticWarmup);
    /// assert_eq!(Phase::at(3.0, 4, 0.75), Phase::Joint);
    /// assert_eq!(Phase::at(0.0, 4, 0.0), Phase::Joint);
    /// ```
    pub fn at(progress: f64, epochs: usize, static_fraction: f64) -> Self {
        if progress < static_fraction * epochs as f64 {
            Phase::StaticWarmup
        } else {
            Phase::Joint
        }
    }
}

/// A distillation teacher: one of our runs, or a TorchScript module.
pub enum Teacher {
    /// A run of ours (its `best` weights), built from its own recipe.
    Run(Box<Model>, nn::VarStore),
    /// A TorchScript module: `forward(images) -> logits`.
    Script(tch::CModule),
}

impl Teacher {
    /// Load a run directory or a TorchScript file.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        if path.is_dir() {
            let recipe = Recipe::load(&path.join("recipe.toml").display().to_string())?;
            let vs = nn::VarStore::new(Device::Cpu);
            let model = Model::build(&vs.root(), &recipe)?;
            checkpoint::load(&vs, &path.join("best.safetensors"))?;
            Ok(Teacher::Run(Box::new(model), vs))
        } else {
            let mut module = tch::CModule::load(path).map_err(|e| {
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
            Teacher::Run(model, _) => Ok(model.forward(batch, false)?.1),
            Teacher::Script(module) => Ok(module.forward_ts(&[&batch.images])?),
        })
    }
}

/// `T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch.
pub fn distillation(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor, TrainError> {
    if student.size() != teacher.size() {
        return Err(TrainError::Run(format!(
            "the teacher returns logits {:?}, the student {:?}",
            teacher.size(),
            student.size()
        )));
    }
    let t = teacher
        .f_div_scalar(temperature)?
        .f_softmax(-1, Kind::Float)?;
    let log_s = student
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    let log_t = t.f_clamp_min(1e-12)?.f_log()?;
    Ok(t.f_mul(&log_t.f_sub(&log_s)?)?
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_mean(Kind::Float)?
        .f_mul_scalar(temperature * temperature)?)
}

/// The joint loss of one training batch: cross-entropy of the specialist against the
/// (label-smoothed or mixed) targets, plus `loss.light_weight` times the same for the
/// lightweight model, each term plus `loss.distill_weight` times the distillation term
/// when there is a `teacher`. Runs the model in training mode.
///
/// ```
/// use basis_train::data::Batch;
/// use basis_train::trainer::{joint_loss, Model, Phase};
/// use basis_train::Recipe;
/// use tch::{nn, Device, Kind, Tensor};
///
/// let recipe = Recipe::default(); // basisnet-fashion
/// let vs = nn::VarStore::new(Device::Cpu);
/// let model = Model::build(&vs.root(), &recipe)?;
/// let batch = Batch {
///     images: Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu)),
///     light_images: None,
///     labels: Tensor::from_slice(&[0i64, 1, 2, 3]),
///     targets: None,
/// };
/// let loss = joint_loss(&model, &batch, &recipe.loss, None, Phase::Joint)?;
/// // Two cross-entropies over 10 classes from a fresh network: about 2 ln 10.
/// assert!((loss.double_value(&[]) - 2.0 * 10f64.ln()).abs() < 1.5);
/// # Ok::<(), basis_train::TrainError>(())
/// ```
pub fn joint_loss(
    model: &Model,
    batch: &Batch,
    loss: &LossSection,
    teacher: Option<&Teacher>,
    phase: Phase,
) -> Result<Tensor, TrainError> {
    let (light, special, _) = model.forward_in(batch, true, phase)?;
    let classes = special.size()[1];
    let targets = match &batch.targets {
        Some(t) => t.shallow_clone(),
        None => smoothed(&batch.labels, classes, loss.label_smoothing)?,
    };
    let teacher = teacher.map(|t| t.logits(batch)).transpose()?;
    let term = |logits: &Tensor| -> Result<Tensor, TrainError> {
        let mut value = soft_cross_entropy(logits, &targets)?;
        if let Some(t) = &teacher {
            let kd = distillation(logits, t, loss.distill_temperature)?;
            value = value.f_add(&kd.f_mul_scalar(loss.distill_weight)?)?;
        }
        Ok(value)
    };
    let mut total = term(&special)?;
    if let Some(light) = light {
        total = total.f_add(&term(&light)?.f_mul_scalar(loss.light_weight)?)?;
    }
    Ok(total)
}

/// Cross-entropy against soft targets `[B, K]`.
fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor, TrainError> {
    Ok(logits
        .f_log_softmax(-1, Kind::Float)?
        .f_mul(targets)?
        .f_sum_dim_intlist(-1, false, Kind::Float)?
        .f_neg()?
        .f_mean(Kind::Float)?)
}

/// Label-smoothed one-hot targets.
fn smoothed(labels: &Tensor, classes: i64, smoothing: f64) -> Result<Tensor, TrainError> {
    let off = smoothing / classes as f64;
    Ok(labels
        .f_one_hot(classes)?
        .f_to_kind(Kind::Float)?
        .f_mul_scalar(1.0 - smoothing)?
        .f_add_scalar(off)?)
}

/// Top-1 and top-5 correct counts.
fn correct(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, i64), TrainError> {
    let top1 = logits.f_argmax(-1, false)?.f_eq_tensor(labels)?;
    let k = logits.size()[1].min(5);
    let (_, idx) = logits.f_topk(k, -1, true, true)?;
    let top5 = idx
        .f_eq_tensor(&labels.f_unsqueeze(1)?)?
        .f_any_dim(1, false)?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?;
    Ok((top1, top5))
}

/// One point of the early-exit curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitPoint {
    /// Threshold on the lightweight model's max softmax probability.
    pub threshold: f64,
    /// Fraction of images that stop after the lightweight stage.
    pub exit_rate: f64,
    /// Top-1 of the decision (lightweight for exited images, specialist for the rest).
    pub top1: f64,
    /// Average multiply-adds per image.
    pub avg_madds: f64,
}

/// An evaluation of a model on a test set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Evaluation {
    /// Images evaluated.
    pub images: usize,
    /// Lightweight model top-1 (BasisNet only).
    pub light_top1: Option<f64>,
    /// Lightweight model top-5.
    pub light_top5: Option<f64>,
    /// Specialist (or static network) top-1.
    pub specialist_top1: f64,
    /// Specialist top-5.
    pub specialist_top5: f64,
    /// The EMA weights' specialist top-1, when EMA is on.
    pub ema_specialist_top1: Option<f64>,
    /// Early-exit curve (BasisNet only).
    pub early_exit: Vec<ExitPoint>,
    /// Multiply-adds of the lightweight stage per image.
    pub light_madds: i64,
    /// Multiply-adds of an image through both stages.
    pub full_madds: i64,
    /// What the coefficients look like on the test set (BasisNet only).
    #[serde(default)]
    pub coefficients: Option<CoefficientStats>,
}

/// Statistics of the (first) coefficient vector over an evaluation: whether the bases
/// specialize by class, and how peaked the vectors are.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CoefficientStats {
    /// Bases `N`.
    pub num_bases: usize,
    /// Mean coefficient vector of the images of each true class: `[classes][N]`.
    pub per_class_mean: Vec<Vec<f64>>,
    /// Mean coefficient vector over all images `[N]` (how much each basis is used).
    pub mean: Vec<f64>,
    /// Mean entropy of a vector, in nats (`ln N` for uniform vectors, 0 for one-hot).
    pub mean_entropy: f64,
    /// Mean of each vector's largest coefficient (`1 / N` uniform, 1 one-hot).
    pub mean_max: f64,
}

/// Sums behind [`CoefficientStats`], batch by batch.
#[derive(Default)]
struct CoefficientAccumulator {
    class_sums: Vec<Vec<f64>>,
    class_counts: Vec<usize>,
    entropy_sum: f64,
    max_sum: f64,
}

impl CoefficientAccumulator {
    /// Add the coefficient vectors `[B, N]` of a batch with their true labels `[B]`.
    fn add(&mut self, alpha: &Tensor, labels: &Tensor) -> Result<(), TrainError> {
        let n_bases = alpha.size()[1] as usize;
        let rows = Vec::<f32>::try_from(&alpha.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?;
        let labels = Vec::<i64>::try_from(labels)?;
        for (row, &label) in rows.chunks(n_bases).zip(&labels) {
            let k = label.max(0) as usize;
            if self.class_sums.len() <= k {
                self.class_sums.resize(k + 1, vec![0.0; n_bases]);
                self.class_counts.resize(k + 1, 0);
            }
            self.class_counts[k] += 1;
            let mut max = 0.0f64;
            for (sum, &a) in self.class_sums[k].iter_mut().zip(row) {
                let a = f64::from(a);
                *sum += a;
                max = max.max(a);
                if a > 0.0 {
                    self.entropy_sum -= a * a.ln();
                }
            }
            self.max_sum += max;
        }
        Ok(())
    }

    fn finish(self) -> Option<CoefficientStats> {
        let num_bases = self.class_sums.first()?.len();
        let total = self.class_counts.iter().sum::<usize>().max(1) as f64;
        let mut mean = vec![0.0; num_bases];
        for sums in &self.class_sums {
            for (m, s) in mean.iter_mut().zip(sums) {
                *m += s / total;
            }
        }
        Some(CoefficientStats {
            num_bases,
            per_class_mean: self
                .class_sums
                .iter()
                .zip(&self.class_counts)
                .map(|(s, &c)| s.iter().map(|v| v / c.max(1) as f64).collect())
                .collect(),
            mean,
            mean_entropy: self.entropy_sum / total,
            mean_max: self.max_sum / total,
        })
    }
}

/// Evaluate `model` (and `ema`) on `loader`, with the early-exit curve over `thresholds`.
pub fn evaluate(
    model: &Model,
    ema: Option<&Model>,
    loader: &Loader,
    thresholds: &[f64],
    resolution: i64,
) -> Result<Evaluation, TrainError> {
    let _guard = tch::no_grad_guard();
    let (mut n, mut s1, mut s5, mut l1, mut l5, mut e1) = (0usize, 0i64, 0i64, 0i64, 0i64, 0i64);
    let mut confidences: Vec<f32> = Vec::new();
    let mut light_ok: Vec<bool> = Vec::new();
    let mut special_ok: Vec<bool> = Vec::new();
    let mut coefficient_stats = CoefficientAccumulator::default();
    for batch in loader.epoch(0) {
        let batch = batch?.to_tensors(Device::Cpu)?;
        let (light, special, coefficients) = model.forward_with_coefficients(&batch, false)?;
        if let Some(alpha) = coefficients.first() {
            coefficient_stats.add(alpha, &batch.labels)?;
        }
        let (top1, top5) = correct(&special, &batch.labels)?;
        s1 += top1.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        s5 += top5;
        special_ok.extend(Vec::<bool>::try_from(&top1)?);
        if let Some(light) = light {
            let (top1, top5) = correct(&light, &batch.labels)?;
            l1 += top1.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            l5 += top5;
            light_ok.extend(Vec::<bool>::try_from(&top1)?);
            let conf = light
                .f_softmax(-1, Kind::Float)?
                .f_amax([-1].as_slice(), false)?;
            confidences.extend(Vec::<f32>::try_from(&conf)?);
        }
        if let Some(ema) = ema {
            let (_, special) = ema.forward(&batch, false)?;
            e1 += correct(&special, &batch.labels)?
                .0
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
        }
        n += batch.labels.size()[0] as usize;
    }
    let frac = |c: i64| c as f64 / n.max(1) as f64;
    let (light_madds, full_madds) = model.madds(resolution)?;
    let is_basisnet = matches!(model, Model::BasisNet(_));
    let early_exit = if is_basisnet {
        thresholds
            .iter()
            .map(|&t| {
                let exits: Vec<bool> = confidences.iter().map(|&c| f64::from(c) >= t).collect();
                let rate = exits.iter().filter(|&&e| e).count() as f64 / n.max(1) as f64;
                let ok = exits
                    .iter()
                    .enumerate()
                    .filter(|&(i, &e)| if e { light_ok[i] } else { special_ok[i] })
                    .count();
                ExitPoint {
                    threshold: t,
                    exit_rate: rate,
                    top1: ok as f64 / n.max(1) as f64,
                    avg_madds: light_madds as f64
                        + (1.0 - rate) * (full_madds - light_madds) as f64,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let coefficients = coefficient_stats.finish();
    Ok(Evaluation {
        coefficients,
        images: n,
        light_top1: is_basisnet.then(|| frac(l1)),
        light_top5: is_basisnet.then(|| frac(l5)),
        specialist_top1: frac(s1),
        specialist_top5: frac(s5),
        ema_specialist_top1: ema.map(|_| frac(e1)),
        early_exit,
        light_madds,
        full_madds,
    })
}

/// The trainer's own state, saved as `<checkpoint>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: i64,
    /// Best specialist top-1 so far.
    pub best_top1: f64,
    /// The epoch of the best.
    pub best_epoch: usize,
    /// The recipe's seed (RNG streams derive from it and the epoch).
    pub seed: u64,
}

/// A subset (the first `n` samples) of a dataset.
struct Head {
    inner: Arc<dyn Dataset>,
    n: usize,
}

impl Dataset for Head {
    fn len(&self) -> usize {
        self.n.min(self.inner.len())
    }
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn get(&self, index: usize) -> Result<crate::data::Sample, DataError> {
        self.inner.get(index)
    }
    fn describe(&self, index: usize) -> String {
        self.inner.describe(index)
    }
}

/// The default data folder (`BASISNET_DATA_DIR`, else the user cache).
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

/// Open the recipe's dataset split.
pub fn open_dataset(recipe: &Recipe, train: bool) -> Result<Arc<dyn Dataset>, TrainError> {
    let split = if train { Split::Train } else { Split::Test };
    let d = &recipe.data;
    let dir = d.dir.clone().unwrap_or_else(|| {
        let root = default_data_root();
        match d.dataset {
            DatasetKind::FashionMnist => root.join("fashion-mnist"),
            DatasetKind::Cifar10 => root.join("cifar-10-batches-bin"),
            DatasetKind::Cifar100 => root.join("cifar-100-binary"),
            DatasetKind::Folder => root.join("imagenet"),
        }
    });
    let channels = recipe.basisnet()?.specialist.in_channels as usize;
    let ds: Arc<dyn Dataset> = match d.dataset {
        DatasetKind::FashionMnist => Arc::new(FashionMnist::open(&dir, split)?),
        DatasetKind::Cifar10 => Arc::new(Cifar::open(&dir, CifarVariant::Cifar10, split)?),
        DatasetKind::Cifar100 => Arc::new(Cifar::open(&dir, CifarVariant::Cifar100, split)?),
        DatasetKind::Folder => Arc::new(ImageFolder::open(
            &dir.join(if train { "train" } else { "val" }),
            channels,
        )?),
    };
    if ds.channels() != channels {
        return Err(TrainError::Run(format!(
            "the model takes {channels}-channel images, the dataset has {}",
            ds.channels()
        )));
    }
    let limit = if train { d.limit } else { d.eval_limit };
    Ok(match limit {
        Some(n) => Arc::new(Head { inner: ds, n }),
        None => ds,
    })
}

/// Transforms of the recipe with the model's resolutions.
fn augment(recipe: &Recipe, config: &BasisNetConfig) -> AugmentConfig {
    AugmentConfig {
        resolution: config.resolution as u32,
        light_resolution: (!recipe.model.baseline).then_some(config.lightweight_resolution as u32),
        ..recipe.data.augment.clone()
    }
}

/// A training run in a directory.
pub struct Run {
    recipe: Recipe,
    dir: PathBuf,
    vs: nn::VarStore,
    model: Model,
    ema: Option<(nn::VarStore, Model, Ema)>,
    optimizer: Optimizer,
    state: TrainerState,
    train: Loader,
    test: Loader,
    resolution: i64,
    teacher: Option<Teacher>,
    parallel: Option<DataParallel>,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// The run directory.
    pub dir: PathBuf,
    /// The last evaluation (with the early-exit curve).
    pub evaluation: Evaluation,
    /// The trainer state at the end.
    pub state: TrainerState,
    /// Wall-clock seconds of training (evaluation excluded).
    pub train_seconds: f64,
}

impl Run {
    /// A new run of `recipe` in `dir` (created; refused when it already holds a run).
    pub fn new(recipe: Recipe, dir: &Path) -> Result<Self, TrainError> {
        Self::create(recipe, dir, None)
    }

    /// One process of a data-parallel run of `recipe` in `dir`: every rank calls it with
    /// the same recipe and directory; rank 0 alone writes the directory (recipe,
    /// checkpoints, logs, metrics, plots) and evaluates.
    pub fn new_distributed(
        recipe: Recipe,
        dir: &Path,
        group: Arc<ProcessGroup>,
    ) -> Result<Self, TrainError> {
        Self::create(recipe, dir, Some(group))
    }

    fn create(
        recipe: Recipe,
        dir: &Path,
        group: Option<Arc<ProcessGroup>>,
    ) -> Result<Self, TrainError> {
        recipe.validate()?;
        if let Some(g) = &group {
            if recipe.train.batch_size % g.world_size() != 0 {
                return Err(TrainError::Run(format!(
                    "train.batch_size {} does not split over {} processes: use a multiple of {}",
                    recipe.train.batch_size,
                    g.world_size(),
                    g.world_size()
                )));
            }
        }
        let main = group.as_ref().is_none_or(|g| g.is_main());
        if dir.join("last.json").exists() {
            return Err(TrainError::Run(format!(
                "{} already holds a run; resume it with --resume or choose another directory",
                dir.display()
            )));
        }
        if main {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let run = Self::build(recipe, dir, group)?;
        run.broadcast_state()?;
        if main {
            let recipe_path = dir.join("recipe.toml");
            std::fs::write(&recipe_path, run.recipe.to_toml()).map_err(io(&recipe_path))?;
        }
        Ok(run)
    }

    /// Resume the run in `dir` from its `last` checkpoint.
    pub fn resume(dir: &Path) -> Result<Self, TrainError> {
        Self::reopen(dir, None)
    }

    /// Resume a data-parallel run: every rank reads the run directory (a folder all ranks
    /// see), then takes rank 0's weights.
    pub fn resume_distributed(dir: &Path, group: Arc<ProcessGroup>) -> Result<Self, TrainError> {
        Self::reopen(dir, Some(group))
    }

    fn reopen(dir: &Path, group: Option<Arc<ProcessGroup>>) -> Result<Self, TrainError> {
        let recipe = Recipe::load(&dir.join("recipe.toml").display().to_string())?;
        let mut run = Self::build(recipe, dir, group)?;
        let state_path = dir.join("last.json");
        let text = std::fs::read_to_string(&state_path).map_err(io(&state_path))?;
        run.state = serde_json::from_str(&text).map_err(|e| {
            TrainError::Run(format!(
                "{}: not a trainer state ({e})",
                state_path.display()
            ))
        })?;
        checkpoint::load(&run.vs, &dir.join("last.safetensors"))?;
        if let Some((ema_vs, _, _)) = &run.ema {
            checkpoint::load(ema_vs, &dir.join("last-ema.safetensors"))?;
        }
        let (optim, _) = checkpoint::read(&dir.join("last-optim.safetensors"))?;
        run.optimizer.load_state(&optim).map_err(|e| {
            TrainError::Run(format!(
                "{}: {e}",
                dir.join("last-optim.safetensors").display()
            ))
        })?;
        run.broadcast_state()?;
        Ok(run)
    }

    /// Give every rank rank 0's weights (model and EMA).
    fn broadcast_state(&self) -> Result<(), TrainError> {
        if let Some(p) = &self.parallel {
            p.broadcast_all(&self.vs)?;
            if let Some((ema_vs, _, _)) = &self.ema {
                p.broadcast_all(ema_vs)?;
            }
        }
        Ok(())
    }

    /// Whether this process writes the run's files (rank 0, or a single process).
    pub fn is_main(&self) -> bool {
        self.parallel.as_ref().is_none_or(|p| p.rank() == 0)
    }

    fn build(
        recipe: Recipe,
        dir: &Path,
        group: Option<Arc<ProcessGroup>>,
    ) -> Result<Self, TrainError> {
        if recipe.train.threads > 0 {
            tch::set_num_threads(recipe.train.threads as i32);
        }
        tch::manual_seed(recipe.train.seed as i64);
        let config = recipe.basisnet()?;
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::build(&vs.root(), &recipe)?;
        let ema = match recipe.train.ema_decay {
            Some(decay) => {
                let ema_vs = nn::VarStore::new(Device::Cpu);
                let ema_model = Model::build(&ema_vs.root(), &recipe)?;
                let ema = Ema::new(&vs, &ema_vs, decay).map_err(TrainError::Run)?;
                Some((ema_vs, ema_model, ema))
            }
            None => None,
        };
        let optimizer = Optimizer::new(&vs, recipe.optim.clone());
        let aug = augment(&recipe, &config);
        let loader_config = LoaderConfig {
            batch_size: recipe.train.batch_size,
            workers: recipe.data.workers,
            seed: recipe.train.seed,
            strict: recipe.data.strict,
            drop_last: true,
            shard: group
                .as_ref()
                .map(|g| Shard {
                    index: g.rank(),
                    count: g.world_size(),
                })
                .unwrap_or_default(),
            ..LoaderConfig::default()
        };
        let mut train = Loader::new(
            open_dataset(&recipe, true)?,
            aug.clone(),
            true,
            loader_config.clone(),
        )?;
        if let Some(mix) = &recipe.data.mix {
            train = train.with_mix(mix.clone())?;
        }
        let test = Loader::new(
            open_dataset(&recipe, false)?,
            aug,
            false,
            LoaderConfig {
                shuffle: false,
                drop_last: false,
                batch_size: recipe.train.batch_size.max(256),
                shard: Shard::default(),
                ..loader_config
            },
        )?;
        let teacher = recipe
            .loss
            .teacher
            .as_deref()
            .map(Teacher::load)
            .transpose()?;
        let state = TrainerState {
            epoch: 0,
            step: 0,
            best_top1: -1.0,
            best_epoch: 0,
            seed: recipe.train.seed,
        };
        let parallel = group
            .map(|g| DataParallel::new(g, &vs, &recipe.distributed))
            .transpose()?;
        Ok(Self {
            resolution: config.resolution,
            recipe,
            dir: dir.to_path_buf(),
            vs,
            model,
            ema,
            optimizer,
            state,
            train,
            test,
            teacher,
            parallel,
        })
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The variables of the model.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Train up to `recipe.train.epochs`, evaluating and checkpointing every epoch.
    pub fn train(&mut self) -> Result<RunSummary, TrainError> {
        self.train_until(self.recipe.train.epochs)
    }

    /// Train up to epoch `stop` (at most the recipe's epochs) and stop there, as if
    /// interrupted at that epoch boundary; [`Run::resume`] continues.
    pub fn train_until(&mut self, stop: usize) -> Result<RunSummary, TrainError> {
        let epochs = self.recipe.train.epochs;
        let stop = stop.min(epochs);
        let steps_per_epoch = self.train.num_batches().max(1);
        let mut train_seconds = 0.0;
        let mut evaluation = Evaluation::default();
        let main = self.is_main();
        let tty = main && std::io::stderr().is_terminal();
        let rank = self.parallel.as_ref().map_or(0, |p| p.rank());
        let world = self.parallel.as_ref().map_or(1, |p| p.world_size());
        if self.state.epoch >= stop && main {
            evaluation = self.evaluate()?;
        }
        while self.state.epoch < stop {
            let epoch = self.state.epoch;
            // Every random stream of an epoch derives from (seed, epoch): a run resumed
            // at an epoch boundary continues exactly as one that never stopped.
            // Each rank draws its own dropout and noise (rank 0's stream is a single
            // process's).
            tch::manual_seed(
                (self.recipe.train.seed as i64).wrapping_mul(1_000_003)
                    + epoch as i64
                    + ((rank as i64) << 32),
            );
            let start = Instant::now();
            let (mut loss_sum, mut seen) = (0.0, 0usize);
            // Seconds rank 0 spent averaging gradients (data-parallel runs).
            let mut averaging = 0.0;
            let mut lr = 0.0;
            let mut batches = self.train.epoch(epoch as u64);
            for (i, batch) in batches.by_ref().enumerate() {
                let batch = batch?.to_tensors(Device::Cpu)?;
                let progress = epoch as f64 + i as f64 / steps_per_epoch as f64;
                lr = learning_rate(
                    &self.recipe.schedule,
                    self.recipe.optim.lr,
                    epochs,
                    progress,
                );
                let phase = Phase::at(progress, epochs, self.recipe.train.static_fraction);
                let loss = self.loss(&batch, phase)?;
                let value = loss.f_double_value(&[])?;
                if !value.is_finite() {
                    return Err(TrainError::NonFinite {
                        loss: value,
                        step: self.optimizer.steps() + 1,
                        epoch: epoch + 1,
                    });
                }
                self.optimizer.zero_grad();
                if let Some(p) = &self.parallel {
                    p.before_backward();
                }
                loss.f_backward()?;
                if let Some(p) = &self.parallel {
                    let t = Instant::now();
                    p.average_gradients()?;
                    averaging += t.elapsed().as_secs_f64();
                }
                self.optimizer.step(lr);
                if let Some((_, _, ema)) = &self.ema {
                    ema.update(self.optimizer.steps());
                }
                let n = batch.labels.size()[0] as usize;
                loss_sum += value * n as f64;
                seen += n;
                if !main {
                    continue;
                }
                self.progress(
                    tty,
                    epoch,
                    i + 1,
                    steps_per_epoch,
                    seen * world,
                    start,
                    loss_sum / seen as f64,
                    lr,
                );
            }
            if let Some(summary) = batches.report().summary() {
                eprintln!("epoch {}: {summary}", epoch + 1);
            }
            drop(batches);
            if tty {
                eprintln!();
            }
            if let Some(p) = &self.parallel {
                // Every rank's loss and images; rank 0's running statistics everywhere.
                let total = p.sum(&[loss_sum, seen as f64])?;
                (loss_sum, seen) = (total[0], total[1] as usize);
                p.broadcast_buffers(&self.vs)?;
                if let Some((ema_vs, _, _)) = &self.ema {
                    p.broadcast_buffers(ema_vs)?;
                }
            }
            let seconds = start.elapsed().as_secs_f64();
            train_seconds += seconds;
            self.state.epoch += 1;
            self.state.step = self.optimizer.steps();
            if !main {
                continue;
            }
            evaluation = self.evaluate()?;
            let improved = evaluation.specialist_top1 > self.state.best_top1;
            if improved {
                self.state.best_top1 = evaluation.specialist_top1;
                self.state.best_epoch = self.state.epoch;
            }
            self.append_summary(lr, loss_sum / seen.max(1) as f64, &evaluation, seconds)?;
            eprintln!(
                "epoch {}/{epochs}: loss {:.4}, {}specialist top-1 {:.2}%, {:.0} images/s{}",
                self.state.epoch,
                loss_sum / seen.max(1) as f64,
                evaluation
                    .light_top1
                    .map(|l| format!("light top-1 {:.2}%, ", 100.0 * l))
                    .unwrap_or_default(),
                100.0 * evaluation.specialist_top1,
                seen as f64 / seconds,
                match &self.parallel {
                    Some(p) => format!(
                        " over {} processes ({:.0}% of rank 0's time averaging gradients)",
                        p.world_size(),
                        100.0 * averaging / seconds
                    ),
                    None => String::new(),
                }
            );
            self.save_checkpoint("last")?;
            if improved {
                self.save_checkpoint("best")?;
            }
            let every = self.recipe.train.checkpoint_every;
            if every > 0 && self.state.epoch % every == 0 {
                self.save_checkpoint(&format!("epoch-{}", self.state.epoch))?;
            }
        }
        let summary = RunSummary {
            dir: self.dir.clone(),
            evaluation,
            state: self.state.clone(),
            train_seconds,
        };
        if !main {
            return Ok(summary);
        }
        let metrics_path = self.dir.join("metrics.json");
        let json = serde_json::json!({
            "light_top1": summary.evaluation.light_top1,
            "light_top5": summary.evaluation.light_top5,
            "specialist_top1": summary.evaluation.specialist_top1,
            "specialist_top5": summary.evaluation.specialist_top5,
            "ema_specialist_top1": summary.evaluation.ema_specialist_top1,
            "early_exit": summary.evaluation.early_exit,
            "light_madds": summary.evaluation.light_madds,
            "full_madds": summary.evaluation.full_madds,
            "coefficients": summary.evaluation.coefficients,
            "images": summary.evaluation.images,
            "epochs": summary.state.epoch,
            "best_top1": summary.state.best_top1,
            "best_epoch": summary.state.best_epoch,
            "train_seconds": summary.train_seconds,
        });
        write_atomic(
            &metrics_path,
            serde_json::to_string_pretty(&json)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        if !summary.evaluation.early_exit.is_empty() {
            let svg = crate::plot::early_exit_curve(&summary.evaluation.early_exit);
            write_atomic(&self.dir.join("early_exit.svg"), svg.as_bytes())?;
        }
        if let Some(stats) = &summary.evaluation.coefficients {
            let svg = crate::plot::coefficient_heatmap(stats, self.test.dataset().classes());
            write_atomic(&self.dir.join("coefficients.svg"), svg.as_bytes())?;
        }
        Ok(summary)
    }

    #[allow(clippy::too_many_arguments)]
    fn progress(
        &self,
        tty: bool,
        epoch: usize,
        step: usize,
        steps: usize,
        seen: usize,
        start: Instant,
        loss: f64,
        lr: f64,
    ) {
        let elapsed = start.elapsed().as_secs_f64();
        let rate = seen as f64 / elapsed.max(1e-9);
        let eta = (steps - step) as f64 * elapsed / step as f64;
        let line = format!(
            "epoch {}/{} [{step}/{steps}] loss {loss:.4} lr {lr:.2e} {rate:.0} images/s eta {eta:.0}s",
            epoch + 1,
            self.recipe.train.epochs
        );
        if tty {
            let width = 30;
            let filled = width * step / steps;
            eprint!(
                "\r[{}{}] {line}   ",
                "#".repeat(filled),
                "-".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        } else if step % self.recipe.train.log_every.max(1) == 0 || step == steps {
            eprintln!("{line}");
        }
    }

    /// The joint loss of a batch.
    fn loss(&self, batch: &Batch, phase: Phase) -> Result<Tensor, TrainError> {
        let loss = || {
            joint_loss(
                &self.model,
                batch,
                &self.recipe.loss,
                self.teacher.as_ref(),
                phase,
            )
        };
        match &self.parallel {
            Some(p) => p.forward(loss),
            None => loss(),
        }
    }

    fn evaluate(&self) -> Result<Evaluation, TrainError> {
        evaluate(
            &self.model,
            self.ema.as_ref().map(|(_, m, _)| m),
            &self.test,
            &self.recipe.train.exit_thresholds,
            self.resolution,
        )
    }

    fn append_summary(
        &self,
        lr: f64,
        loss: f64,
        e: &Evaluation,
        seconds: f64,
    ) -> Result<(), TrainError> {
        let path = self.dir.join("summary.csv");
        let header = "epoch,lr,train_loss,light_top1,light_top5,specialist_top1,specialist_top5,ema_specialist_top1,seconds\n";
        let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| header.to_string());
        // A resumed run rewrites rows of epochs it trains again.
        let keep: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.split(',')
                    .next()
                    .and_then(|e| e.parse::<usize>().ok())
                    .is_none_or(|ep| ep < self.state.epoch)
            })
            .collect();
        text = keep.join("\n") + "\n";
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        text += &format!(
            "{},{lr:.6e},{loss:.6},{},{},{:.6},{:.6},{},{seconds:.1}\n",
            self.state.epoch,
            opt(e.light_top1),
            opt(e.light_top5),
            e.specialist_top1,
            e.specialist_top5,
            opt(e.ema_specialist_top1),
        );
        write_atomic(&path, text.as_bytes())?;
        let curves = crate::plot::training_curves(&text);
        write_atomic(&self.dir.join("curves.svg"), curves.as_bytes())
    }

    fn save_checkpoint(&self, name: &str) -> Result<(), TrainError> {
        let meta = checkpoint::Metadata::from([("recipe".to_string(), self.recipe.to_toml())]);
        let weights: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        checkpoint::write(
            &self.dir.join(format!("{name}.safetensors")),
            &weights,
            &meta,
        )?;
        if let Some((ema_vs, _, _)) = &self.ema {
            let ema: Vec<(String, Tensor)> = ema_vs.variables().into_iter().collect();
            checkpoint::write(
                &self.dir.join(format!("{name}-ema.safetensors")),
                &ema,
                &meta,
            )?;
        }
        checkpoint::write(
            &self.dir.join(format!("{name}-optim.safetensors")),
            &self.optimizer.state_tensors(),
            &meta,
        )?;
        let state = serde_json::to_string_pretty(&self.state).unwrap_or_default();
        write_atomic(&self.dir.join(format!("{name}.json")), state.as_bytes())
    }
}

/// Write through a temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(io(path))
}
