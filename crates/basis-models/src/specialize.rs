//! Between a specialist and its static twin: bake coefficients into a static network
//! ([`MobileNet::specialize`]), or seed every basis from a static network
//! ([`MobileNet::seed_from`]), so a pretrained torchvision MobileNet starts a specialist.

use crate::basis::BasisSpec;
use crate::checkpoint;
use crate::error::{ModelError, Result};
use crate::mobilenet::MobileNet;
use crate::walk::Part;
use std::path::Path;
use tch::{nn, Kind, Tensor};

impl MobileNet {
    /// A static network (built under `path`, torchvision's names and shapes) whose outputs
    /// equal this specialist's for `coefficients`: one vector (`[N]` or `[1, N]`) per
    /// coefficient vector the specialist reads.
    pub fn specialize(&self, path: &nn::Path, coefficients: &[Tensor]) -> Result<MobileNet> {
        if coefficients.len() != self.num_coefficient_vectors() {
            return Err(ModelError::CoefficientVectors {
                expected: self.num_coefficient_vectors(),
                found: coefficients.len(),
            });
        }
        let mut fixed = MobileNet::new(path, *self.config(), BasisSpec::fixed())?;
        fixed.set_layout(self.layout());
        let copy = |dst: &Tensor, src: &Tensor| -> Result<()> {
            tch::no_grad(|| dst.shallow_clone().f_copy_(src))?;
            Ok(())
        };
        self.with_counterparts(&fixed, |mine, static_twin| match (mine, static_twin) {
            (Part::Weighted(s), Part::Weighted(d)) => {
                let (w, b) = s.weights_for(coefficients)?;
                copy(d.bank.weight(), &w)?;
                if let (Some(db), Some(sb)) = (d.bank.bias(), b) {
                    copy(db, &sb)?;
                }
                Ok(())
            }
            (Part::Norm(s), Part::Norm(d)) => d.copy_from(s),
            _ => Err(kind_mismatch()),
        })?;
        Ok(fixed)
    }

    /// Seed every basis from a static checkpoint of the same configuration (torchvision's
    /// weights saved as safetensors, for example); see [`MobileNet::seed_from`].
    pub fn seed_from_checkpoint(&self, path: &Path, noise: f64) -> Result<()> {
        let vs = nn::VarStore::new(self.device());
        let fixed = MobileNet::new(&vs.root(), *self.config(), BasisSpec::fixed())?;
        checkpoint::load(&vs, path)?;
        self.seed_from(&fixed, noise)
    }

    /// Seed this network from `fixed`, a static network of the same configuration: each
    /// basis becomes `W + noise * std(W) * randn` (`noise = 0` copies exactly), every other
    /// parameter and statistic is copied.
    pub fn seed_from(&self, fixed: &MobileNet, noise: f64) -> Result<()> {
        if self.config() != fixed.config() || !fixed.spec().is_static() {
            return Err(ModelError::Config(format!(
                "can only seed from a static {} of the same configuration, found a {} network ({} bases)",
                self.config().arch,
                fixed.config().arch,
                fixed.spec().num_bases
            )));
        }
        if !(noise.is_finite() && noise >= 0.0) {
            return Err(ModelError::Config(format!(
                "seeding noise must be finite and >= 0, found {noise}"
            )));
        }
        let seed = |bank: &Tensor, plain: &Tensor, bases: i64| -> Result<()> {
            tch::no_grad(|| -> Result<()> {
                let std = if plain.numel() > 1 {
                    plain.f_std(true)?.f_double_value(&[])?
                } else {
                    0.0
                };
                let mut shape = vec![bases];
                shape.extend(plain.size());
                let copies = plain.f_unsqueeze(0)?.f_expand(&shape, false)?;
                let jitter = Tensor::f_randn(&shape, (Kind::Float, plain.device()))?
                    .f_to_kind(plain.f_kind()?)?
                    .f_mul_scalar(noise * std)?;
                bank.shallow_clone()
                    .f_copy_(&copies.f_add(&jitter)?.f_reshape(bank.size())?)?;
                Ok(())
            })
        };
        self.with_counterparts(fixed, |mine, static_twin| match (mine, static_twin) {
            (Part::Weighted(d), Part::Weighted(s)) => {
                let n = d.bank.num_bases();
                seed(d.bank.weight(), s.bank.weight(), n)?;
                if let (Some(db), Some(sb)) = (d.bank.bias(), s.bank.bias()) {
                    seed(db, sb, n)?;
                }
                Ok(())
            }
            (Part::Norm(d), Part::Norm(s)) => d.copy_from(s),
            _ => Err(kind_mismatch()),
        })
    }
}

/// Two networks of one configuration name a convolution and a norm alike only if the
/// builder changed between them.
fn kind_mismatch() -> ModelError {
    ModelError::Config("a layer of one network is a batch norm in the other".into())
}
