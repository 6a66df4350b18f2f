//! Pretrained MobileNets: a state dict saved as safetensors by a PyTorch user, with
//! torchvision's names (`features.3.block.1.0.weight`) or timm's (`blocks.1.0.conv_dw.weight`),
//! as the start of a static network, a lightweight backbone or every basis of a specialist
//! ([`MobileNet::seed_from_pretrained`]).
//!
//! Our variables carry torchvision's names, so torchvision's files load as they are; timm's
//! are renamed by one table (`TIMM_BLOCKS`, `timm_top` in the source), derived from the block kinds of
//! `timm/models/_efficientnet_blocks.py` (depthwise-separable, inverted residual, conv-bn-act)
//! against torchvision 0.28's module layout. The two libraries build the same networks
//! (`mobilenetv3_large_100`, `mobilenetv3_small_100`, `mobilenetv2_100` against
//! `mobilenet_v3_large`, `mobilenet_v3_small`, `mobilenet_v2`) except for one number: timm's
//! MobileNetV3 batch norms use eps `1e-5` where torchvision's use `1e-3`, so the eps a model
//! is built with must follow the file ([`Pretrained::batch_norm_eps`]).

use crate::arch::Arch;
use crate::basis::BasisSpec;
use crate::checkpoint;
use crate::config::MobileNetConfig;
use crate::error::{ModelError, Result};
use crate::mobilenet::MobileNet;
use crate::walk::LayerKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Tensor};

/// Whose module names a pretrained file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightSource {
    /// torchvision's `mobilenet_v2` / `mobilenet_v3_*` (`features.*`, `classifier.*`),
    /// which are also ours: a static run's `best.safetensors` is such a file.
    Torchvision,
    /// timm's `mobilenetv2_*` / `mobilenetv3_*` (`conv_stem`, `blocks.i.j.*`, `conv_head`).
    Timm,
}

impl WeightSource {
    /// The library's name.
    pub fn name(self) -> &'static str {
        match self {
            WeightSource::Torchvision => "torchvision",
            WeightSource::Timm => "timm",
        }
    }
}

/// A timm block kind: the module that marks it, and its modules' torchvision paths for
/// MobileNetV3 and MobileNetV2 (relative to `features.K`). `{p}` is the index of the
/// projection, which follows the squeeze-excite when the block has one.
struct TimmBlock {
    /// The module only this kind has (checked in table order).
    marker: &'static str,
    /// Index of the projection in torchvision's MobileNetV3 block without squeeze-excite.
    projection: usize,
    /// `(timm module, torchvision MobileNetV3 module)`.
    v3: &'static [(&'static str, &'static str)],
    /// `(timm module, torchvision MobileNetV2 module)` (V2 has no squeeze-excite).
    v2: &'static [(&'static str, &'static str)],
}

/// timm's block kinds, most specific marker first.
#[rustfmt::skip]
const TIMM_BLOCKS: &[TimmBlock] = &[
    // InvertedResidual: expand 1x1, depthwise, [SE], project 1x1.
    TimmBlock { marker: "conv_pwl", projection: 2,
        v3: &[("conv_pw", "block.0.0"), ("bn1", "block.0.1"),
              ("conv_dw", "block.1.0"), ("bn2", "block.1.1"),
              ("se.conv_reduce", "block.2.fc1"), ("se.conv_expand", "block.2.fc2"),
              ("conv_pwl", "block.{p}.0"), ("bn3", "block.{p}.1")],
        v2: &[("conv_pw", "conv.0.0"), ("bn1", "conv.0.1"),
              ("conv_dw", "conv.1.0"), ("bn2", "conv.1.1"),
              ("conv_pwl", "conv.2"), ("bn3", "conv.3")] },
    // DepthwiseSeparableConv (the first block, expansion 1): depthwise, [SE], project 1x1.
    TimmBlock { marker: "conv_pw", projection: 1,
        v3: &[("conv_dw", "block.0.0"), ("bn1", "block.0.1"),
              ("se.conv_reduce", "block.1.fc1"), ("se.conv_expand", "block.1.fc2"),
              ("conv_pw", "block.{p}.0"), ("bn2", "block.{p}.1")],
        v2: &[("conv_dw", "conv.0.0"), ("bn1", "conv.0.1"),
              ("conv_pw", "conv.1"), ("bn2", "conv.2")] },
    // ConvBnAct (MobileNetV3's last 1x1 convolution before pooling).
    TimmBlock { marker: "conv", projection: 0,
        v3: &[("conv", "0"), ("bn1", "1")],
        v2: &[] },
];

