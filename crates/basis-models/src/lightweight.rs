//! [`Lightweight`]: the first stage. It previews a low-resolution image, predicts the
//! class, and emits the combination coefficients of the specialist.

use crate::basis::BasisSpec;
use crate::config::MobileNetConfig;
use crate::error::{ModelError, Result};
use crate::mobilenet::MobileNet;
use basis_core::{softmax_with_temperature, timing, BasisLinear, LayerCost};
use tch::{nn, Tensor};

/// A static backbone with its classifier, plus a coefficient head: a linear layer on the
/// pooled features, `vectors * N` outputs, softmax with temperature over each group of `N`.
///
/// Variables: the backbone's (torchvision names) and `coefficient_head.weight`/`.bias`.
#[derive(Debug)]
pub struct Lightweight {
    backbone: MobileNet,
    pub(crate) head: BasisLinear,
    pub(crate) num_bases: i64,
    pub(crate) vectors: usize,
    temperature: f64,
}

/// What the lightweight model returns.
#[derive(Debug)]
pub struct LightweightOutput {
    /// Class logits `[B, classes]`.
    pub logits: Tensor,
    /// `vectors` tensors `[B, N]`, each row a softmax.
    pub coefficients: Vec<Tensor>,
}

impl Lightweight {
    /// A lightweight model under `path` emitting `vectors` coefficient vectors of
    /// `num_bases` entries, with softmax temperature `temperature`.
    pub fn new(
        path: &nn::Path,
        config: MobileNetConfig,
        num_bases: i64,
        vectors: usize,
        temperature: f64,
    ) -> Result<Self> {
        if num_bases < 1 || vectors < 1 {
            return Err(ModelError::Config(format!(
                "the coefficient head needs >= 1 vector of >= 1 basis, found {vectors} of {num_bases}"
            )));
        }
        let backbone = MobileNet::new(path, config, BasisSpec::fixed())?;
        let head = BasisLinear::new(
            &(path / "coefficient_head"),
            backbone.feature_dim(),
            num_bases * vectors as i64,
            1,
            true,
        )?;
        let mut light = Self {
            backbone,
            head,
            num_bases,
            vectors,
            temperature: 1.0,
        };
        light.set_temperature(temperature)?;
        Ok(light)
    }

    /// The backbone.
    pub fn backbone(&self) -> &MobileNet {
        &self.backbone
    }

    /// The backbone, to change its layout.
    pub fn backbone_mut(&mut self) -> &mut MobileNet {
        &mut self.backbone
    }

    /// Softmax temperature of the coefficients.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// Change the temperature (annealing schedules do); finite and > 0.
    pub fn set_temperature(&mut self, temperature: f64) -> Result<()> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(basis_core::BasisError::Temperature(temperature).into());
        }
        self.temperature = temperature;
        Ok(())
    }

    /// Logits and coefficients for low-resolution images `[B, C, h, w]`.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<LightweightOutput> {
        let pooled = self.backbone.features_t(images, &[], train)?;
        let logits = self.backbone.classify_t(&pooled, &[], train)?;
        let batch = pooled.size()[0];
        let alpha = timing::stage("coefficient head", || -> Result<Tensor> {
            let z = self.head.forward_static(&pooled)?.f_reshape([
                batch,
                self.vectors as i64,
                self.num_bases,
            ])?;
            timing::span(
                || "softmax with temperature".into(),
                || Ok(softmax_with_temperature(&z, self.temperature)?),
            )
        })?;
        let coefficients = (0..self.vectors as i64)
            .map(|v| alpha.f_select(1, v).map_err(ModelError::from))
            .collect::<Result<_>>()?;
        Ok(LightweightOutput {
            logits,
            coefficients,
        })
    }

    /// Cost of the coefficient head for one sample.
    pub fn head_cost(&self) -> LayerCost {
        self.head.cost()
    }
}
