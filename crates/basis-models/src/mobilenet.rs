//! [`MobileNet`]: one builder for MobileNetV2, V3-Large and V3-Small, static or specialist.
//!
//! Mirrors torchvision 0.28 (`torchvision.models.mobilenet_v2`, `mobilenet_v3_large`,
//! `mobilenet_v3_small`) layer for layer and name for name: its `state_dict` keys are this
//! network's variable names, so torchvision weights load without a renaming table.

use crate::arch::{make_divisible, Act, Expansion};
use crate::basis::{BasisSpec, CoefficientScope, Site};
use crate::config::{Layout, MobileNetConfig};
use crate::error::{ModelError, Result};
use crate::layers::{ConvBnAct, Linear, SqueezeExcite};
use basis_core::{timing, to_channels_last, Conv2dGeometry};
use std::collections::BTreeMap;
use tch::{nn, Tensor};

/// One inverted-residual block: expand (1x1), depthwise, squeeze-excite, project (1x1).
#[derive(Debug)]
pub(crate) struct Block {
    pub(crate) name: String,
    pub(crate) expand: Option<ConvBnAct>,
    pub(crate) depthwise: ConvBnAct,
    pub(crate) se: Option<SqueezeExcite>,
    pub(crate) project: ConvBnAct,
    pub(crate) residual: bool,
}

/// An entry of `features`.
#[derive(Debug)]
pub(crate) enum Feature {
    /// A plain conv + BN + activation (the stem and the last convolution).
    Conv(String, Box<ConvBnAct>),
    /// An inverted residual.
    Block(Box<Block>),
}

/// A MobileNet, static or specialist: the same table, the same names; in a specialist the
/// layers chosen by its [`BasisSpec`] hold `N` bases and read coefficient vectors.
///
/// ```
/// use basis_models::{Arch, BasisSpec, MobileNet, MobileNetConfig};
/// use tch::{nn, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let config = MobileNetConfig::new(Arch::MobilenetV3Small).width(0.5).in_channels(1).classes(10);
/// let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed())?;
/// let x = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
/// let logits = net.forward_t(&x, &[], false)?;
/// assert_eq!(logits.size(), [2, 10]);
/// // The specialist: 4 bases in every layer, one coefficient vector.
/// let vs = nn::VarStore::new(Device::Cpu);
/// let specialist = MobileNet::new(&vs.root(), config, BasisSpec::new(4))?;
/// let alpha = Tensor::rand([2, 4], (Kind::Float, Device::Cpu));
/// assert_eq!(specialist.forward_t(&x, &[alpha], false)?.size(), [2, 10]);
/// # Ok::<(), basis_models::ModelError>(())
/// ```
#[derive(Debug)]
pub struct MobileNet {
    /// The module path it was built under (`specialist`, or empty).
    pub(crate) prefix: String,
    config: MobileNetConfig,
    spec: BasisSpec,
    pub(crate) features: Vec<Feature>,
    /// `(name, layer)`: V2 `classifier.1`; V3 `classifier.0` (hard-swish) and `classifier.3`.
    pub(crate) classifier: Vec<(String, Linear)>,
    num_vectors: usize,
    layout: Layout,
}

/// Assigns basis layers their `N` and coefficient vector while the network is built.
struct Assigner {
    spec: BasisSpec,
    stages: usize,
    vectors: BTreeMap<usize, usize>,
}

impl Assigner {
    fn basis(&mut self, block: usize, site: Site) -> Option<(i64, usize)> {
        if !self.spec.applies(site, self.stages) {
            return None;
        }
        let next = self.vectors.len();
        let vector = match self.spec.scope {
            CoefficientScope::Network => *self.vectors.entry(0).or_insert(0),
            CoefficientScope::PerBlock => *self.vectors.entry(block).or_insert(next),
        };
        Some((self.spec.num_bases, vector))
    }
}

