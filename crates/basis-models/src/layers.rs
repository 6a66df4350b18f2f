//! The pieces of a MobileNet: convolution and linear layers (static or basis), conv + BN +
//! activation, squeeze-excite. Every convolution is a [`BasisConv2d`]: one basis for a
//! static layer, `N` for a basis layer.

use crate::arch::Act;
use crate::batch_norm::{BatchNorm2d, BatchNormSpec};
use crate::error::Result;
use crate::names::module_name;
use basis_core::timing;
use basis_core::{Activation, BasisConv2d, BasisLinear, Conv2dGeometry, LayerCost};
use tch::{nn, Tensor};

/// Apply a nonlinearity; in place when `x` needs no gradient (inference), as
/// torchvision's `inplace=True` activations do, which saves one activation-sized
/// allocation (and its page faults) per layer.
pub fn activate(x: Tensor, act: Option<Act>) -> Result<Tensor> {
    if act.is_none() {
        return Ok(x);
    }
    timing::span(|| "activation".into(), || Ok(activation(act).apply(x)?))
}

/// The activation as basis-core applies it (and fuses it into a convolution).
pub fn activation(act: Option<Act>) -> Activation {
    match act {
        None => Activation::Identity,
        Some(Act::Relu) => Activation::Relu,
        Some(Act::Relu6) => Activation::RELU6,
        Some(Act::Hardswish) => Activation::Hardswish,
    }
}

/// The coefficient vectors of one forward pass, `[B, N]` each (or `[1, N]` for one
/// vector shared by the batch), indexed by the layers' `vector`.
pub type CoefficientVectors<'a> = &'a [Tensor];

/// `(N, vector)` of a basis layer, or `(1, None)` for a static one.
fn split_basis(basis: Option<(i64, usize)>) -> (i64, Option<usize>) {
    match basis {
        Some((n, v)) if n > 1 => (n, Some(v)),
        _ => (1, None),
    }
}

/// A convolution that is either static (one basis) or a basis layer reading one of the
/// coefficient vectors.
#[derive(Debug)]
pub struct Conv {
    pub(crate) name: String,
    pub(crate) conv: BasisConv2d,
    pub(crate) vector: Option<usize>,
}

impl Conv {
    /// A convolution under `path`; a basis layer when `basis` gives `(N, vector)`.
    pub fn new(
        path: &nn::Path,
        geometry: Conv2dGeometry,
        bias: bool,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let (n, vector) = split_basis(basis);
        Ok(Self {
            name: module_name(path),
            conv: BasisConv2d::new(path, geometry, n, bias)?,
            vector,
        })
    }

    /// Apply, with this layer's coefficient vector when it is a basis layer.
    pub fn forward(&self, x: &Tensor, coefficients: CoefficientVectors) -> Result<Tensor> {
        match self.vector {
            None => Ok(self.conv.forward_static(x)?),
            Some(v) => Ok(self
                .conv
                .forward(x, crate::error::vector(coefficients, v)?)?),
        }
    }

    /// Apply, then `act`: in inference one fused pass where `basis_core::fused` applies
    /// (a squeeze-excite gate's 1x1 layers with their ReLU and hard sigmoid).
    pub fn forward_act(
        &self,
        x: &Tensor,
        coefficients: CoefficientVectors,
        act: Activation,
    ) -> Result<Tensor> {
        let coefficients = self.coefficients(coefficients)?;
        Ok(self.conv.forward_fused(x, coefficients, None, act)?)
    }

    /// This layer's coefficient vector (`None` for a static layer).
    fn coefficients<'a>(&self, vectors: CoefficientVectors<'a>) -> Result<Option<&'a Tensor>> {
        self.vector
            .map(|v| crate::error::vector(vectors, v))
            .transpose()
    }

    /// The layer's cost on an `h x w` input.
    pub fn cost(&self, input_hw: (i64, i64)) -> Result<LayerCost> {
        Ok(self.conv.cost(input_hw)?)
    }
}

/// A linear layer that is static or a basis layer.
#[derive(Debug)]
pub struct Linear {
    pub(crate) name: String,
    pub(crate) linear: BasisLinear,
    pub(crate) vector: Option<usize>,
}

