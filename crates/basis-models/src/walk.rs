//! One traversal of a MobileNet: every layer in forward order, with its role, its kind and
//! the module path of its variables. The profile, `specialize`, seeding from a static
//! network, the resolution check and the public layer list all walk it, so a new block
//! kind is one edit here.

use crate::batch_norm::BatchNorm2d;
use crate::config::MAX_RESOLUTION;
use crate::error::{vector, ModelError, Result};
use crate::layers::{Conv, ConvBnAct, Linear};
use crate::mobilenet::{Feature, MobileNet};
use basis_core::KernelBank;
use serde::Serialize;
use std::collections::BTreeMap;
use tch::Tensor;

/// What a layer of a MobileNet does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// The stem convolution or the last 1x1 convolution (conv + BN + activation).
    Conv,
    /// The 1x1 expansion of an inverted residual.
    Expand,
    /// The depthwise convolution of an inverted residual.
    Depthwise,
    /// One 1x1 convolution of a squeeze-excite (`fc1` or `fc2`).
    SqueezeExcite,
    /// The 1x1 projection of an inverted residual.
    Project,
    /// A linear layer of the classifier.
    Classifier,
}

/// One layer of a MobileNet, as [`MobileNet::layers`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    /// Its role, torchvision-style (`features.3.depthwise`, `features.4.se.fc1`).
    pub role: String,
    /// What it does.
    pub kind: LayerKind,
    /// Its trainable variables, as the variable store and safetensors files name them
    /// (`features.3.block.1.0.weight`, ...; prefixed by the network's path).
    pub variables: Vec<String>,
    /// Bases `N` of its weights (1 for a static layer).
    pub num_bases: i64,
}

/// The layer a walk step holds.
pub(crate) enum Unit<'a> {
    /// Convolution, batch norm, activation.
    ConvBnAct(&'a ConvBnAct),
    /// A squeeze-excite convolution (with bias, no norm).
    SqueezeExcite(&'a Conv),
    /// A classifier layer.
    Linear(&'a Linear),
}

/// One step of the walk.
pub(crate) struct Step<'a> {
    pub(crate) role: String,
    pub(crate) kind: LayerKind,
    pub(crate) unit: Unit<'a>,
    /// A projection whose block adds its input to its output (the residual).
    pub(crate) adds_input: bool,
}

/// A convolution or linear layer: its module path, bases and coefficient vector.
pub(crate) struct Weighted<'a> {
    pub(crate) name: &'a str,
    pub(crate) bank: &'a KernelBank,
    pub(crate) vector: Option<usize>,
}

impl Weighted<'_> {
    /// Plain weight and bias for `coefficients` (the stored ones for a static layer).
    pub(crate) fn weights_for(&self, coefficients: &[Tensor]) -> Result<(Tensor, Option<Tensor>)> {
        let alpha = self.vector.map(|v| vector(coefficients, v)).transpose()?;
        Ok(self.bank.weights_for(alpha)?)
    }
}

/// A part of a network with variables: a weighted layer or a batch norm.
pub(crate) enum Part<'a> {
    Weighted(Weighted<'a>),
    Norm(&'a BatchNorm2d),
}

impl<'a> Step<'a> {
    /// The weighted layer of the step.
    pub(crate) fn weighted(&self) -> Weighted<'a> {
        match self.unit {
            Unit::ConvBnAct(l) => conv_weighted(&l.conv),
            Unit::SqueezeExcite(c) => conv_weighted(c),
            Unit::Linear(l) => Weighted {
                name: &l.name,
                bank: l.linear.bank(),
                vector: l.vector,
            },
        }
    }

    /// The batch norm of the step, if any.
    pub(crate) fn norm(&self) -> Option<&'a BatchNorm2d> {
        match self.unit {
            Unit::ConvBnAct(l) => Some(&l.bn),
            _ => None,
        }
    }

    /// The step's trainable variables, as the variable store names them.
    pub(crate) fn variables(&self) -> Vec<String> {
        let w = self.weighted();
        let mut out = vec![format!("{}.weight", w.name)];
        if w.bank.bias().is_some() {
            out.push(format!("{}.bias", w.name));
        }
        if let Some(n) = self.norm() {
            out.push(format!("{}.weight", n.name()));
            out.push(format!("{}.bias", n.name()));
        }
        out
    }
}

fn conv_weighted(c: &Conv) -> Weighted<'_> {
    Weighted {
        name: &c.name,
        bank: c.conv.bank(),
        vector: c.vector,
    }
}

impl MobileNet {
    /// The smallest input side the network takes: each stride-2 layer must see at least
    /// two pixels (17 px for every MobileNet: 17 -> 9 -> 5 -> 3 -> 2 -> 1).
    pub fn min_resolution(&self) -> i64 {
        let strides = self.stride2_layers();
        (1i64 << (strides - 1)) + 1
    }

