//! The runner of the CUDA check binaries (`tests/cuda.rs` of `basis-models` and
//! `basis-train`): not part of the API. Each check runs when libtorch sees a GPU; without
//! one the binary prints which it skipped and why and counts none as passed;
//! `BASISNET_CUDA_DRY_RUN=1` runs them with the CPU standing in for the GPU, which checks
//! the checks' own code, not CUDA.

use std::panic::{catch_unwind, AssertUnwindSafe};
use tch::Device;

/// A check: its name and the function that runs it on the device it is given.
pub type Case = (&'static str, fn(Device));

/// Run `cases` on `cuda:0` (or the CPU in a dry run); exit 1 when one fails.
pub fn run(cases: &[Case]) {
    let dry = std::env::var_os("BASISNET_CUDA_DRY_RUN").is_some();
    if !tch::Cuda::is_available() && !dry {
        for (name, _) in cases {
            println!("test {name} ... skipped: libtorch sees no CUDA device");
        }
        println!("cuda: 0 passed, 0 failed, {} skipped", cases.len());
        return;
    }
    let device = if dry {
        println!("dry run: the CPU stands in for the GPU");
        Device::Cpu
    } else {
        Device::Cuda(0)
    };
    let mut failed = 0;
    for (name, case) in cases {
        println!("test {name} ...");
        let ok = catch_unwind(AssertUnwindSafe(|| case(device))).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    println!("cuda: {} passed, {failed} failed", cases.len() - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