impl Linear {
    /// A linear layer under `path`, initialized as torchvision's MobileNets do
    /// (weights `N(0, 0.01)`, bias zero).
    pub fn new(
        path: &nn::Path,
        in_features: i64,
        out_features: i64,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let (n, vector) = split_basis(basis);
        let linear = BasisLinear::new(path, in_features, out_features, n, true)?;
        tch::no_grad(|| -> Result<()> {
            let _ = linear
                .bank()
                .weight()
                .shallow_clone()
                .f_normal_(0.0, 0.01)?;
            linear
                .bank()
                .bias()
                .map(|b| b.shallow_clone().f_zero_())
                .transpose()?;
            Ok(())
        })?;
        Ok(Self {
            name: module_name(path),
            linear,
            vector,
        })
    }

    /// Apply, with this layer's coefficient vector when it is a basis layer.
    pub fn forward(&self, x: &Tensor, coefficients: CoefficientVectors) -> Result<Tensor> {
        match self.vector {
            None => Ok(self.linear.forward_static(x)?),
            Some(v) => Ok(self
                .linear
                .forward(x, crate::error::vector(coefficients, v)?)?),
        }
    }

    /// The layer's cost for one sample.
    pub fn cost(&self) -> LayerCost {
        self.linear.cost()
    }

    /// The underlying basis layer.
    pub fn layer(&self) -> &BasisLinear {
        &self.linear
    }
}

/// torchvision's `Conv2dNormActivation`: convolution (no bias), batch norm, activation.
#[derive(Debug)]
pub struct ConvBnAct {
    pub(crate) conv: Conv,
    pub(crate) bn: BatchNorm2d,
    pub(crate) act: Option<Act>,
}

impl ConvBnAct {
    /// Convolution at `conv_path`, batch norm at `bn_path` (torchvision nests them as
    /// `.0` and `.1`, except MobileNetV2's projection, which sits beside its norm).
    pub fn new(
        conv_path: &nn::Path,
        bn_path: &nn::Path,
        geometry: Conv2dGeometry,
        bn: BatchNormSpec,
        act: Option<Act>,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let conv = Conv::new(conv_path, geometry, false, basis)?;
        kaiming_normal_fan_out(&conv.conv)?;
        Ok(Self {
            conv,
            bn: BatchNorm2d::new(bn_path, geometry.out_channels, bn)?,
            act,
        })
    }

    /// Convolution, normalization, activation. In evaluation the normalization is folded
    /// into the layer when the output is larger than what the fold rewrites: a static
    /// layer's kernel, a basis layer's `N` kernels (scaled before synthesis, the shift in
    /// each sample's bias); the fold saves a pass over the output, and the activation then
    /// runs inside the convolution where oneDNN can fuse it (`basis_core::fused`), which
    /// saves another.
    pub fn forward_t(
        &self,
        x: &Tensor,
        coefficients: CoefficientVectors,
        train: bool,
    ) -> Result<Tensor> {
        if !train && self.folds(x) {
            let (scale, shift) = self.bn.inference_affine()?;
            let coefficients = self.conv.coefficients(coefficients)?;
            return Ok(self.conv.conv.forward_fused(
                x,
                coefficients,
                Some((&scale, &shift)),
                activation(self.act),
            )?);
        }
        let y = self.conv.forward(x, coefficients)?;
        let y = timing::span(|| "batch norm".into(), || self.bn.forward_t(&y, train))?;
        activate(y, self.act)
    }

    /// [`ConvBnAct::forward_t`] plus `residual` (the block's input; this layer has no
    /// activation): in evaluation, where the batch norm folds, a static layer adds its
    /// convolution into `residual`'s memory in the same oneDNN pass, so `residual` must
    /// not be read afterwards.
    pub fn forward_t_add(
        &self,
        x: &Tensor,
        coefficients: CoefficientVectors,
        train: bool,
        residual: &Tensor,
    ) -> Result<Tensor> {
        if !train && self.act.is_none() && self.folds(x) {
            let (scale, shift) = self.bn.inference_affine()?;
            let coefficients = self.conv.coefficients(coefficients)?;
            let affine = Some((&scale, &shift));
            let fused = self
                .conv
                .conv
                .forward_fused_add(x, coefficients, affine, residual);
            return Ok(fused?);
        }
        let y = self.forward_t(x, coefficients, train)?;
        Ok(basis_core::fused::add_residual(y, residual)?)
    }

