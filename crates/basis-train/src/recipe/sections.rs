//! The sections of a [`super::Recipe`], one struct each with its defaults: the model, the
//! loss, the optimizer, the schedule, the run and data-parallel training.

use crate::device::DeviceChoice;
use basis_amp::Precision;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The model to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// A BasisNet preset (`basisnet-fashion`, `basisnet-mv3`...).
    pub preset: String,
    /// Train the preset's specialist backbone alone as a static network (N = 1, no
    /// lightweight model): the baseline of the same size and recipe.
    pub baseline: bool,
    /// Override the number of bases.
    pub num_bases: Option<i64>,
    /// Softmax temperature of the coefficients.
    pub temperature: Option<f64>,
    /// Basis dropout probability.
    pub basis_dropout: Option<f64>,
    /// Start every basis of a layer from one initialization plus this much noise
    /// (relative to the weights' spread), so the specialist starts as a static network;
    /// absent: every basis drawn independently.
    pub basis_noise: Option<f64>,
    /// Override the specialist's stem stride (1: the small-image variant).
    pub stem_stride: Option<i64>,
    /// Dropout before the classifier of both stages (the preset's when absent).
    pub dropout: Option<f64>,
    /// Which stage's backbone a baseline trains: the specialist's (default) or the
    /// lightweight model's, alone at its own resolution.
    pub baseline_of: Stage,
    /// Pretrained weights to start from: a safetensors state dict with torchvision's or
    /// timm's MobileNet names, for both stages (or the static network of a baseline). The
    /// lightweight model takes it as it is (its coefficient head starts new), every basis
    /// of the specialist takes it plus `basis_noise` (0 when absent). The last classifier
    /// layer starts new, with a warning, when its class count differs.
    pub init: Option<PathBuf>,
    /// The lightweight model's pretrained weights, when they differ from `init`.
    pub light_init: Option<PathBuf>,
    /// The specialist's pretrained weights, when they differ from `init`.
    pub specialist_init: Option<PathBuf>,
    /// Batch-norm eps of both stages (the architecture's when absent). A run that starts
    /// from pretrained weights records the eps they were trained with here (timm's
    /// MobileNetV3 use 1e-5, torchvision's 1e-3).
    pub batch_norm_eps: Option<f64>,
}

/// A stage of a BasisNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The synthesized specialist.
    #[default]
    Specialist,
    /// The lightweight model.
    Lightweight,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            preset: "basisnet-fashion".into(),
            baseline: false,
            num_bases: None,
            temperature: None,
            basis_dropout: None,
            basis_noise: None,
            stem_stride: None,
            dropout: None,
            baseline_of: Stage::Specialist,
            init: None,
            light_init: None,
            specialist_init: None,
            batch_norm_eps: None,
        }
    }
}

/// The loss: `CE(specialist) + light_weight * CE(light)` (+ distillation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossSection {
    /// Weight of the lightweight model's cross-entropy (the paper's lambda).
    pub light_weight: f64,
    /// Label smoothing (ignored when mixup makes soft targets, which carry their own).
    pub label_smoothing: f64,
    /// Knowledge distillation: a teacher, either a run directory of ours (its `best`
    /// weights) or a TorchScript module file (`.pt`, `.ts`) taking the full-resolution
    /// images and returning logits.
    pub teacher: Option<PathBuf>,
    /// Weight of the distillation term `T^2 * KL(teacher_T || student_T)`, added for the
    /// specialist and (times `light_weight`) the lightweight model.
    pub distill_weight: f64,
    /// Softmax temperature `T` of distillation.
    pub distill_temperature: f64,
}

impl Default for LossSection {
    fn default() -> Self {
        Self {
            light_weight: 1.0,
            label_smoothing: 0.1,
            teacher: None,
            distill_weight: 1.0,
            distill_temperature: 4.0,
        }
    }
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (optionally Nesterov).
    Sgd,
    /// RMSProp in TensorFlow's form (the MobileNet papers' optimizer).
    Rmsprop,
    /// AdamW (decoupled weight decay).
    Adamw,
}

