//! [`MobileNet`]: one builder for MobileNetV2, V3-Large and V3-Small, static or specialist.
//!
//! Mirrors torchvision 0.28 (`torchvision.models.mobilenet_v2`, `mobilenet_v3_large`,
//! `mobilenet_v3_small`) layer for layer and name for name: its `state_dict` keys are this
//! network's variable names, so torchvision weights load without a renaming table.

use crate::arch::{make_divisible, Act, Arch, Expansion};
use crate::basis::{BasisSpec, CoefficientScope, Site};
use crate::error::{ModelError, Result};
use crate::layers::{BatchNorm2d, BatchNormSpec, Conv, ConvBnAct, Linear, SqueezeExcite};
use crate::profile::{Profile, ProfileRow};
use basis_core::{to_channels_last, Conv2dGeometry};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{nn, Tensor};

/// A backbone's hyper-parameters; the defaults are torchvision's.
///
/// ```
/// use basis_models::{Arch, MobileNetConfig};
/// let small = MobileNetConfig::new(Arch::MobilenetV3Small).width(0.5).in_channels(1).classes(10);
/// assert_eq!(small.batch_norm.eps, 0.001);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MobileNetConfig {
    /// The table.
    pub arch: Arch,
    /// Width multiplier (channels scaled, then rounded to a multiple of 8).
    pub width: f64,
    /// Input channels (3 for color, 1 for grayscale).
    pub in_channels: i64,
    /// Classes of the classifier.
    pub num_classes: i64,
    /// Dropout before the last linear layer.
    pub dropout: f64,
    /// Batch-norm settings.
    pub batch_norm: BatchNormSpec,
    /// Stride of the stem convolution: 2 (torchvision), or 1 for small images (the
    /// CIFAR-style variant: every later feature map twice as large per side, four times
    /// the multiply-adds, the same variables).
    #[serde(default = "default_stem_stride")]
    pub stem_stride: i64,
}

fn default_stem_stride() -> i64 {
    2
}

impl MobileNetConfig {
    /// torchvision's defaults: width 1.0, 3 channels, 1000 classes, dropout 0.2; batch norm
    /// eps 1e-5 and momentum 0.1 (V2), eps 1e-3 and momentum 0.01 (V3).
    pub fn new(arch: Arch) -> Self {
        let batch_norm = if arch.is_v3() {
            BatchNormSpec {
                eps: 0.001,
                momentum: 0.01,
            }
        } else {
            BatchNormSpec {
                eps: 1e-5,
                momentum: 0.1,
            }
        };
        Self {
            arch,
            width: 1.0,
            in_channels: 3,
            num_classes: 1000,
            dropout: 0.2,
            batch_norm,
            stem_stride: 2,
        }
    }

    /// With a width multiplier.
    pub fn width(mut self, width: f64) -> Self {
        self.width = width;
        self
    }

    /// With this many input channels.
    pub fn in_channels(mut self, in_channels: i64) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// With this many classes.
    pub fn classes(mut self, num_classes: i64) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// With this dropout probability.
    pub fn dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// With this stem stride (1 for small images such as 28 px Fashion-MNIST).
    pub fn stem_stride(mut self, stride: i64) -> Self {
        self.stem_stride = stride;
        self
    }