    /// Whether an evaluation pass folds the batch norm into the convolution.
    fn folds(&self, x: &Tensor) -> bool {
        // Frozen, a static layer on a channels_last input folds once (its kernel is kept
        // prepacked) and a basis layer keeps its folded bank, so folding always pays there.
        let kept = basis_core::frozen::is_frozen()
            && (self.conv.vector.is_some() || basis_core::is_channels_last(x));
        kept || self.folding_pays(x)
    }

    /// Whether an output of `x`'s batch and size holds more values per channel than one
    /// output channel of the bank (`B * H_out * W_out >= N * Cin/g * kh * kw`).
    fn folding_pays(&self, x: &Tensor) -> bool {
        let g = self.conv.conv.geometry();
        let &[b, _, h, w] = x.size().as_slice() else {
            return false;
        };
        let per_channel = self.conv.conv.bank().num_bases() * g.weight_numel() / g.out_channels;
        match g.output_hw(h, w) {
            Ok((oh, ow)) => b * oh * ow >= per_channel,
            Err(_) => false,
        }
    }

    /// Cost on an `h x w` input, batch norm parameters included.
    pub fn cost(&self, input_hw: (i64, i64)) -> Result<LayerCost> {
        let mut cost = self.conv.cost(input_hw)?;
        cost.params += self.bn.params();
        Ok(cost)
    }
}

/// torchvision's `SqueezeExcitation` with MobileNetV3's hard-sigmoid gate.
#[derive(Debug)]
pub struct SqueezeExcite {
    pub(crate) fc1: Conv,
    pub(crate) fc2: Conv,
}

impl SqueezeExcite {
    /// `fc1` (`channels -> squeeze`) and `fc2` (`squeeze -> channels`), 1x1 with bias.
    pub fn new(
        path: &nn::Path,
        channels: i64,
        squeeze: i64,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let fc1 = Conv::new(
            &(path / "fc1"),
            Conv2dGeometry::new(channels, squeeze, 1),
            true,
            basis,
        )?;
        let fc2 = Conv::new(
            &(path / "fc2"),
            Conv2dGeometry::new(squeeze, channels, 1),
            true,
            basis,
        )?;
        for fc in [&fc1, &fc2] {
            kaiming_normal_fan_out(&fc.conv)?;
        }
        Ok(Self { fc1, fc2 })
    }

    /// `x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))`.
    pub fn forward(&self, x: &Tensor, coefficients: CoefficientVectors) -> Result<Tensor> {
        let se = || "squeeze-excite pool, gates and scale".to_string();
        let s = timing::span(se, || x.f_adaptive_avg_pool2d([1, 1]))?;
        let s = self.fc1.forward_act(&s, coefficients, Activation::Relu)?;
        let s = self
            .fc2
            .forward_act(&s, coefficients, Activation::Hardsigmoid)?;
        timing::span(se, || {
            if x.requires_grad() || s.requires_grad() {
                Ok(x.f_mul(&s)?)
            } else {
                // Inference: scale the block's own intermediate in place.
                Ok(x.shallow_clone().f_mul_(&s)?)
            }
        })
    }
}

/// torchvision's init for convolutions: `kaiming_normal_(mode="fan_out")` (gain sqrt(2)),
/// bias zero; every basis drawn independently.
fn kaiming_normal_fan_out(conv: &BasisConv2d) -> Result<()> {
    let [out, _, kh, kw] = conv.geometry().weight_shape();
    let std = (2.0 / (out * kh * kw) as f64).sqrt();
    tch::no_grad(|| -> Result<()> {
        let _ = conv.bank().weight().shallow_clone().f_normal_(0.0, std)?;
        if let Some(b) = conv.bank().bias() {
            let _ = b.shallow_clone().f_zero_()?;
        }
        Ok(())
    })
}
