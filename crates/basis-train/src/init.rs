//! [`Initialization`]: a new run started from pretrained MobileNets (`model.init`,
//! `model.light_init`, `model.specialist_init`), read and checked before anything is
//! created.
//!
//! The lightweight model takes its file as it is (its coefficient head starts new); every
//! basis of the specialist takes its file plus `model.basis_noise` (0 when absent), so with
//! no noise the specialist starts as the pretrained static network whatever its
//! coefficients; a static baseline takes its stage's file as it is. A last classifier layer
//! whose class count differs starts new, with a warning naming it; any other mismatch is
//! an error naming the tensor, the shape found and the shape expected.

use crate::error::TrainError;
use crate::model::Model;
use crate::recipe::{ModelSection, Recipe, RecipeError, Stage};
use basis_models::pretrained::Pretrained;
use basis_models::{Arch, MobileNet};
use std::path::PathBuf;

/// The recipe key that named a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Init,
    LightInit,
    SpecialistInit,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Init => "model.init",
            Key::LightInit => "model.light_init",
            Key::SpecialistInit => "model.specialist_init",
        }
    }

    /// The recipe's field of this key.
    fn field(self, m: &mut ModelSection) -> &mut Option<PathBuf> {
        match self {
            Key::Init => &mut m.init,
            Key::LightInit => &mut m.light_init,
            Key::SpecialistInit => &mut m.specialist_init,
        }
    }
}

/// One stage's pretrained weights: the recipe key that named them and the file.
#[derive(Debug)]
struct Start {
    key: Key,
    weights: Pretrained,
}

/// The pretrained weights a new run starts from, per stage.
///
/// ```no_run
/// use basis_train::{init::Initialization, Model, Recipe};
/// let mut recipe = Recipe::load("imagenet-basisnet-mv3")?
///     .with_overrides(&["model.specialist_init=\"mv3-large.safetensors\"".into()])?;
/// let init = Initialization::read(&recipe)?;
/// for line in init.resolve(&mut recipe)? {
///     eprintln!("{line}");
/// }
/// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
/// let model = Model::build(&vs.root(), &recipe)?;
/// for line in init.apply(&model, &recipe)? {
///     eprintln!("{line}");
/// }
/// # Ok::<(), basis_train::TrainError>(())
/// ```
#[derive(Debug, Default)]
pub struct Initialization {
    light: Option<Start>,
    specialist: Option<Start>,
}

impl Initialization {
    /// Read the files the recipe names (none: an initialization that does nothing). A
    /// file without MobileNet names is an error saying so.
    pub fn read(recipe: &Recipe) -> Result<Self, TrainError> {
        let m = &recipe.model;
        let pick = |own: &Option<PathBuf>, key: Key| -> Option<(Key, PathBuf)> {
            own.clone()
                .map(|p| (key, p))
                .or_else(|| m.init.clone().map(|p| (Key::Init, p)))
        };
        let light = pick(&m.light_init, Key::LightInit);
        let specialist = pick(&m.specialist_init, Key::SpecialistInit);
        let (light, specialist) = if m.baseline {
            // A baseline is one static network: the chosen stage's weights.
            match m.baseline_of {
                Stage::Specialist => (None, specialist),
                Stage::Lightweight => (None, light),
            }
        } else {
            (light, specialist)
        };
        let read = |chosen: Option<(Key, PathBuf)>| -> Result<Option<Start>, TrainError> {
            chosen
                .map(|(key, path)| {
                    let path = std::fs::canonicalize(&path).unwrap_or(path);
                    Ok(Start {
                        key,
                        weights: Pretrained::read(&path)?,
                    })
                })
                .transpose()
        };
        Ok(Self {
            light: read(light)?,
            specialist: read(specialist)?,
        })
    }

    /// Whether the run starts from any pretrained weights.
    pub fn is_empty(&self) -> bool {
        self.light.is_none() && self.specialist.is_none()
    }