/// timm's modules outside `blocks` and their torchvision paths; `{last}` is the feature
/// index after the last block (MobileNetV2's head convolution). The MobileNetV3 head
/// convolution `conv_head` (1x1 on pooled features, with bias) is torchvision's first
/// linear layer, its weight `[out, in, 1, 1]` flattened to `[out, in]`.
fn timm_top(v3: bool) -> &'static [(&'static str, &'static str)] {
    if v3 {
        &[
            ("conv_stem", "features.0.0"),
            ("bn1", "features.0.1"),
            ("conv_head", "classifier.0"),
            ("classifier", "classifier.3"),
        ]
    } else {
        &[
            ("conv_stem", "features.0.0"),
            ("bn1", "features.0.1"),
            ("conv_head", "features.{last}.0"),
            ("bn2", "features.{last}.1"),
            ("classifier", "classifier.1"),
        ]
    }
}

/// `module.leaf` split at the last dot (`blocks.1.0.bn1`, `running_mean`).
fn split_leaf(name: &str) -> (&str, &str) {
    name.rsplit_once('.').unwrap_or(("", name))
}

/// timm's tensors under torchvision's names.
fn rename_timm(path: &Path, tensors: BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let bad = |problem: String| ModelError::Checkpoint {
        path: path.display().to_string(),
        problem,
    };
    // MobileNetV2's head has its own batch norm (`bn2`); MobileNetV3's has a bias instead.
    let v3 = !tensors.keys().any(|k| k.starts_with("bn2."));
    // Blocks by (stage, index) in forward order, with their module names.
    let mut blocks: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    for name in tensors.keys() {
        let mut parts = name.splitn(4, '.');
        if let (Some("blocks"), Some(i), Some(j), Some(rest)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            let (Ok(i), Ok(j)) = (i.parse(), j.parse()) else {
                return Err(bad(format!("tensor {name} is not a timm block name")));
            };
            blocks
                .entry((i, j))
                .or_default()
                .push(split_leaf(rest).0.to_string());
        }
    }
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for (k, ((i, j), names)) in blocks.iter().enumerate() {
        let kind = TIMM_BLOCKS
            .iter()
            .find(|b| names.iter().any(|n| n == b.marker))
            .ok_or_else(|| {
                bad(format!(
                    "timm block blocks.{i}.{j} is of no kind this table knows"
                ))
            })?;
        let se = names.iter().any(|n| n.starts_with("se."));
        let projection = (kind.projection + usize::from(se)).to_string();
        for (timm, torchvision) in if v3 { kind.v3 } else { kind.v2 } {
            let to = torchvision.replace("{p}", &projection);
            modules.insert(
                format!("blocks.{i}.{j}.{timm}"),
                format!("features.{}.{to}", k + 1),
            );
        }
    }
    let last = (blocks.len() + 1).to_string();
    for (timm, torchvision) in timm_top(v3) {
        modules.insert(timm.to_string(), torchvision.replace("{last}", &last));
    }
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        let (module, leaf) = split_leaf(&name);
        let to = modules.get(module).ok_or_else(|| {
            bad(format!(
                "tensor {name} is not part of a timm MobileNet{}",
                if v3 { "V3" } else { "V2" }
            ))
        })?;
        // torchvision's first MobileNetV3 classifier layer is a linear layer.
        let tensor = if to.starts_with("classifier.") && tensor.dim() == 4 {
            tensor.f_flatten(1, -1)?
        } else {
            tensor
        };
        out.insert(format!("{to}.{leaf}"), tensor);
    }
    Ok(out)
}

/// A pretrained MobileNet read from a safetensors file, its tensors under our
/// (torchvision's) names.
///
/// ```
/// use basis_models::{checkpoint, pretrained::{Pretrained, WeightSource}, Arch, MobileNet,
///     MobileNetConfig, BasisSpec};
/// use tch::{nn, Device};
/// // A file as torchvision saves it (here: our own static network, which has its names).
/// let config = MobileNetConfig::new(Arch::MobilenetV3Small).classes(10);
/// let vs = nn::VarStore::new(Device::Cpu);
/// let _net = MobileNet::new(&vs.root(), config, BasisSpec::fixed())?;
/// let file = std::env::temp_dir().join("pretrained-doc.safetensors");
/// checkpoint::save(&vs, &file, &Default::default())?;
///
/// let weights = Pretrained::read(&file)?;
/// assert_eq!(weights.source(), WeightSource::Torchvision);
/// assert_eq!(weights.batch_norm_eps(Arch::MobilenetV3Small), 1e-3);
/// // A network of 5 classes takes everything but the last classifier layer.
/// let five = nn::VarStore::new(Device::Cpu);
/// let target = MobileNet::new(&five.root(), config.classes(5), BasisSpec::fixed())?;
/// let fresh = target.seed_from_pretrained(&weights, 0.0)?;
/// assert_eq!(fresh, ["classifier.3.weight", "classifier.3.bias"]);
/// # Ok::<(), basis_models::ModelError>(())
/// ```
#[derive(Debug)]
pub struct Pretrained {
    path: PathBuf,
    source: WeightSource,
    tensors: BTreeMap<String, Tensor>,
}