    fn stride2_layers(&self) -> u32 {
        self.walk()
            .iter()
            .filter(
                |s| matches!(s.unit, Unit::ConvBnAct(l) if l.conv.conv.geometry().stride[0] == 2),
            )
            .count() as u32
    }

    pub(crate) fn check_resolution(&self, side: i64) -> Result<()> {
        if side > MAX_RESOLUTION {
            return Err(ModelError::Config(format!(
                "an input side of {side} px is refused: networks here take at most {MAX_RESOLUTION} px"
            )));
        }
        let min = self.min_resolution();
        if side < min {
            return Err(ModelError::Resolution {
                arch: self.config().arch.name().into(),
                strides: self.stride2_layers(),
                min,
                found: side,
            });
        }
        Ok(())
    }

    /// Every layer in forward order.
    pub(crate) fn walk(&self) -> Vec<Step<'_>> {
        let step = |role: String, kind, unit| Step {
            role,
            kind,
            unit,
            adds_input: false,
        };
        let mut out = Vec::new();
        for feature in &self.features {
            match feature {
                Feature::Conv(name, l) => {
                    out.push(step(name.clone(), LayerKind::Conv, Unit::ConvBnAct(l)))
                }
                Feature::Block(b) => {
                    if let Some(l) = &b.expand {
                        let role = format!("{}.expand", b.name);
                        out.push(step(role, LayerKind::Expand, Unit::ConvBnAct(l)));
                    }
                    let role = format!("{}.depthwise", b.name);
                    out.push(step(
                        role,
                        LayerKind::Depthwise,
                        Unit::ConvBnAct(&b.depthwise),
                    ));
                    if let Some(se) = &b.se {
                        for (fc, conv) in [("fc1", &se.fc1), ("fc2", &se.fc2)] {
                            let role = format!("{}.se.{fc}", b.name);
                            out.push(step(
                                role,
                                LayerKind::SqueezeExcite,
                                Unit::SqueezeExcite(conv),
                            ));
                        }
                    }
                    let role = format!("{}.project", b.name);
                    out.push(Step {
                        adds_input: b.residual,
                        ..step(role, LayerKind::Project, Unit::ConvBnAct(&b.project))
                    });
                }
            }
        }
        for (name, l) in &self.classifier {
            out.push(step(name.clone(), LayerKind::Classifier, Unit::Linear(l)));
        }
        out
    }

    /// Every layer in forward order: role, kind, variables and bases.
    ///
    /// ```
    /// use basis_models::{Arch, BasisSpec, LayerKind, MobileNet, MobileNetConfig};
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// let config = MobileNetConfig::new(Arch::MobilenetV3Small);
    /// let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed())?;
    /// let layers = net.layers();
    /// assert_eq!(layers[1].role, "features.1.depthwise"); // 16 -> 16: no expansion
    /// assert_eq!(layers[2].role, "features.1.se.fc1");
    /// assert_eq!(layers[2].kind, LayerKind::SqueezeExcite);
    /// assert_eq!(layers[2].variables, ["features.1.block.1.fc1.weight", "features.1.block.1.fc1.bias"]);
    /// // Every variable of the network belongs to exactly one layer.
    /// let listed: usize = layers.iter().map(|l| l.variables.len()).sum();
    /// assert_eq!(listed, vs.trainable_variables().len());
    /// # Ok::<(), basis_models::ModelError>(())
    /// ```
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.walk()
            .iter()
            .map(|s| LayerInfo {
                role: s.role.clone(),
                kind: s.kind,
                variables: s.variables(),
                num_bases: s.weighted().bank.num_bases(),
            })
            .collect()
    }

    /// Every weighted layer and batch norm in forward order, with its module path relative
    /// to the network (torchvision's names whatever path the network was built under).
    pub(crate) fn parts(&self) -> Vec<(String, Part<'_>)> {
        let mut out = Vec::new();
        for step in self.walk() {
            let w = step.weighted();
            out.push((self.relative(w.name).to_string(), Part::Weighted(w)));
            if let Some(n) = step.norm() {
                out.push((self.relative(n.name()).to_string(), Part::Norm(n)));
            }
        }
        out
    }

    /// Visit the parts of this network in forward order with the parts of the same name in
    /// `other`: a network built from the same configuration has the same names; any other
    /// is an error naming the first part without a counterpart.
    pub(crate) fn with_counterparts(
        &self,
        other: &MobileNet,
        mut f: impl FnMut(Part<'_>, Part<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut theirs: BTreeMap<String, Part<'_>> = other.parts().into_iter().collect();
        for (name, mine) in self.parts() {
            let counterpart = theirs.remove(&name).ok_or_else(|| {
                ModelError::Config(format!(
                    "{name} of one network has no counterpart in the other"
                ))
            })?;
            f(mine, counterpart)?;
        }
        Ok(())
    }

    fn relative<'n>(&self, name: &'n str) -> &'n str {
        match name.strip_prefix(self.prefix.as_str()) {
            Some(rest) if !self.prefix.is_empty() => rest.trim_start_matches('.'),
            _ => name,
        }
    }
}
