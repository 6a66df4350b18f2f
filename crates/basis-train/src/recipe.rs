//! [`Recipe`]: one TOML file describes a whole run; `--set key=value` overrides it.
//!
//! Every section and key is checked: an unknown key or a value of the wrong type is an
//! error that names the key and, for a file, the line; impossible values (a negative
//! learning rate, a zero batch) are refused by [`Recipe::validate`] before any work starts.

use crate::data::AugmentConfig;
pub use crate::data::{DataSection, DatasetKind};
pub use sections::{
    BatchNormMode, DistributedSection, LossSection, ModelSection, OptimSection, OptimizerKind,
    ScheduleKind, ScheduleSection, Stage, TrainSection,
};

mod sections;
use basis_models::{presets, BasisNetConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Errors of recipes.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML that does not parse, an unknown key, a wrong type (the message has the line).
    #[error("{origin}: {message}")]
    Parse {
        /// The file, or `--set key=value`.
        origin: String,
        /// What is wrong, where.
        message: String,
    },
    /// A value that cannot work.
    #[error("recipe: {0}")]
    Invalid(String),
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recipe {
    /// The model.
    pub model: ModelSection,
    /// The data.
    pub data: DataSection,
    /// The loss.
    pub loss: LossSection,
    /// The optimizer.
    pub optim: OptimSection,
    /// The learning-rate schedule.
    pub schedule: ScheduleSection,
    /// The run.
    pub train: TrainSection,
    /// Data-parallel training.
    pub distributed: DistributedSection,
}

/// What a TOML error says is wrong, on one line (without the position and the excerpt).
fn reason(e: &toml::de::Error) -> String {
    e.message().trim().replace('\n', " ")
}

/// The recipes shipped with the crate, by name.
pub const PRESETS: [(&str, &str); 2] = [
    (
        "fashion-quick",
        include_str!("../recipes/fashion-quick.toml"),
    ),
    (
        "imagenet-basisnet-mv3",
        include_str!("../recipes/imagenet-basisnet-mv3.toml"),
    ),
];

impl Recipe {
    /// Parse TOML text (`origin` names it in errors).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, RecipeError> {
        toml::from_str(text).map_err(|e| RecipeError::Parse {
            origin: origin.to_string(),
            message: match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    let source = text.lines().nth(line - 1).unwrap_or_default().trim();
                    format!("line {line}, column {column} (`{source}`): {}", reason(&e))
                }
                None => reason(&e),
            },
        })
    }

    /// The names of the shipped recipes.
    pub fn preset_names() -> Vec<&'static str> {
        PRESETS.iter().map(|(n, _)| *n).collect()
    }

    /// A shipped recipe by name.
    ///
    /// ```
    /// let recipe = basis_train::Recipe::preset("fashion-quick")?;
    /// assert_eq!(recipe.model.preset, "basisnet-fashion");
    /// let err = basis_train::Recipe::preset("nope").unwrap_err().to_string();
    /// assert!(err.contains("fashion-quick, imagenet-basisnet-mv3"), "{err}");
    /// # Ok::<(), basis_train::RecipeError>(())
    /// ```
    pub fn preset(name: &str) -> Result<Self, RecipeError> {
        match PRESETS.iter().find(|(n, _)| *n == name) {
            Some((_, text)) => Self::from_toml(text, &format!("recipe {name}")),
            None => Err(RecipeError::Invalid(format!(
                "no shipped recipe is named {name:?}; the shipped recipes are {}",
                Self::preset_names().join(", ")
            ))),
        }
    }

    /// A recipe file (TOML).
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// A shipped recipe by name, or else a file; what names neither says which recipes
    /// are shipped.
    pub fn load(name_or_path: impl AsRef<std::ffi::OsStr>) -> Result<Self, RecipeError> {
        let raw = name_or_path.as_ref();
        if let Some(name) = raw.to_str() {
            if PRESETS.iter().any(|(n, _)| *n == name) {
                return Self::preset(name);
            }
        }
        let path = Path::new(raw);
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(RecipeError::Invalid(format!(
                    "{} is neither a shipped recipe ({}) nor a recipe file",
                    path.display(),
                    Self::preset_names().join(", ")
                )))
            }
            _ => Self::from_file(path),
        }
    }

    /// Apply `key=value` overrides (`train.epochs=3`, `optim.name="adamw"`; a value that
    /// is not TOML is taken as a string).
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self, RecipeError> {
        let mut table =
            toml::Table::try_from(self).map_err(|e| RecipeError::Invalid(e.to_string()))?;
        for item in overrides {
            let origin = format!("--set {item}");
            let (key, raw) = item.split_once('=').ok_or_else(|| RecipeError::Parse {
                origin: origin.clone(),
                message: "expected key=value".into(),
            })?;
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let parts: Vec<&str> = key.trim().split('.').collect();
            let mut node = &mut table;
            for part in &parts[..parts.len() - 1] {
                node = node
                    .entry(part.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| RecipeError::Parse {
                        origin: origin.clone(),
                        message: format!("{part} is not a section"),
                    })?;
            }
            node.insert(parts[parts.len() - 1].to_string(), value);
            let text = toml::to_string(&table).map_err(|e| RecipeError::Invalid(e.to_string()))?;
            // The line of the serialized table means nothing to the user: keep the reason.
            toml::from_str::<Recipe>(&text).map_err(|e| RecipeError::Parse {
                origin: origin.clone(),
                message: format!("key {}: {}", key.trim(), reason(&e)),
            })?;
        }
        let text = toml::to_string(&table).map_err(|e| RecipeError::Invalid(e.to_string()))?;
        Self::from_toml(&text, "overrides")
    }

    /// The recipe as TOML (what a run writes next to its checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a recipe serializes")
    }

    /// The BasisNet configuration the recipe trains (the preset with the overrides).
    pub fn basisnet(&self) -> Result<BasisNetConfig, RecipeError> {
        let mut config =
            presets::get(&self.model.preset).map_err(|e| RecipeError::Invalid(e.to_string()))?;
        if let Some(n) = self.model.num_bases {
            config.basis.num_bases = n;
        }
        if let Some(t) = self.model.temperature {
            config.temperature = t;
        }
        if let Some(p) = self.model.basis_dropout {
            config.basis_dropout = p;
        }
        if let Some(s) = self.model.stem_stride {
            config.specialist.stem_stride = s;
        }
        if let Some(p) = self.model.dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(RecipeError::Invalid(format!(
                    "model.dropout must be in [0, 1), found {p}"
                )));
            }
            config.specialist.dropout = p;
            config.lightweight.dropout = p;
        }
        if let Some(eps) = self.model.batch_norm_eps {
            if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
                return Err(RecipeError::Invalid(format!(
                    "model.batch_norm_eps must be in (0, 1), found {eps}"
                )));
            }
            config.specialist.batch_norm.eps = eps;
            config.lightweight.batch_norm.eps = eps;
        }
        if self.model.baseline && self.model.baseline_of == Stage::Lightweight {
            config.specialist = config.lightweight;
            config.resolution = config.lightweight_resolution;
        }
        Ok(config)
    }

    /// Channels of the images the model takes.
    pub fn in_channels(&self) -> Result<usize, RecipeError> {
        Ok(self.basisnet()?.specialist.in_channels as usize)
    }

    /// The transforms of every image of a run, at the model's resolutions: the loader
    /// augments them for training and applies their evaluation form otherwise. Only a
    /// BasisNet gets the low-resolution copy for its lightweight model. Training,
    /// `eval`, `predict` and `calibrate` all take them from here.
    ///
    /// ```
    /// let recipe = basis_train::Recipe::load("fashion-quick")?;
    /// assert_eq!(recipe.transforms()?.light_resolution, Some(20));
    /// let baseline = recipe.with_overrides(&["model.baseline=true".into()])?;
    /// assert_eq!(baseline.transforms()?.light_resolution, None);
    /// # Ok::<(), basis_train::RecipeError>(())
    /// ```
    pub fn transforms(&self) -> Result<AugmentConfig, RecipeError> {
        let config = self.basisnet()?;
        Ok(AugmentConfig {
            resolution: config.resolution as u32,
            light_resolution: (!self.model.baseline)
                .then_some(config.lightweight_resolution as u32),
            ..self.data.augment.clone()
        })
    }

    /// Refuse impossible values before any work starts.
    pub fn validate(&self) -> Result<(), RecipeError> {
        let bad = |m: String| Err(RecipeError::Invalid(m));
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return bad(format!(
                "optim.lr must be a finite number > 0, found {}",
                o.lr
            ));
        }
        if !non_negative(o.weight_decay) || !(0.0..1.0).contains(&o.momentum) {
            return bad(format!(
                "optim.weight_decay must be >= 0 and optim.momentum in [0, 1), found {} and {}",
                o.weight_decay, o.momentum
            ));
        }
        if !positive(o.eps) || !(0.0..1.0).contains(&o.alpha) {
            return bad(format!(
                "optim.eps must be > 0 and optim.alpha in [0, 1), found {} and {}",
                o.eps, o.alpha
            ));
        }
        let t = &self.train;
        if t.epochs == 0 || t.batch_size == 0 {
            return bad(format!(
                "train.epochs and train.batch_size must be >= 1, found {} and {}",
                t.epochs, t.batch_size
            ));
        }
        if !(0.0..1.0).contains(&t.static_fraction) {
            return bad(format!(
                "train.static_fraction must be in [0, 1) (the share of the steps before \
                 per-image coefficients), found {}",
                t.static_fraction
            ));
        }
        if let Some(d) = t.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad(format!("train.ema_decay must be in [0, 1), found {d}"));
            }
        }
        let s = &self.schedule;
        if !non_negative(s.warmup_epochs)
            || !non_negative(s.min_lr)
            || !positive(s.gamma)
            || !positive(s.step_epochs)
        {
            return bad(
                "schedule: warmup_epochs and min_lr must be >= 0, gamma and step_epochs > 0".into(),
            );
        }
        if !non_negative(self.loss.light_weight) || !(0.0..1.0).contains(&self.loss.label_smoothing)
        {
            return bad(format!(
                "loss.light_weight must be >= 0 and loss.label_smoothing in [0, 1), found {} and {}",
                self.loss.light_weight, self.loss.label_smoothing
            ));
        }
        if !non_negative(self.loss.distill_weight) || !positive(self.loss.distill_temperature) {
            return bad(format!(
                "loss.distill_weight must be >= 0 and loss.distill_temperature > 0, found {} and {}",
                self.loss.distill_weight, self.loss.distill_temperature
            ));
        }
        if let Some(t) = &self.loss.teacher {
            if !t.exists() {
                return bad(format!("loss.teacher {} does not exist", t.display()));
            }
        }
        let m = &self.model;
        for (key, path) in [
            ("init", &m.init),
            ("light_init", &m.light_init),
            ("specialist_init", &m.specialist_init),
        ] {
            if let Some(p) = path.as_ref().filter(|p| !p.is_file()) {
                return bad(format!(
                    "model.{key} must be a safetensors file of pretrained weights, {} is not a file",
                    p.display()
                ));
            }
        }
        let d = &self.distributed;
        if !positive(d.bucket_mb) || !positive(d.timeout_s) {
            return bad(format!(
                "distributed.bucket_mb and distributed.timeout_s must be > 0, found {} and {}",
                d.bucket_mb, d.timeout_s
            ));
        }
        if self.data.workers == 0 {
            return bad("data.workers must be >= 1".into());
        }
        if let Some(x) = t.exit_thresholds.iter().find(|x| !non_negative(**x)) {
            return bad(format!(
                "train.exit_thresholds are finite numbers >= 0 (confidences; above 1 no image exits), found {x}"
            ));
        }
        if !(0.0..=1.0).contains(&self.data.max_bad_fraction) {
            return bad(format!(
                "data.max_bad_fraction is a fraction in [0, 1], found {}",
                self.data.max_bad_fraction
            ));
        }
        if let Some(mix) = &self.data.mix {
            mix.validate()
                .map_err(|e| RecipeError::Invalid(e.to_string()))?;
        }
        self.basisnet()?;
        Ok(())
    }
}

/// Finite and strictly positive.
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Finite and >= 0.
fn non_negative(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}
