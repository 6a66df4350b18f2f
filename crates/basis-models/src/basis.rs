//! Which layers of a network are basis layers, how many bases, which coefficients they read.

use serde::{Deserialize, Serialize};

/// Which layers hold `N` bases (the others stay static).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BasisLayers {
    /// Every convolution (squeeze-excite included) and the classifier: the paper's default.
    All,
    /// 1x1 convolutions and the classifier; 3x3/5x5 and depthwise stay static.
    Pointwise,
    /// Every layer of the last `K` stages (a stage ends at each stride-2 layer), plus the
    /// last convolution and the classifier, as CondConv does.
    LastStages(usize),
}

/// How many coefficient vectors the specialist reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CoefficientScope {
    /// One vector for the whole network (the paper's default).
    Network,
    /// One vector per block (stem, each inverted residual, last convolution, classifier)
    /// that holds a basis layer, CondConv-like.
    PerBlock,
}

/// What makes a network a specialist: `N` bases in the chosen layers, and the scope of
/// the coefficients. `N = 1` is the static network.
///
/// ```
/// use basis_models::{BasisLayers, BasisSpec, CoefficientScope};
/// let paper = BasisSpec::new(8);
/// assert_eq!((paper.layers, paper.scope), (BasisLayers::All, CoefficientScope::Network));
/// assert!(BasisSpec::fixed().is_static());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasisSpec {
    /// Bases per basis layer.
    pub num_bases: i64,
    /// Which layers are basis layers.
    pub layers: BasisLayers,
    /// One coefficient vector or one per block.
    pub scope: CoefficientScope,
}

impl BasisSpec {
    /// `N` bases in every layer, one coefficient vector.
    pub fn new(num_bases: i64) -> Self {
        Self {
            num_bases,
            layers: BasisLayers::All,
            scope: CoefficientScope::Network,
        }
    }

    /// The static network (one basis everywhere).
    pub fn fixed() -> Self {
        Self::new(1)
    }

    /// With these basis layers.
    pub fn layers(mut self, layers: BasisLayers) -> Self {
        self.layers = layers;
        self
    }

    /// With this coefficient scope.
    pub fn scope(mut self, scope: CoefficientScope) -> Self {
        self.scope = scope;
        self
    }

    /// One basis everywhere.
    pub fn is_static(&self) -> bool {
        self.num_bases == 1
    }

    /// Whether a layer at `site` is a basis layer, in a network of `stages` stages.
    pub(crate) fn applies(&self, site: Site, stages: usize) -> bool {
        if self.is_static() {
            return false;
        }
        match self.layers {
            BasisLayers::All => true,
            BasisLayers::Pointwise => site.pointwise,
            BasisLayers::LastStages(k) => site.head || site.stage + k > stages,
        }
    }
}

/// Where a layer sits, for [`BasisSpec::applies`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Site {
    /// Stride-2 layers at or before this one.
    pub stage: usize,
    /// A 1x1 kernel or a linear layer.
    pub pointwise: bool,
    /// The last convolution or the classifier.
    pub head: bool,
}