impl MobileNet {
    /// Build under `path` (variables named as torchvision's `state_dict`), initialized as
    /// torchvision initializes MobileNets; every basis is drawn independently.
    pub fn new(path: &nn::Path, config: MobileNetConfig, spec: BasisSpec) -> Result<Self> {
        config.validate()?;
        if spec.num_bases < 1 {
            return Err(ModelError::Config(format!(
                "the number of bases must be >= 1, found {}",
                spec.num_bases
            )));
        }
        let arch = config.arch;
        let rows = arch.rows();
        let stages = 1 + rows.iter().filter(|r| r.stride == 2).count();
        let mut assign = Assigner {
            spec,
            stages,
            vectors: BTreeMap::new(),
        };
        let bn = config.batch_norm;
        let f = path / "features";
        let stem_act = if arch.is_v3() {
            Act::Hardswish
        } else {
            Act::Relu6
        };

        // features.0: the stem, 3x3 stride 2 (1 in the small-image variant).
        let mut channels = config.scaled(arch.stem_channels());
        let mut stage = 1;
        let stem = Conv2dGeometry::new(config.in_channels, channels, 3)
            .stride(config.stem_stride)
            .padding(1);
        let site = |stage, pointwise, head| Site {
            stage,
            pointwise,
            head,
        };
        let mut features = vec![Feature::Conv(
            "features.0".into(),
            Box::new(ConvBnAct::new(
                &(&f / 0 / 0),
                &(&f / 0 / 1),
                stem,
                bn,
                Some(stem_act),
                assign.basis(0, site(stage, false, false)),
            )?),
        )];

        // features.1..: the inverted residuals.
        for row in rows {
            for repeat in 0..row.repeat {
                let index = features.len();
                let stride = if repeat == 0 { row.stride } else { 1 };
                if stride == 2 {
                    stage += 1;
                }
                let out = config.scaled(row.out);
                let expanded = match row.expansion {
                    Expansion::Ratio(t) => (channels as f64 * t).round_ties_even() as i64,
                    Expansion::Channels(c) => config.scaled(c),
                };
                let block_path = if arch.is_v3() {
                    &f / index / "block"
                } else {
                    &f / index / "conv"
                };
                let mut slot = 0;
                let mut next = || {
                    slot += 1;
                    slot - 1
                };
                let expand = if expanded != channels {
                    let i = next();
                    Some(ConvBnAct::new(
                        &(&block_path / i / 0),
                        &(&block_path / i / 1),
                        Conv2dGeometry::new(channels, expanded, 1),
                        bn,
                        Some(row.act),
                        assign.basis(index, site(stage, true, false)),
                    )?)
                } else {
                    None
                };
                let i = next();
                let depthwise = ConvBnAct::new(
                    &(&block_path / i / 0),
                    &(&block_path / i / 1),
                    Conv2dGeometry::new(expanded, expanded, row.kernel)
                        .stride(stride)
                        .padding((row.kernel - 1) / 2)
                        .groups(expanded),
                    bn,
                    Some(row.act),
                    assign.basis(index, site(stage, false, false)),
                )?;
                let se = if row.se {
                    let i = next();
                    Some(SqueezeExcite::new(
                        &(&block_path / i),
                        expanded,
                        make_divisible((expanded / 4) as f64, 8),
                        assign.basis(index, site(stage, true, false)),
                    )?)
                } else {
                    None
                };
                let project_geometry = Conv2dGeometry::new(expanded, out, 1);
                let project_basis = assign.basis(index, site(stage, true, false));
                let project = if arch.is_v3() {
                    let i = next();
                    ConvBnAct::new(
                        &(&block_path / i / 0),
                        &(&block_path / i / 1),
                        project_geometry,
                        bn,
                        None,
                        project_basis,
                    )?
                } else {
                    // MobileNetV2 keeps the projection conv and its norm side by side.
                    let (c, n) = (next(), next());
                    ConvBnAct::new(
                        &(&block_path / c),
                        &(&block_path / n),
                        project_geometry,
                        bn,
                        None,
                        project_basis,
                    )?
                };
                features.push(Feature::Block(Box::new(Block {
                    name: format!("features.{index}"),
                    expand,
                    depthwise,
                    se,
                    project,
                    residual: stride == 1 && channels == out,
                })));
                channels = out;
            }
        }

        // The last 1x1 convolution.
        let index = features.len();
        let last = if arch.is_v3() {
            6 * channels
        } else {
            make_divisible(arch.last_channels() as f64 * config.width.max(1.0), 8)
        };
        features.push(Feature::Conv(
            format!("features.{index}"),
            Box::new(ConvBnAct::new(
                &(&f / index / 0),
                &(&f / index / 1),
                Conv2dGeometry::new(channels, last, 1),
                bn,
                Some(stem_act),
                assign.basis(index, site(stage, true, true)),
            )?),
        ));

        // The classifier.
        let c = path / "classifier";
        let head = features.len();
        let mut classifier = Vec::new();
        if arch.is_v3() {
            let hidden = config.scaled(arch.last_channels());
            for (slot, (inp, out)) in [(0, (last, hidden)), (3, (hidden, config.num_classes))] {
                let basis = assign.basis(head, site(stage, true, true));
                classifier.push((
                    format!("classifier.{slot}"),
                    Linear::new(&(&c / slot), inp, out, basis)?,
                ));
            }
        } else {
            let basis = assign.basis(head, site(stage, true, true));
            classifier.push((
                "classifier.1".into(),
                Linear::new(&(&c / 1), last, config.num_classes, basis)?,
            ));
        }
        Ok(Self {
            prefix: crate::names::module_name(path),
            config,
            spec,
            features,
            classifier,
            num_vectors: assign.vectors.len(),
            layout: Layout::Auto,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MobileNetConfig {
        &self.config
    }

    /// Its basis layers.
    pub fn spec(&self) -> &BasisSpec {
        &self.spec
    }

    /// Coefficient vectors a forward pass reads (0 for a static network).
    pub fn num_coefficient_vectors(&self) -> usize {
        self.num_vectors
    }

    /// Width of the pooled features (the classifier's input).
    pub fn feature_dim(&self) -> i64 {
        self.classifier[0].1.layer().in_features()
    }

    /// The device its variables live on.
    pub fn device(&self) -> tch::Device {
        self.classifier[0].1.layer().bank().weight().device()
    }

    /// How activations are laid out in memory.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Choose the activation layout (default [`Layout::Auto`]).
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// Whether a forward pass over `batch` images with these coefficients runs
    /// `channels_last` (a static network: `&[]`). Images already in that layout skip the
    /// conversion at the start of the pass.
    ///
    /// ```
    /// use basis_models::{Arch, BasisSpec, Layout, MobileNet, MobileNetConfig};
    /// use tch::{nn, Device};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let config = MobileNetConfig::new(Arch::MobilenetV3Small).classes(10);
    /// let mut net = MobileNet::new(&vs.root(), config, BasisSpec::fixed())?;
    /// assert!(net.runs_channels_last(32, &[]), "one kernel per layer serves the batch");
    /// net.set_layout(Layout::Contiguous);
    /// assert!(!net.runs_channels_last(32, &[]));
    ///
    /// // Basis layers: one image runs NCHW where the fp32 CPU inference kernels run; a
    /// // batch sharing one coefficient row runs `channels_last`.
    /// let config = MobileNetConfig::new(Arch::MobilenetV3Small).classes(10);
    /// let specialist = MobileNet::new(&(vs.root() / "specialist"), config, BasisSpec::new(4))?;
    /// let row = tch::Tensor::ones([1, 4], (tch::Kind::Float, Device::Cpu));
    /// let alpha: Vec<_> = (0..specialist.num_coefficient_vectors())
    ///     .map(|_| row.shallow_clone())
    ///     .collect();
    /// assert!(!tch::no_grad(|| specialist.runs_channels_last(1, &alpha)));
    /// assert!(tch::no_grad(|| specialist.runs_channels_last(32, &alpha)));
    /// # Ok::<(), basis_models::ModelError>(())
    /// ```
    pub fn runs_channels_last(&self, batch: i64, coefficients: &[Tensor]) -> bool {
        match self.layout {
            Layout::ChannelsLast => true,
            Layout::Contiguous => false,
            Layout::Auto => {
                let one_kernel =
                    batch == 1 || coefficients.iter().all(|c| c.size().first() == Some(&1));
                // One image through basis layers whose per-sample inference kernels run
                // (fp32 or bf16, CPU): they read NCHW, and ran it faster than channels_last.
                let kernels = batch == 1
                    && coefficients
                        .first()
                        .is_some_and(basis_core::fused::per_sample_kernels_run);
                one_kernel && !kernels
            }
        }
    }

    /// Logits `[B, classes]` for images `[B, C, H, W]`; `coefficients` holds
    /// [`MobileNet::num_coefficient_vectors`] tensors `[B, N]` (or `[1, N]`).
    pub fn forward_t(&self, x: &Tensor, coefficients: &[Tensor], train: bool) -> Result<Tensor> {
        let pooled = self.features_t(x, coefficients, train)?;
        self.classify_t(&pooled, coefficients, train)
    }

    /// The pooled features `[B, feature_dim]`.
    pub fn features_t(&self, x: &Tensor, coefficients: &[Tensor], train: bool) -> Result<Tensor> {
        self.check_input(x)?;
        if coefficients.len() != self.num_vectors {
            return Err(ModelError::CoefficientVectors {
                expected: self.num_vectors,
                found: coefficients.len(),
            });
        }
        let channels_last = self.runs_channels_last(x.size()[0], coefficients);
        let mut x = if channels_last {
            timing::span(|| "layout conversion".into(), || to_channels_last(x))?
        } else {
            x.shallow_clone()
        };
        for feature in &self.features {
            x = match feature {
                // A one-channel (grayscale) input is laid out both ways at once, and
                // libtorch then gives the stem's output the contiguous layout: set it
                // here, or every later layer runs contiguous (training the Fashion-MNIST
                // networks measured 2x slower, depthwise weight gradients by im2col).
                Feature::Conv(_, layer) if channels_last => {
                    let y = layer.forward_t(&x, coefficients, train)?;
                    timing::span(|| "layout conversion".into(), || to_channels_last(&y))?
                }
                Feature::Conv(_, layer) => layer.forward_t(&x, coefficients, train)?,
                Feature::Block(block) => {
                    let mut y = x.shallow_clone();
                    if let Some(expand) = &block.expand {
                        y = expand.forward_t(&y, coefficients, train)?;
                    }
                    y = block.depthwise.forward_t(&y, coefficients, train)?;
                    if let Some(se) = &block.se {
                        y = se.forward(&y, coefficients)?;
                    }
                    if block.residual {
                        // In evaluation the projection may add itself into `x`'s memory;
                        // `x` is replaced by the block's output right here.
                        block.project.forward_t_add(&y, coefficients, train, &x)?
                    } else {
                        block.project.forward_t(&y, coefficients, train)?
                    }
                }
            };
        }
        Ok(timing::span(
            || "global pool".into(),
            || x.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1),
        )?)
    }

    /// The classifier on pooled features.
    pub fn classify_t(
        &self,
        pooled: &Tensor,
        coefficients: &[Tensor],
        train: bool,
    ) -> Result<Tensor> {
        // Dropout before the last layer; hard-swish after every other (MobileNetV3's
        // hidden layer).
        let last = self.classifier.len().saturating_sub(1);
        let mut x = pooled.shallow_clone();
        for (i, (_, layer)) in self.classifier.iter().enumerate() {
            if i == last {
                x = x.f_dropout(self.config.dropout, train)?;
            }
            x = layer.forward(&x, coefficients)?;
            if i < last {
                x = timing::span(|| "activation".into(), || x.f_hardswish())?;
            }
        }
        Ok(x)
    }

    /// Check `[B, in_channels, H, W]` with `H` and `W` at least [`MobileNet::min_resolution`].
    fn check_input(&self, x: &Tensor) -> Result<()> {
        let size = x.size();
        let &[_, c, h, w] = size.as_slice() else {
            return Err(ModelError::Input {
                what: "images",
                expected: format!("[batch, {}, height, width]", self.config.in_channels),
                found: format!("{size:?}"),
            });
        };
        if c != self.config.in_channels {
            return Err(ModelError::Input {
                what: "images",
                expected: format!("{} channels", self.config.in_channels),
                found: format!("{c} channels"),
            });
        }
        self.check_resolution(h.min(w))
    }
}