    /// Record in `recipe` what the run needs to be rebuilt without the files: the files'
    /// absolute paths, and `model.batch_norm_eps` when the weights were trained with
    /// another eps than the architecture's (timm's MobileNetV3). Returns lines for the
    /// user (`note: ...`, `warning: ...`); stages whose files need different eps are an
    /// error.
    pub fn resolve(&self, recipe: &mut Recipe) -> Result<Vec<String>, TrainError> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let config = recipe.basisnet()?;
        let mut wanted: Vec<(&Start, Arch, f64)> = Vec::new();
        if let Some(s) = &self.light {
            wanted.push((
                s,
                config.lightweight.arch,
                s.weights.batch_norm_eps(config.lightweight.arch),
            ));
        }
        if let Some(s) = &self.specialist {
            wanted.push((
                s,
                config.specialist.arch,
                s.weights.batch_norm_eps(config.specialist.arch),
            ));
        }
        let mut notes = Vec::new();
        let describe = |s: &Start| {
            format!(
                "{}'s weights in {} ({})",
                s.weights.source().name(),
                s.weights.path().display(),
                s.key.name()
            )
        };
        match recipe.model.batch_norm_eps {
            Some(eps) => {
                for (s, _, want) in &wanted {
                    if *want != eps {
                        notes.push(format!(
                            "warning: model.batch_norm_eps is {eps}, but {} were trained with {want}: the network will not reproduce {}'s outputs",
                            describe(s),
                            s.weights.source().name()
                        ));
                    }
                }
            }
            None => {
                let differs = wanted.iter().find(|(_, arch, want)| {
                    *want != basis_models::MobileNetConfig::new(*arch).batch_norm.eps
                });
                if let Some((first, _, eps)) = differs {
                    if let Some((other, _, theirs)) = wanted.iter().find(|(_, _, w)| w != eps) {
                        return Err(RecipeError::Invalid(format!(
                            "{} need batch-norm eps {eps} and {} need {theirs}: start both stages from one library's weights, or set model.batch_norm_eps",
                            describe(first),
                            describe(other)
                        ))
                        .into());
                    }
                    recipe.model.batch_norm_eps = Some(*eps);
                    notes.push(format!(
                        "note: model.batch_norm_eps = {eps}, the eps {} were trained with",
                        describe(first)
                    ));
                }
            }
        }
        for s in [&self.light, &self.specialist].into_iter().flatten() {
            *s.key.field(&mut recipe.model) = Some(s.weights.path().to_path_buf());
        }
        Ok(notes)
    }

    /// Copy the weights into `model`, freshly built from `recipe`. Returns a line
    /// (`warning: ...`) for each last classifier layer left at a fresh start because its class count differs.
    pub fn apply(&self, model: &Model, recipe: &Recipe) -> Result<Vec<String>, TrainError> {
        let noise = recipe.model.basis_noise.unwrap_or(0.0);
        let mut warnings = Vec::new();
        let mut seed = |s: &Start, net: &MobileNet, noise: f64| -> Result<(), TrainError> {
            let fresh = net.seed_from_pretrained(&s.weights, noise)?;
            if let Some(first) = fresh.first() {
                let theirs = s.weights.shape(first).unwrap_or_default();
                warnings.push(format!(
                    "warning: {} ({}): {} {} for {} classes, the model has {}; this layer starts new",
                    s.key.name(),
                    s.weights.path().display(),
                    if fresh.len() == 1 { "tensor" } else { "tensors" },
                    fresh.join(" and "),
                    theirs.first().copied().unwrap_or_default(),
                    net.config().num_classes
                ));
            }
            Ok(())
        };
        match model {
            Model::Static(net) => {
                if let Some(s) = &self.specialist {
                    seed(s, net, 0.0)?;
                }
            }
            Model::BasisNet(net) => {
                if let Some(s) = &self.light {
                    seed(s, net.lightweight().backbone(), 0.0)?;
                }
                if let Some(s) = &self.specialist {
                    seed(s, net.specialist(), noise)?;
                }
            }
        }
        Ok(warnings)
    }
}
