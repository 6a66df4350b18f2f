//! [`DeviceChoice`]: where a run or a command computes, as the recipe key `train.device`
//! and the `--device` flag spell it (`auto`, `cpu`, `cuda`, `cuda:N`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use tch::Device;

/// Where to compute.
///
/// ```
/// use basis_train::device::DeviceChoice;
/// let cpu: DeviceChoice = "cpu".parse()?;
/// assert_eq!(cpu.resolve(None)?, tch::Device::Cpu);
/// assert_eq!("cuda:1".parse::<DeviceChoice>()?, DeviceChoice::Cuda(Some(1)));
/// assert!("tpu".parse::<DeviceChoice>().is_err());
/// if !tch::Cuda::is_available() {
///     let err = DeviceChoice::Cuda(None).resolve(None).unwrap_err().to_string();
///     assert!(err.contains("no CUDA device"), "{err}");
///     assert_eq!(DeviceChoice::Auto.resolve(Some(3))?, tch::Device::Cpu);
/// }
/// # Ok::<(), basis_train::device::DeviceError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU (the process's local rank picks which), else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA GPU: the one given, or the process's local rank (0 for a single process).
    Cuda(Option<usize>),
}

/// A device that cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(String);

impl DeviceChoice {
    /// The libtorch device, for a process of local rank `local_rank` (a data-parallel
    /// rank; `None` for a single process).
    pub fn resolve(self, local_rank: Option<usize>) -> Result<Device, DeviceError> {
        let gpus = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        let cuda = |index: usize| -> Result<Device, DeviceError> {
            if gpus == 0 {
                return Err(DeviceError(format!(
                    "the device {self} was asked for, but libtorch sees no CUDA device (use cpu or auto)"
                )));
            }
            if index >= gpus {
                return Err(DeviceError(format!(
                    "the device cuda:{index} was asked for, but libtorch sees {gpus} CUDA device(s)"
                )));
            }
            Ok(Device::Cuda(index))
        };
        match self {
            DeviceChoice::Auto if gpus > 0 => cuda(local_rank.unwrap_or(0) % gpus),
            DeviceChoice::Auto | DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(Some(index)) => cuda(index),
            DeviceChoice::Cuda(None) => cuda(local_rank.unwrap_or(0)),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(None) => f.write_str("cuda"),
            DeviceChoice::Cuda(Some(i)) => write!(f, "cuda:{i}"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            DeviceError(format!(
                "expected a device auto, cpu, cuda or cuda:N, found {s:?}"
            ))
        };
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" => DeviceChoice::Cuda(None),
            _ => {
                let index = s.strip_prefix("cuda:").ok_or_else(bad)?;
                DeviceChoice::Cuda(Some(index.parse().map_err(|_| bad())?))
            }
        })
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
