//! [`BasisNet`]: lightweight model + specialist + the two resolutions, with early exit.

use crate::basis::BasisSpec;
use crate::checkpoint::{self, Metadata};
use crate::config::MobileNetConfig;
use crate::early_exit::{self, EarlyExitOutput, Stage};
use crate::error::{ModelError, Result};
use crate::lightweight::Lightweight;
use crate::mobilenet::MobileNet;
use crate::profile::Profile;
use basis_core::{timing, BasisDropout};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// The metadata key under which a BasisNet checkpoint records its configuration.
pub const CONFIG_KEY: &str = "basisnet_config";

/// Everything that defines a BasisNet.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BasisNetConfig {
    /// The lightweight backbone.
    pub lightweight: MobileNetConfig,
    /// The lightweight model's input side in pixels.
    pub lightweight_resolution: i64,
    /// The specialist backbone.
    pub specialist: MobileNetConfig,
    /// The specialist's input side in pixels.
    pub resolution: i64,
    /// Bases, basis layers and coefficient scope of the specialist.
    pub basis: BasisSpec,
    /// Softmax temperature of the coefficients.
    pub temperature: f64,
    /// Probability of dropping each basis during training.
    pub basis_dropout: f64,
}

impl BasisNetConfig {
    /// One line: `lightweight mobilenet_v3_large 1 at 128 px, specialist ... N = 8`.
    pub fn describe(&self) -> String {
        format!(
            "lightweight {} {} at {} px, specialist {} {} at {} px, N = {}, {} classes",
            self.lightweight.arch,
            self.lightweight.width,
            self.lightweight_resolution,
            self.specialist.arch,
            self.specialist.width,
            self.resolution,
            self.basis.num_bases,
            self.specialist.num_classes
        )
    }
}

/// What a training forward pass returns.
#[derive(Debug)]
pub struct BasisNetOutput {
    /// The lightweight model's logits `[B, classes]`.
    pub light_logits: Tensor,
    /// The coefficient vectors `[B, N]` the specialist used (after basis dropout).
    pub coefficients: Vec<Tensor>,
    /// The specialist's logits `[B, classes]`.
    pub specialist_logits: Tensor,
}

/// The cost of a BasisNet, by part, for one sample.
#[derive(Debug, Clone, Serialize)]
pub struct BasisNetProfile {
    /// The lightweight backbone and classifier at its resolution.
    pub lightweight: Profile,
    /// The coefficient head.
    pub coefficient_head_madds: i64,
    /// The specialist at full resolution (the same count as its static twin).
    pub specialist: Profile,
    /// Kernel synthesis: `N * P_basis` for every basis layer.
    pub synthesis_madds: i64,
    /// Parameters of the whole model.
    pub params: i64,
}

impl BasisNetProfile {
    /// MAdds of the lightweight stage (backbone, classifier, coefficient head).
    pub fn lightweight_stage_madds(&self) -> i64 {
        self.lightweight.total.madds + self.coefficient_head_madds
    }

    /// MAdds of a sample that goes through both stages.
    pub fn total_madds(&self) -> i64 {
        self.lightweight_stage_madds() + self.specialist.total.madds + self.synthesis_madds
    }

    /// Average MAdds per sample when a fraction `exit_rate` exits after the first stage.
    pub fn average_madds(&self, exit_rate: f64) -> f64 {
        early_exit::average_madds(
            self.lightweight_stage_madds(),
            self.total_madds(),
            exit_rate,
        )
    }
}

