//! [`Model`]: what a recipe trains, a BasisNet or a static network of one of its two
//! architectures, with one named output ([`ModelOutput`]) and cost ([`Cost`]) for both.

use crate::data::Batch;
use crate::error::TrainError;
use crate::recipe::Recipe;
use crate::schedule::Phase;
use basis_models::{BasisNet, BasisSpec, MobileNet};
use tch::{nn, Tensor};

/// The model a recipe trains: a BasisNet, or its specialist backbone alone (baseline).
pub enum Model {
    /// Lightweight model + specialist.
    BasisNet(Box<BasisNet>),
    /// The static network of the specialist's architecture (the `N = 1` case).
    Static(MobileNet),
}

/// What a [`Model`] gives for a batch.
#[derive(Debug)]
pub struct ModelOutput {
    /// The lightweight model's logits `[B, classes]` (a BasisNet only).
    pub light_logits: Option<Tensor>,
    /// The specialist's (or static network's) logits `[B, classes]`.
    pub specialist_logits: Tensor,
    /// The coefficient vectors `[B, N]` the specialist was synthesized with (none for a
    /// static network).
    pub coefficients: Vec<Tensor>,
}

/// Multiply-adds per image of a [`Model`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// The lightweight stage (backbone, classifier, coefficient head); 0 for a static
    /// network.
    pub light_madds: i64,
    /// An image through everything (both stages and the synthesis).
    pub full_madds: i64,
}

impl Model {
    /// Build the model of `recipe` under `path`.
    ///
    /// ```
    /// use basis_train::{Model, Recipe};
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// let model = Model::build(&vs.root(), &Recipe::load("fashion-quick")?)?;
    /// assert!(model.is_basisnet());
    /// let cost = model.cost(28)?;
    /// assert!(0 < cost.light_madds && cost.light_madds < cost.full_madds);
    /// # Ok::<(), basis_train::TrainError>(())
    /// ```
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

    /// The device its variables live on.
    pub fn device(&self) -> tch::Device {
        match self {
            Model::BasisNet(net) => net.specialist().device(),
            Model::Static(net) => net.device(),
        }
    }

    /// Whether this is a BasisNet (with a lightweight stage and early exit).
    pub fn is_basisnet(&self) -> bool {
        matches!(self, Model::BasisNet(_))
    }

    /// The two-stage forward pass of a batch (per-image coefficients).
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Result<ModelOutput, TrainError> {
        self.forward_in(batch, train, Phase::Joint)
    }

    /// The forward pass in a training phase: in [`Phase::StaticWarmup`] a BasisNet's
    /// specialist runs with the mean of its bases ([`BasisNet::forward_mean_t`]).
    pub fn forward_in(
        &self,
        batch: &Batch,
        train: bool,
        phase: Phase,
    ) -> Result<ModelOutput, TrainError> {
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
                ModelOutput {
                    light_logits: Some(out.light_logits),
                    specialist_logits: out.specialist_logits,
                    coefficients: out.coefficients,
                }
            }
            Model::Static(net) => ModelOutput {
                light_logits: None,
                specialist_logits: net.forward_t(&batch.images, &[], train)?,
                coefficients: Vec::new(),
            },
        })
    }

    /// Multiply-adds per image at `resolution` (a static network's input size; a
    /// BasisNet knows its own resolutions).
    pub fn cost(&self, resolution: i64) -> Result<Cost, TrainError> {
        Ok(match self {
            Model::BasisNet(net) => {
                let p = net.profile();
                Cost {
                    light_madds: p.lightweight_stage_madds(),
                    full_madds: p.total_madds(),
                }
            }
            Model::Static(net) => Cost {
                light_madds: 0,
                full_madds: net.profile(resolution)?.total.madds,
            },
        })
    }
}