    fn validate(&self) -> Result<()> {
        if !(1..=2).contains(&self.stem_stride) {
            return Err(ModelError::Config(format!(
                "the stem stride must be 1 or 2, found {}",
                self.stem_stride
            )));
        }
        if !(self.width.is_finite() && self.width > 0.0) {
            return Err(ModelError::Config(format!(
                "width multiplier must be > 0, found {}",
                self.width
            )));
        }
        if self.in_channels < 1 || self.num_classes < 1 {
            return Err(ModelError::Config(format!(
                "in_channels and classes must be >= 1, found {} and {}",
                self.in_channels, self.num_classes
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Config(format!(
                "dropout must be in [0, 1), found {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Channels scaled by the width multiplier and rounded as torchvision does.
    fn scaled(&self, channels: i64) -> i64 {
        make_divisible(channels as f64 * self.width, 8)
    }
}

/// Memory layout of the activations inside a network.
///
/// Measured on 2 CPU cores (`cargo bench -p basis-models`, 224 px): the static
/// MobileNetV3-Large runs faster `channels_last` (1.2x at batch 1, even at batch 32); the
/// `basisnet-mv3` specialist with one coefficient row per sample runs 1.6x faster
/// contiguous at batch 32 (its depthwise layers are grouped convolutions over the batch,
/// which need NCHW), and faster `channels_last` at batch 1 (one shared kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `channels_last` when every basis layer runs one kernel for the whole batch (a
    /// static network, a batch of one, a single coefficient row), contiguous otherwise.
    #[default]
    Auto,
    /// Always `channels_last` (NHWC in memory).
    ChannelsLast,
    /// Always contiguous NCHW.
    Contiguous,
}

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
        self.classifier[0].1.layer().weight().device()
    }

    /// How activations are laid out in memory.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Choose the activation layout (default [`Layout::Auto`]).
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// Whether a forward pass with these coefficients runs `channels_last`.
    fn runs_channels_last(&self, batch: i64, coefficients: &[Tensor]) -> bool {
        match self.layout {
            Layout::ChannelsLast => true,
            Layout::Contiguous => false,
            Layout::Auto => batch == 1 || coefficients.iter().all(|c| c.size().first() == Some(&1)),
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
            to_channels_last(x)?
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
                    to_channels_last(&layer.forward_t(&x, coefficients, train)?)?
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
                    y = block.project.forward_t(&y, coefficients, train)?;
                    match (block.residual, y.requires_grad()) {
                        (true, true) => y.f_add(&x)?,
                        (true, false) => y.f_add_(&x)?,
                        (false, _) => y,
                    }
                }
            };
        }
        Ok(x.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?)
    }

    /// The classifier on pooled features.
    pub fn classify_t(
        &self,
        pooled: &Tensor,
        coefficients: &[Tensor],
        train: bool,
    ) -> Result<Tensor> {
        let p = self.config.dropout;
        match self.classifier.as_slice() {
            [(_, hidden), (_, out)] => {
                let h = hidden.forward(pooled, coefficients)?.f_hardswish()?;
                out.forward(&h.f_dropout(p, train)?, coefficients)
            }
            [(_, out)] => out.forward(&pooled.f_dropout(p, train)?, coefficients),
            _ => unreachable!("a MobileNet has one or two classifier layers"),
        }
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

    /// The smallest input side the network takes: each stride-2 layer must see at least
    /// two pixels (17 px for every MobileNet: 17 -> 9 -> 5 -> 3 -> 2 -> 1).
    pub fn min_resolution(&self) -> i64 {
        let strides = self.stride2_layers();
        (1i64 << (strides - 1)) + 1
    }

    fn stride2_layers(&self) -> u32 {
        self.conv_layers()
            .iter()
            .filter(|(_, l)| l.conv.layer().geometry().stride[0] == 2)
            .count() as u32
    }

    pub(crate) fn check_resolution(&self, side: i64) -> Result<()> {
        let min = self.min_resolution();
        if side < min {
            return Err(ModelError::Resolution {
                arch: self.config.arch.name().into(),
                strides: self.stride2_layers(),
                min,
                found: side,
            });
        }
        Ok(())
    }

    /// Every conv + BN (+ activation) in order, with its module name.
    pub(crate) fn conv_layers(&self) -> Vec<(String, &ConvBnAct)> {
        let mut out = Vec::new();
        for feature in &self.features {
            match feature {
                Feature::Conv(name, layer) => out.push((name.clone(), &**layer)),
                Feature::Block(b) => {
                    out.extend(b.expand.iter().map(|l| (format!("{}.expand", b.name), l)));
                    out.push((format!("{}.depthwise", b.name), &b.depthwise));
                    out.push((format!("{}.project", b.name), &b.project));
                }
            }
        }
        out
    }

    /// The per-layer cost table for `resolution x resolution` inputs.
    pub fn profile(&self, resolution: i64) -> Result<Profile> {
        self.check_resolution(resolution)?;
        let mut rows = Vec::new();
        let mut hw = (resolution, resolution);
        let mut conv = |rows: &mut Vec<ProfileRow>, name: String, layer: &ConvBnAct| {
            let g = *layer.conv.layer().geometry();
            let cost = layer.cost(hw)?;
            hw = g.output_hw(hw.0, hw.1)?;
            rows.push(ProfileRow::new(
                name,
                conv_kind(&g),
                [g.out_channels, hw.0, hw.1],
                cost,
            ));
            Ok::<(), ModelError>(())
        };
        for feature in &self.features {
            match feature {
                Feature::Conv(name, layer) => conv(&mut rows, name.clone(), layer)?,
                Feature::Block(b) => {
                    if let Some(expand) = &b.expand {
                        conv(&mut rows, format!("{}.expand", b.name), expand)?;
                    }
                    conv(&mut rows, format!("{}.depthwise", b.name), &b.depthwise)?;
                    if let Some(se) = &b.se {
                        for (fc, layer) in [("fc1", &se.fc1), ("fc2", &se.fc2)] {
                            let out = layer.layer().geometry().out_channels;
                            rows.push(ProfileRow::new(
                                format!("{}.se.{fc}", b.name),
                                "se 1x1".into(),
                                [out, 1, 1],
                                layer.cost((1, 1))?,
                            ));
                        }
                    }
                    conv(&mut rows, format!("{}.project", b.name), &b.project)?;
                }
            }
        }
        for (name, linear) in &self.classifier {
            let out = linear.layer().out_features();
            rows.push(ProfileRow::new(
                name.clone(),
                "linear".into(),
                [out, 1, 1],
                linear.cost(),
            ));
        }
        Ok(Profile::new(rows))
    }
}

/// Every parameterized layer of a network, in a fixed order (two networks built from the
/// same configuration list theirs in the same order).
pub(crate) enum LayerRef<'a> {
    Conv(&'a Conv),
    Linear(&'a Linear),
    Norm(&'a BatchNorm2d),
}

impl LayerRef<'_> {
    /// The weights of a convolution or linear layer.
    pub(crate) fn weighted(&self) -> Option<&dyn crate::layers::Weighted> {
        match self {
            LayerRef::Conv(c) => Some(*c),
            LayerRef::Linear(l) => Some(*l),
            LayerRef::Norm(_) => None,
        }
    }
}

impl MobileNet {
    pub(crate) fn layer_refs(&self) -> Vec<LayerRef<'_>> {
        let mut out = Vec::new();
        for feature in &self.features {
            let layers: Vec<&ConvBnAct> = match feature {
                Feature::Conv(_, l) => vec![&**l],
                Feature::Block(b) => b.expand.iter().chain([&b.depthwise]).collect(),
            };
            for l in layers {
                out.push(LayerRef::Conv(&l.conv));
                out.push(LayerRef::Norm(&l.bn));
            }
            if let Feature::Block(b) = feature {
                if let Some(se) = &b.se {
                    out.push(LayerRef::Conv(&se.fc1));
                    out.push(LayerRef::Conv(&se.fc2));
                }
                out.push(LayerRef::Conv(&b.project.conv));
                out.push(LayerRef::Norm(&b.project.bn));
            }
        }
        out.extend(self.classifier.iter().map(|(_, l)| LayerRef::Linear(l)));
        out
    }
}

/// A short description of a convolution for the profile: `conv 3x3/2`, `dw 5x5`...
fn conv_kind(g: &Conv2dGeometry) -> String {
    let [kh, kw] = g.kernel_size;
    let prefix = if g.is_depthwise() { "dw" } else { "conv" };
    let stride = if g.stride[0] > 1 {
        format!("/{}", g.stride[0])
    } else {
        String::new()
    };
    format!("{prefix} {kh}x{kw}{stride}")
}
