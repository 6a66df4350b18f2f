//! Kernel-bank blending ops for BasisNet.
//!
//! BasisNet (Zhang et al., *BasisNet: Two-stage Model Synthesis for Efficient Inference*,
//! CVPR 2021 workshops, arXiv 2105.03014) gives each image its own specialist network: a
//! lightweight model emits combination coefficients, and every basis layer of the
//! specialist applies `sum_i alpha[b, i] * W_i` to sample `b`. This crate holds those
//! layers, tensors in and tensors out, on any libtorch device:
//!
//! - [`BasisConv2d`] and [`BasisLinear`]: `N` bases of one layer's weight (any kernel size,
//!   stride, padding, dilation, groups; optional bias bank); `N = 1` is the static layer,
//!   stored exactly as PyTorch stores it.
//! - [`Strategy`]: how a batch is run (grouped convolution over the batch, batched matmul,
//!   mixing the outputs of the bases, one shared kernel, or the per-sample reference);
//!   `Auto` picks per layer shape from measurements.
//! - [`softmax_with_temperature`] and [`BasisDropout`]: coefficient helpers.
//! - [`LayerCost`]: parameters, multiply-adds and synthesis multiply-adds.
//! - [`batch_norm_train`]: training-mode batch norm on NCHW planes, faster than libtorch's.
//!
//! Every fallible call returns [`BasisError`]; no libtorch error aborts the caller.
//!
//! ```
//! use basis_core::{softmax_with_temperature, BasisConv2d, Conv2dGeometry, Strategy};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! // A depthwise 3x3 with 8 bases.
//! let dw = Conv2dGeometry::new(32, 32, 3).padding(1).groups(32);
//! let layer = BasisConv2d::new(&(vs.root() / "dw"), dw, 8, false)?;
//! let x = Tensor::randn([4, 32, 14, 14], (Kind::Float, Device::Cpu));
//! let logits = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
//! let alpha = softmax_with_temperature(&logits, 1.0)?;
//! let fast = layer.forward(&x, &alpha)?;
//! let reference = layer.forward_with(&x, &alpha, Strategy::PerSample)?;
//! assert!(fast.allclose(&reference, 1e-4, 1e-5, false));
//! # Ok::<(), basis_core::BasisError>(())
//! ```

mod activation;
pub mod allocator;
mod bank;
mod batch_norm;
mod coefficients;
mod conv;
mod cost;
mod depthwise;
mod depthwise_grad;
mod error;
pub mod frozen;
pub mod fused;
mod geometry;
mod layer;
mod layout;
mod linear;
mod pointwise;
mod strategy;
mod synthesis;
pub mod timing;

pub use activation::Activation;
pub use bank::KernelBank;
pub use batch_norm::batch_norm_train;
pub use coefficients::{softmax_with_temperature, BasisDropout};
pub use conv::BasisConv2d;
pub use cost::LayerCost;
pub use error::{BasisError, Result};
pub use geometry::Conv2dGeometry;
pub use layout::{is_channels_last, to_channels_last};
pub use linear::BasisLinear;
pub use strategy::Strategy;