/// The optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimSection {
    /// Which optimizer.
    pub name: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Momentum (SGD, RMSProp).
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Weight decay.
    pub weight_decay: f64,
    /// Also decay batch-norm parameters and biases.
    pub decay_norm_and_bias: bool,
    /// RMSProp's decay of the squared average (TensorFlow's `rho`).
    pub alpha: f64,
    /// Epsilon (RMSProp: inside the square root, as TensorFlow; AdamW: outside).
    pub eps: f64,
    /// AdamW's betas.
    pub betas: [f64; 2],
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            name: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-5,
            decay_norm_and_bias: false,
            alpha: 0.9,
            eps: 1e-3,
            betas: [0.9, 0.999],
        }
    }
}

/// Learning-rate schedules after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Cosine from the peak to `min_lr`.
    Cosine,
    /// Multiply by `gamma` every `step_epochs`.
    Step,
    /// Multiply by `gamma` every epoch (continuously).
    Exponential,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleSection {
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Linear warmup from `warmup_lr`, in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Learning rate at the start of warmup.
    pub warmup_lr: f64,
    /// Floor of the cosine.
    pub min_lr: f64,
    /// Step: epochs between decays.
    pub step_epochs: f64,
    /// Step and exponential: decay factor.
    pub gamma: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self {
            kind: ScheduleKind::Cosine,
            warmup_epochs: 0.0,
            warmup_lr: 1e-4,
            min_lr: 1e-5,
            step_epochs: 2.4,
            gamma: 0.97,
        }
    }
}

/// The run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Epochs.
    pub epochs: usize,
    /// Samples per step, over all processes in data-parallel training (each of `W`
    /// processes takes `batch_size / W`, so a recipe means the same optimization whatever
    /// the number of processes).
    pub batch_size: usize,
    /// Seed of initialization, data order, augmentation.
    pub seed: u64,
    /// Static warm-up: for this fraction of the training steps (in `[0, 1)`) a
    /// BasisNet's specialist runs every image with the mean of its bases (one shared
    /// kernel, the cost of a static network), then per-image coefficients take over; 0
    /// (the default) trains the two stages jointly from the start. Ignored by a static
    /// baseline.
    pub static_fraction: f64,
    /// Decay of the exponential moving average of the weights (none when absent).
    pub ema_decay: Option<f64>,
    /// Also keep a checkpoint every this many epochs (0: only `last` and `best`).
    pub checkpoint_every: usize,
    /// Early-exit thresholds evaluated at the end.
    pub exit_thresholds: Vec<f64>,
    /// libtorch threads (0: libtorch's default).
    pub threads: usize,
    /// Log a line every this many steps when not on a terminal.
    pub log_every: usize,
    /// Where to train: `auto` (CUDA when libtorch sees a GPU, else the CPU), `cpu`,
    /// `cuda` or `cuda:N`; a data-parallel rank takes the GPU of its local rank.
    pub device: DeviceChoice,
    /// Arithmetic of the forward pass: `fp32`, `bf16` (autocast; AMX on recent CPUs) or
    /// `fp16` (autocast with dynamic loss scaling); weights and optimizer state stay fp32.
    pub precision: Precision,
    /// libtorch's deterministic algorithms (and cuDNN's): a CUDA run resumed from a
    /// checkpoint repeats the steps of one that never stopped bit for bit, at the cost of
    /// slower kernels; an operation with no deterministic implementation stops the run
    /// with libtorch's message. The CPU is deterministic either way.
    pub deterministic: bool,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 128,
            seed: 0,
            static_fraction: 0.0,
            ema_decay: None,
            checkpoint_every: 0,
            exit_thresholds: vec![0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.01],
            threads: 0,
            log_every: 50,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            deterministic: false,
        }
    }
}

/// How batch norm computes its training statistics in data-parallel training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    /// Each process over its own part of the batch; rank 0's running statistics are kept
    /// (PyTorch DDP's default).
    #[default]
    Local,
    /// Over the whole batch of every process (PyTorch's `SyncBatchNorm`).
    Sync,
}

/// Data-parallel training (`basisnet train --distributed`); ignored by a single process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistributedSection {
    /// Batch-norm statistics: `local` or `sync`.
    pub batch_norm: BatchNormMode,
    /// Gradient bucket size in MiB (DDP's default: 25).
    pub bucket_mb: f64,
    /// Seconds a rank waits for the others (rendezvous, collectives) before failing; a rank
    /// that dies makes the others fail at once. Rank 0 evaluates while the others wait, so
    /// this must exceed an evaluation.
    pub timeout_s: f64,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self {
            batch_norm: BatchNormMode::Local,
            bucket_mb: 25.0,
            timeout_s: 1800.0,
        }
    }
}
