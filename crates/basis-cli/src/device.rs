//! `--device`: where a command computes, as a typed flag.

use anyhow::{bail, Result};
use clap::ValueEnum;
use tch::Device;

/// Where to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when libtorch sees a GPU, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU (an error when there is none).
    Cuda,
}

impl DeviceChoice {
    /// The libtorch device, or one sentence when CUDA was asked for and there is none.
    pub fn resolve(self) -> Result<Device> {
        Ok(match self {
            DeviceChoice::Auto if tch::Cuda::is_available() => Device::Cuda(0),
            DeviceChoice::Auto | DeviceChoice::Cpu => Device::Cpu,
            DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
            DeviceChoice::Cuda => {
                bail!("--device cuda was asked for, but libtorch sees no CUDA device")
            }
        })
    }
}

/// The machine's memory in bytes (`MemTotal`), on Linux.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
