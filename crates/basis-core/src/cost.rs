//! Cost model: parameters, multiply-adds, and the multiply-adds of kernel synthesis.
//!
//! Counting rule (as in `mobilenet-costs.md` and the MobileNet papers): a convolution that
//! produces `Cout x H' x W'` with a `kh x kw` kernel and `g` groups costs
//! `Cout * H' * W' * (Cin / g) * kh * kw` multiply-adds; a linear layer `in * out`. Biases,
//! batch norm and activations are not counted. Synthesizing one layer's weights for one
//! sample costs one multiply-add per basis per synthesized parameter, `N * P_basis`, the
//! convention CondConv used for its own cost.

use crate::error::Result;
use crate::geometry::Conv2dGeometry;
use std::ops::{Add, AddAssign};

/// The cost of one layer (or a sum of layers) for one sample.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerCost {
    /// Trainable parameters (all bases, biases included).
    pub params: i64,
    /// Multiply-adds of applying the layer to one sample.
    pub madds: i64,
    /// Multiply-adds of synthesizing the layer's weights for one sample (`N * P_basis`);
    /// zero for a static layer.
    pub synthesis_madds: i64,
}

impl LayerCost {
    /// Cost of a convolution with `num_bases` bases on an `h x w` input.
    ///
    /// ```
    /// use basis_core::{Conv2dGeometry, LayerCost};
    /// // MobileNetV3-Large's stem: 3 -> 16, 3x3, stride 2, on 224 px.
    /// let stem = Conv2dGeometry::new(3, 16, 3).stride(2).padding(1);
    /// let cost = LayerCost::conv2d(&stem, (224, 224), 1, false).unwrap();
    /// assert_eq!(cost.madds, 16 * 112 * 112 * 3 * 9);
    /// assert_eq!(cost.params, 432);
    /// assert_eq!(cost.synthesis_madds, 0);
    /// let basis = LayerCost::conv2d(&stem, (224, 224), 8, false).unwrap();
    /// assert_eq!((basis.params, basis.synthesis_madds), (8 * 432, 8 * 432));
    /// ```
    pub fn conv2d(
        geometry: &Conv2dGeometry,
        input_hw: (i64, i64),
        num_bases: i64,
        bias: bool,
    ) -> Result<Self> {
        geometry.validate()?;
        let (oh, ow) = geometry.output_hw(input_hw.0, input_hw.1)?;
        let [out, in_per_group, kh, kw] = geometry.weight_shape();
        let per_basis = geometry.weight_numel() + if bias { out } else { 0 };
        Ok(Self {
            params: num_bases * per_basis,
            madds: out * oh * ow * in_per_group * kh * kw,
            synthesis_madds: synthesis(num_bases, per_basis),
        })
    }

    /// Cost of a linear layer `in_features -> out_features` with `num_bases` bases.
    ///
    /// ```
    /// use basis_core::LayerCost;
    /// let head = LayerCost::linear(960, 1280, 8, true);
    /// assert_eq!(head.madds, 960 * 1280);
    /// assert_eq!(head.params, 8 * (960 * 1280 + 1280));
    /// ```
    pub fn linear(in_features: i64, out_features: i64, num_bases: i64, bias: bool) -> Self {
        let per_basis = in_features * out_features + if bias { out_features } else { 0 };
        Self {
            params: num_bases * per_basis,
            madds: in_features * out_features,
            synthesis_madds: synthesis(num_bases, per_basis),
        }
    }

    /// Application plus synthesis multiply-adds.
    pub fn total_madds(&self) -> i64 {
        self.madds + self.synthesis_madds
    }
}

/// A static layer (one basis) synthesizes nothing.
fn synthesis(num_bases: i64, per_basis: i64) -> i64 {
    if num_bases > 1 {
        num_bases * per_basis
    } else {
        0
    }
}

impl Add for LayerCost {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            params: self.params + rhs.params,
            madds: self.madds + rhs.madds,
            synthesis_madds: self.synthesis_madds + rhs.synthesis_madds,
        }
    }
}

impl AddAssign for LayerCost {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl std::iter::Sum for LayerCost {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}
