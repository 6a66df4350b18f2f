//! Automatic mixed precision for `tch` on any device.
//!
//! [`autocast`] runs a closure under libtorch's autocast for the device of the tensors it
//! computes on: matrix products and convolutions in [`Precision::Bf16`] or
//! [`Precision::Fp16`], reductions, softmax and losses in fp32, weights kept in fp32 (what
//! PyTorch's `torch.autocast` does). `tch`'s own `autocast` reaches CUDA only; this one
//! goes through a small C++ shim and works on the CPU too (bf16 runs on AMX where the CPU
//! has it). [`LossScaler`] keeps fp16 gradients from underflowing. [`set_deterministic`]
//! is libtorch's deterministic mode, the other numerics switch `tch` does not reach.
//!
//! ```
//! use basis_amp::{autocast, Precision};
//! use tch::{Device, Kind, Tensor};
//!
//! let a = Tensor::rand([4, 8], (Kind::Float, Device::Cpu));
//! let b = Tensor::rand([8, 2], (Kind::Float, Device::Cpu));
//! let product = autocast(Device::Cpu, Precision::Bf16, || a.matmul(&b))?;
//! assert_eq!(product.kind(), Kind::BFloat16);
//! // Outside the region, the same product is fp32 again.
//! assert_eq!(a.matmul(&b).kind(), Kind::Float);
//! # Ok::<(), basis_amp::AmpError>(())
//! ```

mod deterministic;
mod scaler;

pub use deterministic::{is_deterministic, set_deterministic};
pub use scaler::LossScaler;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::Device;

extern "C" {
    fn basis_amp_enter(
        device: i32,
        dtype: i32,
        prev_enabled: *mut i32,
        prev_dtype: *mut i32,
    ) -> i32;
    fn basis_amp_exit(device: i32, prev_enabled: i32, prev_dtype: i32) -> i32;
    fn basis_amp_is_enabled(device: i32) -> i32;
}

/// What mixed precision can fail on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmpError {
    /// A device autocast does not cover here.
    #[error("autocast runs on the CPU and CUDA, not on {0:?}")]
    Device(Device),
    /// libtorch refused to change its state.
    #[error("libtorch could not {0}")]
    Torch(&'static str),
    /// A precision name that is not one.
    #[error("expected a precision fp32, bf16 or fp16, found {0:?}")]
    Name(String),
}

/// The arithmetic precision of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// Autocast to bfloat16 (fp32's range, no loss scaling needed).
    Bf16,
    /// Autocast to float16 (needs [`LossScaler`] when training).
    Fp16,
}

impl Precision {
    /// libtorch's `c10::ScalarType` of the autocast dtype.
    fn scalar_type(self) -> Option<i32> {
        match self {
            Precision::Fp32 => None,
            Precision::Fp16 => Some(5),
            Precision::Bf16 => Some(15),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        })
    }
}

impl FromStr for Precision {
    type Err = AmpError;

    fn from_str(s: &str) -> Result<Self, AmpError> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "fp16" => Ok(Precision::Fp16),
            other => Err(AmpError::Name(other.to_string())),
        }
    }
}

/// libtorch's `c10::DeviceType` of a device.
fn device_type(device: Device) -> Result<i32, AmpError> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => Err(AmpError::Device(other)),
    }
}

/// Restores the autocast state of a device when a region ends, panics included.
struct Region {
    device: i32,
    prev_enabled: i32,
    prev_dtype: i32,
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: plain values; the shim catches every C++ exception.
        unsafe { basis_amp_exit(self.device, self.prev_enabled, self.prev_dtype) };
    }
}

/// Run `f` under autocast to `precision` on `device` (regions nest; [`Precision::Fp32`]
/// runs `f` as it is). Gradients of what `f` computes flow back to the fp32 weights.
pub fn autocast<T>(
    device: Device,
    precision: Precision,
    f: impl FnOnce() -> T,
) -> Result<T, AmpError> {
    let Some(dtype) = precision.scalar_type() else {
        return Ok(f());
    };
    let device = device_type(device)?;
    let (mut prev_enabled, mut prev_dtype) = (0, 0);
    // SAFETY: plain values and two out-pointers to live integers.
    if unsafe { basis_amp_enter(device, dtype, &mut prev_enabled, &mut prev_dtype) } != 0 {
        return Err(AmpError::Torch("turn on autocast"));
    }
    let _region = Region {
        device,
        prev_enabled,
        prev_dtype,
    };
    Ok(f())
}

/// Whether autocast is on for `device` on this thread.
pub fn is_enabled(device: Device) -> bool {
    // SAFETY: a plain value; the shim catches every C++ exception.
    device_type(device).is_ok_and(|d| unsafe { basis_amp_is_enabled(d) } != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn regions_nest_and_restore_the_state_they_found() {
        let x = Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::rand([4, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = |x: &Tensor| x.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1);
        assert!(!is_enabled(Device::Cpu));
        let (inner, outer) = autocast(Device::Cpu, Precision::Bf16, || {
            let inner = autocast(Device::Cpu, Precision::Fp16, || conv(&x).kind()).unwrap();
            (inner, conv(&x).kind())
        })
        .unwrap();
        assert_eq!((inner, outer), (Kind::Half, Kind::BFloat16));
        assert!(!is_enabled(Device::Cpu));
        assert_eq!(conv(&x).kind(), Kind::Float);
        // A panic inside a region still ends it.
        let caught = std::panic::catch_unwind(|| {
            autocast(Device::Cpu, Precision::Bf16, || panic!("inside")).unwrap()
        });
        assert!(caught.is_err() && !is_enabled(Device::Cpu));
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("int8".parse::<Precision>().is_err());
    }
}
