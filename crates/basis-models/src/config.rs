//! [`MobileNetConfig`], a backbone's hyper-parameters, and [`Layout`], the policy for the
//! memory layout of its activations.

use crate::arch::{make_divisible, Arch};
use crate::batch_norm::BatchNormSpec;
use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};

/// The largest width multiplier a configuration accepts.
pub const MAX_WIDTH: f64 = 10.0;
/// The most input channels a configuration accepts.
pub const MAX_IN_CHANNELS: i64 = 4096;
/// The most classes a configuration accepts.
pub const MAX_CLASSES: i64 = 1_000_000;

/// The largest input side a network accepts (a 16384 px image is already 3 GiB of fp32
/// activations in the stem alone; cost counts stay far from overflowing).
pub const MAX_RESOLUTION: i64 = 16_384;

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

    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=2).contains(&self.stem_stride) {
            return Err(ModelError::Config(format!(
                "the stem stride must be 1 or 2, found {}",
                self.stem_stride
            )));
        }
        // Bounds far above any real network, below what would exhaust a machine's memory
        // (MobileNetV2 at width 10 has about 300 million parameters).
        if !(self.width.is_finite() && self.width > 0.0 && self.width <= MAX_WIDTH) {
            return Err(ModelError::Config(format!(
                "width multiplier must be in (0, {MAX_WIDTH}], found {}",
                self.width
            )));
        }
        let count = |what: &str, value: i64, max: i64| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(ModelError::Config(format!(
                    "{what} must be in 1..={max}, found {value}"
                )))
            }
        };
        count("in_channels", self.in_channels, MAX_IN_CHANNELS)?;
        count("classes", self.num_classes, MAX_CLASSES)?;
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Config(format!(
                "dropout must be in [0, 1), found {}",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Channels scaled by the width multiplier and rounded as torchvision does.
    pub(crate) fn scaled(&self, channels: i64) -> i64 {
        make_divisible(channels as f64 * self.width, 8)
    }
}

/// Memory layout of the activations inside a network.
///
/// A static network runs faster `channels_last` on the CPU; a specialist with one
/// coefficient row per sample runs faster contiguous, because its depthwise layers are
/// grouped convolutions over the batch, which need NCHW. `Auto` follows that rule; the
/// measurements behind it are in the benchmark report (`docs/src/bench-report.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `channels_last` when every basis layer runs one kernel for the whole batch (a
    /// static network, a batch of one, a single coefficient row), contiguous otherwise,
    /// and for one image through basis layers whose CPU inference kernels run (fp32, or
    /// bf16 where libtorch's bf16 micro-kernel does; `basis_core::fused::per_sample_kernels_run`:
    /// they read NCHW).
    #[default]
    Auto,
    /// Always `channels_last` (NHWC in memory).
    ChannelsLast,
    /// Always contiguous NCHW.
    Contiguous,
}
