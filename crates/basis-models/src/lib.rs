//! MobileNetV2/V3 backbones, the BasisNet lightweight model and specialist, and BasisNet
//! with early exit, on [`basis_core`]'s basis layers.
//!
//! Architectures are tables ([`arch`]) decoded by one builder ([`MobileNet`]) that mirrors
//! torchvision 0.28 name for name. A static network is the `N = 1` case of the same code
//! ([`BasisSpec::fixed`]); a specialist chooses its basis layers, `N` and the scope of its
//! coefficients with a [`BasisSpec`].

pub mod arch;
pub mod atomic;
mod basis;
mod basisnet;
mod batch_norm;
pub mod checkpoint;
mod config;
#[doc(hidden)]
pub mod cuda_checks;
pub mod early_exit;
mod error;
mod layers;
mod lightweight;
mod mobilenet;
mod names;
pub mod onnx;
pub mod presets;
pub mod pretrained;
mod profile;
mod specialize;
mod walk;

pub use arch::{make_divisible, Act, Arch};
pub use basis::{BasisLayers, BasisSpec, CoefficientScope};
pub use basisnet::{BasisNet, BasisNetConfig, BasisNetOutput, BasisNetProfile};
pub use batch_norm::{with_synchronized_batch_norm, BatchNorm2d, BatchNormSpec, ReplicaSum};
pub use config::{
    Layout, MobileNetConfig, MAX_CLASSES, MAX_IN_CHANNELS, MAX_RESOLUTION, MAX_WIDTH,
};
pub use early_exit::{EarlyExitOutput, ExitPoint, Stage};
pub use error::{ModelError, Result};
pub use lightweight::{Lightweight, LightweightOutput};
pub use mobilenet::MobileNet;
pub use profile::{Profile, ProfileRow, Totals};
pub use walk::{LayerInfo, LayerKind};