impl Pretrained {
    /// Read `path` and rename timm's tensors; a file with neither library's names is an
    /// error saying so.
    pub fn read(path: &Path) -> Result<Self> {
        let (tensors, _) = checkpoint::read(path)?;
        let has = |prefix: &str| tensors.keys().any(|k| k.starts_with(prefix));
        let (source, tensors) = if has("features.") {
            (WeightSource::Torchvision, tensors)
        } else if has("conv_stem.") {
            (WeightSource::Timm, rename_timm(path, tensors)?)
        } else {
            return Err(ModelError::Checkpoint {
                path: path.display().to_string(),
                problem: format!(
                    "expected a MobileNet state dict with torchvision's names (features.*) or \
                     timm's (conv_stem, blocks.*), found {}",
                    tensors
                        .keys()
                        .next()
                        .map_or("no tensors".into(), |k| format!("tensors such as {k}"))
                ),
            });
        };
        Ok(Self {
            path: path.to_path_buf(),
            source,
            tensors,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's tensors under our (torchvision's) names.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// The shape of a tensor of the file, by our (torchvision's) name.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.tensors.get(name).map(Tensor::size)
    }

    /// Whose names the file had.
    pub fn source(&self) -> WeightSource {
        self.source
    }

    /// The batch-norm eps these weights were trained with for `arch`: torchvision's
    /// (`1e-3` for MobileNetV3, `1e-5` for V2) or timm's (`1e-5` for both).
    pub fn batch_norm_eps(&self, arch: Arch) -> f64 {
        match self.source {
            WeightSource::Torchvision => MobileNetConfig::new(arch).batch_norm.eps,
            WeightSource::Timm => 1e-5,
        }
    }

    /// A static network of `config` on `device` holding these weights, and the names of
    /// the last classifier layer's tensors left at their fresh initialization because the
    /// file has another class count. Any other tensor missing, left over or of another
    /// shape is an error naming it, its shape and the shape expected.
    pub fn static_network(
        &self,
        config: MobileNetConfig,
        device: Device,
    ) -> Result<(MobileNet, nn::VarStore, Vec<String>)> {
        let vs = nn::VarStore::new(device);
        let net = MobileNet::new(&vs.root(), config, BasisSpec::fixed())?;
        let classifier = net
            .layers()
            .into_iter()
            .rev()
            .find(|l| l.kind == LayerKind::Classifier)
            .map(|l| l.variables)
            .unwrap_or_default();
        let mut tensors = BTreeMap::new();
        let mut fresh = Vec::new();
        let variables = vs.variables();
        for (name, tensor) in &self.tensors {
            let other_classes = classifier.contains(name)
                && variables.get(name).is_some_and(|v| {
                    let (mine, theirs) = (v.size(), tensor.size());
                    mine != theirs && mine.len() == theirs.len() && mine[1..] == theirs[1..]
                });
            if other_classes {
                fresh.push(name.clone());
            } else {
                tensors.insert(name.clone(), tensor.shallow_clone());
            }
        }
        for name in &fresh {
            tensors.insert(
                name.clone(),
                variables[name].detach().f_to_device(Device::Cpu)?,
            );
        }
        checkpoint::assign(&vs, &self.path, &tensors).map_err(|e| match e {
            ModelError::Checkpoint { path, problem } => ModelError::Checkpoint {
                path,
                problem: format!("{problem} ({} {})", self.source.name(), config.arch),
            },
            other => other,
        })?;
        // Classifier rows listed in the order the model declares them.
        fresh.sort_by_key(|n| classifier.iter().position(|c| c == n));
        Ok((net, vs, fresh))
    }
}

impl MobileNet {
    /// Start this network from pretrained weights: a static network takes them as they
    /// are, every basis of a specialist takes them plus `noise` (as
    /// [`MobileNet::seed_from`]). Returns the classifier tensors left at a fresh
    /// initialization because the class count differs.
    pub fn seed_from_pretrained(&self, weights: &Pretrained, noise: f64) -> Result<Vec<String>> {
        let (fixed, _vs, fresh) = weights.static_network(*self.config(), self.device())?;
        self.seed_from(&fixed, noise)?;
        Ok(fresh)
    }
}
