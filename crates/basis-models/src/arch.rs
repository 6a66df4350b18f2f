//! The MobileNet family as tables: one row per inverted-residual block, decoded by one
//! builder ([`crate::MobileNet`]). Rows and rounding follow torchvision 0.28
//! (`torchvision/models/mobilenetv2.py`, `mobilenetv3.py`), so layer names, shapes and
//! costs are torchvision's.

use serde::{Deserialize, Serialize};

/// A backbone of the zoo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// MobileNetV2 (Sandler et al., 2018).
    MobilenetV2,
    /// MobileNetV3-Large (Howard et al., 2019).
    MobilenetV3Large,
    /// MobileNetV3-Small (Howard et al., 2019).
    MobilenetV3Small,
}

impl Arch {
    /// Every architecture of the zoo.
    pub const ALL: [Arch; 3] = [
        Arch::MobilenetV2,
        Arch::MobilenetV3Large,
        Arch::MobilenetV3Small,
    ];

    /// torchvision's name (`mobilenet_v3_large`...).
    pub fn name(self) -> &'static str {
        match self {
            Arch::MobilenetV2 => "mobilenet_v2",
            Arch::MobilenetV3Large => "mobilenet_v3_large",
            Arch::MobilenetV3Small => "mobilenet_v3_small",
        }
    }

    /// The architecture of a torchvision name.
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether this is a MobileNetV3 (squeeze-excite, hard-swish, two-layer classifier).
    pub fn is_v3(self) -> bool {
        !matches!(self, Arch::MobilenetV2)
    }

    /// The blocks' table.
    pub fn rows(self) -> &'static [Row] {
        match self {
            Arch::MobilenetV2 => MOBILENET_V2,
            Arch::MobilenetV3Large => MOBILENET_V3_LARGE,
            Arch::MobilenetV3Small => MOBILENET_V3_SMALL,
        }
    }

    /// Output channels of the stem before the width multiplier.
    pub fn stem_channels(self) -> i64 {
        match self {
            Arch::MobilenetV2 => 32,
            _ => 16,
        }
    }

    /// Width of the last feature layer (V2) or of the classifier's hidden layer (V3),
    /// before rounding.
    pub fn last_channels(self) -> i64 {
        match self {
            Arch::MobilenetV2 => 1280,
            Arch::MobilenetV3Large => 1280,
            Arch::MobilenetV3Small => 1024,
        }
    }

    /// Total stride: the input's height and width are divided by this (rounding up).
    pub fn total_stride(self) -> i64 {
        32
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The nonlinearity of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Act {
    /// `ReLU`.
    Relu,
    /// `ReLU6` (MobileNetV2).
    Relu6,
    /// Hard swish (MobileNetV3's `HS`).
    Hardswish,
}

/// How a row gives the expanded width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expansion {
    /// MobileNetV2's `t`: `round(in * t)` channels.
    Ratio(f64),
    /// MobileNetV3's absolute width, scaled by the width multiplier and rounded to 8.
    Channels(i64),
}

/// One table row: `repeat` blocks; the first has `stride`, the others stride 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Depthwise kernel size.
    pub kernel: i64,
    /// Expanded (hidden) width.
    pub expansion: Expansion,
    /// Output channels, before the width multiplier.
    pub out: i64,
    /// Squeeze-and-excite after the depthwise convolution.
    pub se: bool,
    /// Nonlinearity of the expand and depthwise convolutions.
    pub act: Act,
    /// Stride of the first block.
    pub stride: i64,
    /// Blocks in this row.
    pub repeat: usize,
}

const fn v2(t: f64, c: i64, n: usize, s: i64) -> Row {
    Row {
        kernel: 3,
        expansion: Expansion::Ratio(t),
        out: c,
        se: false,
        act: Act::Relu6,
        stride: s,
        repeat: n,
    }
}

const fn v3(kernel: i64, expanded: i64, out: i64, se: bool, act: Act, stride: i64) -> Row {
    Row {
        kernel,
        expansion: Expansion::Channels(expanded),
        out,
        se,
        act,
        stride,
        repeat: 1,
    }
}

use Act::{Hardswish as HS, Relu as RE};

/// MobileNetV2: `t, c, n, s` as in the paper's Table 2.
#[rustfmt::skip]
pub const MOBILENET_V2: &[Row] = &[
    //  t    c    n  s
    v2(1.0, 16,  1, 1),
    v2(6.0, 24,  2, 2),
    v2(6.0, 32,  3, 2),
    v2(6.0, 64,  4, 2),
    v2(6.0, 96,  3, 1),
    v2(6.0, 160, 3, 2),
    v2(6.0, 320, 1, 1),
];

/// MobileNetV3-Large: kernel, expanded, out, SE, activation, stride (paper's Table 1).
#[rustfmt::skip]
pub const MOBILENET_V3_LARGE: &[Row] = &[
    v3(3, 16,  16,  false, RE, 1),
    v3(3, 64,  24,  false, RE, 2),
    v3(3, 72,  24,  false, RE, 1),
    v3(5, 72,  40,  true,  RE, 2),
    v3(5, 120, 40,  true,  RE, 1),
    v3(5, 120, 40,  true,  RE, 1),
    v3(3, 240, 80,  false, HS, 2),
    v3(3, 200, 80,  false, HS, 1),
    v3(3, 184, 80,  false, HS, 1),
    v3(3, 184, 80,  false, HS, 1),
    v3(3, 480, 112, true,  HS, 1),
    v3(3, 672, 112, true,  HS, 1),
    v3(5, 672, 160, true,  HS, 2),
    v3(5, 960, 160, true,  HS, 1),
    v3(5, 960, 160, true,  HS, 1),
];

/// MobileNetV3-Small: kernel, expanded, out, SE, activation, stride (paper's Table 2).
#[rustfmt::skip]
pub const MOBILENET_V3_SMALL: &[Row] = &[
    v3(3, 16,  16, true,  RE, 2),
    v3(3, 72,  24, false, RE, 2),
    v3(3, 88,  24, false, RE, 1),
    v3(5, 96,  40, true,  HS, 2),
    v3(5, 240, 40, true,  HS, 1),
    v3(5, 240, 40, true,  HS, 1),
    v3(5, 120, 48, true,  HS, 1),
    v3(5, 144, 48, true,  HS, 1),
    v3(5, 288, 96, true,  HS, 2),
    v3(5, 576, 96, true,  HS, 1),
    v3(5, 576, 96, true,  HS, 1),
];

/// torchvision's `_make_divisible`: the nearest multiple of `divisor`, at least `divisor`,
/// and never more than 10% below `value`.
///
/// ```
/// use basis_models::make_divisible;
/// assert_eq!(make_divisible(16.0 * 0.75, 8), 16);
/// assert_eq!(make_divisible(1280.0 * 0.5, 8), 640);
/// assert_eq!(make_divisible(72.0 * 0.5, 8), 40);
/// ```
pub fn make_divisible(value: f64, divisor: i64) -> i64 {
    let d = divisor as f64;
    let mut rounded = (((value + d / 2.0) as i64) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * value {
        rounded += divisor;
    }
    rounded
}