/// A BasisNet: variables `lightweight.*` and `specialist.*` (each as torchvision names
/// its MobileNet, plus `lightweight.coefficient_head.*`).
///
/// ```
/// use basis_models::{presets, BasisNet};
/// use tch::{nn, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let net = BasisNet::new(&vs.root(), presets::get("basisnet-fashion")?)?;
/// let images = Tensor::rand([4, 1, 28, 28], (Kind::Float, Device::Cpu));
/// let out = net.forward_t(&net.lightweight_input(&images)?, &images, true)?;
/// assert_eq!(out.specialist_logits.size(), [4, 10]);
/// // Early exit: threshold 0 lets every sample stop after the lightweight stage.
/// let exit = net.early_exit(&net.lightweight_input(&images)?, &images, 0.0)?;
/// assert!(exit.stages.iter().all(|s| *s == basis_models::Stage::Lightweight));
/// # Ok::<(), basis_models::ModelError>(())
/// ```
#[derive(Debug)]
pub struct BasisNet {
    config: BasisNetConfig,
    lightweight: Lightweight,
    specialist: MobileNet,
    dropout: BasisDropout,
    profile: BasisNetProfile,
}

impl BasisNet {
    /// Build under `path`.
    pub fn new(path: &nn::Path, config: BasisNetConfig) -> Result<Self> {
        if config.basis.num_bases < 2 {
            return Err(ModelError::Config(format!(
                "a BasisNet needs >= 2 bases, found {} (train the static network on its own)",
                config.basis.num_bases
            )));
        }
        if config.lightweight.num_classes != config.specialist.num_classes
            || config.lightweight.in_channels != config.specialist.in_channels
        {
            return Err(ModelError::Config(format!(
                "both stages must see the same images and classes: lightweight {} channels / {} classes, specialist {} / {}",
                config.lightweight.in_channels,
                config.lightweight.num_classes,
                config.specialist.in_channels,
                config.specialist.num_classes
            )));
        }
        let specialist = MobileNet::new(&(path / "specialist"), config.specialist, config.basis)?;
        let lightweight = Lightweight::new(
            &(path / "lightweight"),
            config.lightweight,
            config.basis.num_bases,
            specialist.num_coefficient_vectors(),
            config.temperature,
        )?;
        let dropout = BasisDropout::new(config.basis_dropout)?;
        let light_profile = lightweight
            .backbone()
            .profile(config.lightweight_resolution)?;
        let specialist_profile = specialist.profile(config.resolution)?;
        let head = lightweight.head_cost();
        let profile = BasisNetProfile {
            params: light_profile.total.params + head.params + specialist_profile.total.params,
            coefficient_head_madds: head.madds,
            synthesis_madds: specialist_profile.total.synthesis_madds,
            lightweight: light_profile,
            specialist: specialist_profile,
        };
        Ok(Self {
            config,
            lightweight,
            specialist,
            dropout,
            profile,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &BasisNetConfig {
        &self.config
    }

    /// The first stage.
    pub fn lightweight(&self) -> &Lightweight {
        &self.lightweight
    }

    /// The first stage, to change its temperature or layout.
    pub fn lightweight_mut(&mut self) -> &mut Lightweight {
        &mut self.lightweight
    }

    /// The second stage.
    pub fn specialist(&self) -> &MobileNet {
        &self.specialist
    }

    /// The second stage, to change its layout.
    pub fn specialist_mut(&mut self) -> &mut MobileNet {
        &mut self.specialist
    }

    /// Cost by part, for one sample.
    pub fn profile(&self) -> &BasisNetProfile {
        &self.profile
    }

    /// The lightweight model's copy of full-resolution `images`: bilinear resize (with
    /// antialiasing) to the lightweight resolution. Data pipelines that crop both
    /// resolutions themselves pass their own.
    pub fn lightweight_input(&self, images: &Tensor) -> Result<Tensor> {
        let r = self.config.lightweight_resolution;
        let size = images.size();
        if size.len() == 4 && size[2] == r && size[3] == r {
            return Ok(images.shallow_clone());
        }
        if size.len() != 4 {
            return Err(ModelError::Input {
                what: "images",
                expected: "[batch, channels, height, width]".into(),
                found: format!("{size:?}"),
            });
        }
        // libtorch's antialiased resize has no bf16/f16 CPU kernel: resize in fp32.
        let kind = images.f_kind()?;
        timing::stage("lightweight", || {
            timing::span(
                || "antialiased resize".into(),
                || {
                    let resized = match kind {
                        Kind::Float | Kind::Double => images.shallow_clone(),
                        _ => images.f_to_kind(Kind::Float)?,
                    }
                    .f_internal_upsample_bilinear2d_aa(
                        [r, r],
                        false,
                        None,
                        None,
                    )?;
                    Ok(resized.f_to_kind(kind)?)
                },
            )
        })
    }

    /// Training forward: lightweight logits, coefficients (with basis dropout when
    /// `train`), specialist logits.
    pub fn forward_t(
        &self,
        light_images: &Tensor,
        images: &Tensor,
        train: bool,
    ) -> Result<BasisNetOutput> {
        self.forward_with(light_images, images, train, |c| {
            self.dropout.forward_t(c, train).map_err(ModelError::from)
        })
    }

    /// Static warm-up forward: the lightweight model as in [`BasisNet::forward_t`], and the
    /// specialist with the mean of its bases for every image (one uniform coefficient row
    /// `[1, N]`, run as one shared kernel, at the cost of a static network). Training
    /// this way moves every basis by the same step, so the specialist starts its
    /// per-image phase as a trained static network whose bases differ by their initial
    /// noise; the coefficient head gets no gradient. The returned coefficients are the
    /// uniform rows.
    ///
    /// ```
    /// use basis_models::{presets, BasisNet};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let net = BasisNet::new(&vs.root(), presets::get("basisnet-fashion")?)?;
    /// let images = Tensor::rand([3, 1, 28, 28], (Kind::Float, Device::Cpu));
    /// let light = net.lightweight_input(&images)?;
    /// let out = net.forward_mean_t(&light, &images, false)?;
    /// assert_eq!(out.coefficients[0].size(), [1, 4]);
    /// assert_eq!(out.specialist_logits.size(), [3, 10]);
    /// # Ok::<(), basis_models::ModelError>(())
    /// ```
    pub fn forward_mean_t(
        &self,
        light_images: &Tensor,
        images: &Tensor,
        train: bool,
    ) -> Result<BasisNetOutput> {
        self.forward_with(light_images, images, train, |c| {
            let n = c.size()[1];
            Ok(Tensor::f_full(
                [1, n],
                1.0 / n as f64,
                (c.kind(), c.device()),
            )?)
        })
    }

    /// Both stages, the specialist with `coefficients` applied to each of the lightweight
    /// model's coefficient vectors.
    fn forward_with(
        &self,
        light_images: &Tensor,
        images: &Tensor,
        train: bool,
        coefficients: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<BasisNetOutput> {
        self.check_batch(light_images, images)?;
        let light = timing::stage("lightweight", || {
            self.lightweight.forward_t(light_images, train)
        })?;
        let coefficients = light
            .coefficients
            .iter()
            .map(coefficients)
            .collect::<Result<Vec<_>>>()?;
        let specialist_logits = timing::stage("specialist", || {
            self.specialist.forward_t(images, &coefficients, train)
        })?;
        Ok(BasisNetOutput {
            light_logits: light.logits,
            coefficients,
            specialist_logits,
        })
    }

    /// Early-exit inference (evaluation mode, no gradients). A sample whose lightweight
    /// max softmax probability is `>= threshold` stops after the first stage; only the
    /// others are gathered and run through the specialist. `threshold <= 0` lets every
    /// sample exit; `threshold > 1` none.
    pub fn early_exit(
        &self,
        light_images: &Tensor,
        images: &Tensor,
        threshold: f64,
    ) -> Result<EarlyExitOutput> {
        if threshold.is_nan() {
            return Err(ModelError::Config("early-exit threshold is NaN".into()));
        }
        self.check_batch(light_images, images)?;
        tch::no_grad(|| {
            let light = timing::stage("lightweight", || {
                self.lightweight.forward_t(light_images, false)
            })?;
            let confidence = timing::span(
                || "exit decision".into(),
                || early_exit::confidence(&light.logits),
            )?;
            let exits: Vec<bool> = Vec::<f32>::try_from(&confidence)?
                .into_iter()
                .map(|p| early_exit::exits(f64::from(p), threshold))
                .collect();
            let rest: Vec<i64> = (0..exits.len() as i64)
                .filter(|&i| !exits[i as usize])
                .collect();
            let light_madds = self.profile.lightweight_stage_madds();
            let full_madds = self.profile.total_madds();
            let mut logits = light.logits.shallow_clone();
            if !rest.is_empty() {
                let index = Tensor::from_slice(&rest).f_to_device(images.device())?;
                let gather = || "gather and scatter of the specialist's images".to_string();
                let (subset, alphas) = timing::span(gather, || -> Result<_> {
                    let alphas = light
                        .coefficients
                        .iter()
                        .map(|c| c.f_index_select(0, &index).map_err(ModelError::from))
                        .collect::<Result<Vec<_>>>()?;
                    Ok((images.f_index_select(0, &index)?, alphas))
                })?;
                let special = timing::stage("specialist", || {
                    self.specialist.forward_t(&subset, &alphas, false)
                })?;
                logits = timing::span(gather, || {
                    logits.f_index_copy(0, &index, &special.f_to_kind(logits.f_kind()?)?)
                })?;
            }
            Ok(EarlyExitOutput {
                logits,
                stages: exits
                    .iter()
                    .map(|&e| {
                        if e {
                            Stage::Lightweight
                        } else {
                            Stage::Specialist
                        }
                    })
                    .collect(),
                madds: exits
                    .iter()
                    .map(|&e| if e { light_madds } else { full_madds })
                    .collect(),
            })
        })
    }

    /// Save the variables of `vs` (the store this BasisNet was built in) with the
    /// configuration in the file's metadata.
    pub fn save(&self, vs: &nn::VarStore, path: &Path) -> Result<()> {
        let config = serde_json::to_string(&self.config)
            .map_err(|e| ModelError::Config(format!("could not encode the configuration: {e}")))?;
        let metadata = Metadata::from([(CONFIG_KEY.to_string(), config)]);
        checkpoint::save(vs, path, &metadata)
    }

    /// Load a checkpoint into `vs`: refused, with both descriptions, when it was saved from
    /// a BasisNet of another configuration; refused, naming the tensor, when a tensor is
    /// missing, extra or misshapen. Nothing is changed on refusal.
    pub fn load(&self, vs: &nn::VarStore, path: &Path) -> Result<()> {
        let (tensors, metadata) = checkpoint::read(path)?;
        if let Some(saved) = metadata.get(CONFIG_KEY) {
            let saved: BasisNetConfig =
                serde_json::from_str(saved).map_err(|e| ModelError::Checkpoint {
                    path: path.display().to_string(),
                    problem: format!("unreadable {CONFIG_KEY} metadata ({e})"),
                })?;
            if saved != self.config {
                return Err(ModelError::Checkpoint {
                    path: path.display().to_string(),
                    problem: format!(
                        "saved from a BasisNet of {}; this model is {}",
                        saved.describe(),
                        self.config.describe()
                    ),
                });
            }
        }
        checkpoint::assign(vs, path, &tensors)
    }

    fn check_batch(&self, light_images: &Tensor, images: &Tensor) -> Result<()> {
        let (a, b) = (light_images.size(), images.size());
        if a.first() != b.first() {
            return Err(ModelError::Input {
                what: "lightweight images",
                expected: format!("the batch of the full-resolution images ({:?})", b.first()),
                found: format!("{:?}", a.first()),
            });
        }
        Ok(())
    }
}
