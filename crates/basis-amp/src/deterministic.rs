//! libtorch's deterministic mode, process-wide: what `train.deterministic` turns on so
//! that a resumed CUDA run repeats the steps of one that never stopped bit for bit.

use crate::AmpError;

extern "C" {
    fn basis_amp_set_deterministic(on: i32) -> i32;
    fn basis_amp_is_deterministic() -> i32;
}

/// cuBLAS needs a fixed workspace for reproducible matrix products (CUDA's documented
/// setting); it is read when cuBLAS starts, so it is set before any CUDA work.
const CUBLAS_WORKSPACE: (&str, &str) = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8");

/// Turn deterministic algorithms on or off for the whole process (PyTorch's
/// `torch.use_deterministic_algorithms(on)` with `cudnn.deterministic = on` and cuDNN's
/// benchmarking off). An operation with no deterministic implementation then fails with
/// libtorch's message instead of running. Call it before the first CUDA operation: it also
/// sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` unless the environment has a value.
///
/// ```
/// basis_amp::set_deterministic(true)?;
/// assert!(basis_amp::is_deterministic());
/// basis_amp::set_deterministic(false)?;
/// assert!(!basis_amp::is_deterministic());
/// # Ok::<(), basis_amp::AmpError>(())
/// ```
pub fn set_deterministic(on: bool) -> Result<(), AmpError> {
    if on && std::env::var_os(CUBLAS_WORKSPACE.0).is_none() {
        std::env::set_var(CUBLAS_WORKSPACE.0, CUBLAS_WORKSPACE.1);
    }
    // SAFETY: a plain value; the shim catches every C++ exception.
    if unsafe { basis_amp_set_deterministic(i32::from(on)) } != 0 {
        return Err(AmpError::Torch("switch deterministic algorithms"));
    }
    Ok(())
}

/// Whether deterministic algorithms are on.
pub fn is_deterministic() -> bool {
    // SAFETY: no arguments; the shim catches every C++ exception.
    unsafe { basis_amp_is_deterministic() != 0 }
}
