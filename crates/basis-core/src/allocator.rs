//! How the C allocator treats the large blocks tensors live in.
//!
//! glibc's `malloc` serves each block above a threshold (128 KiB at first, adapting up to
//! 32 MiB) with its own `mmap`, gives it back to the kernel on `free`, and trims the
//! heap's free top beyond 128 KiB. A network's activations and scratch buffers are
//! megabytes, allocated and freed in every layer, so every batch faults the same memory
//! in again, page by page, each page zeroed by the kernel. On the 2-core benchmark
//! machine (3 alternating rounds, batch 32, medians of the per-round ratios) keeping
//! freed blocks made basisnet-mv3 1.58x faster in fp32 (73-90 images/s against 105-121)
//! and 1.46x in bf16, the static MobileNetV3-Large 1.45x in fp32 (155-205 against
//! 234-262), peak memory within 2%. PyTorch programs gain the same way (PyTorch's CPU
//! performance guide recommends swapping the allocator), so `cargo xtask bench` runs its
//! PyTorch peer with the same setting.
//!
//! [`keep_freed_memory`] keeps freed blocks in the process (up to 1 GiB a block): memory
//! a batch frees serves the next batch without faults. The cost: the process holds on to
//! its peak memory instead of returning it between batches (the peak itself did not
//! grow). The `basisnet` command calls it first thing; programs using the crates call it
//! themselves if they want it.

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorSetting {
    /// Freed blocks now stay in the process.
    Kept,
    /// The environment already sets glibc's malloc parameters (`MALLOC_MMAP_THRESHOLD_`,
    /// `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_` or `GLIBC_TUNABLES`): left as they are.
    LeftToEnvironment,
    /// Not glibc (another OS or C library), or glibc refused the values: unchanged.
    Unchanged,
}

/// The environment variables through which a user sets glibc's malloc parameters.
pub const MALLOC_VARIABLES: [&str; 4] = [
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
];

/// The largest block served from the heap and the free top kept untrimmed, in bytes.
pub const KEEP_BYTES: i32 = 1 << 30;

/// Keep freed blocks of up to [`KEEP_BYTES`] in the process, so that tensors allocated in
/// every batch reuse memory instead of faulting it in again (see the module's
/// documentation for the measurements). Call it once, early, before the first tensors;
/// a user's own malloc settings in the environment win. The same effect from outside a
/// program: `MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824`.
///
/// ```
/// use basis_core::allocator::{keep_freed_memory, AllocatorSetting, MALLOC_VARIABLES};
///
/// let setting = keep_freed_memory();
/// let user_set = MALLOC_VARIABLES.iter().any(|v| std::env::var_os(v).is_some());
/// if user_set {
///     assert_eq!(setting, AllocatorSetting::LeftToEnvironment);
/// } else if cfg!(all(target_os = "linux", target_env = "gnu")) {
///     assert_eq!(setting, AllocatorSetting::Kept);
/// } else {
///     assert_eq!(setting, AllocatorSetting::Unchanged);
/// }
/// ```
pub fn keep_freed_memory() -> AllocatorSetting {
    if MALLOC_VARIABLES
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    {
        return AllocatorSetting::LeftToEnvironment;
    }
    set_thresholds()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds() -> AllocatorSetting {
    use std::os::raw::c_int;
    extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    // SAFETY: `mallopt` only sets two of glibc's malloc parameters; both values are in the
    // range it documents, and it reports a refusal by returning 0.
    let (mmap, trim) = unsafe {
        (
            mallopt(M_MMAP_THRESHOLD, KEEP_BYTES),
            mallopt(M_TRIM_THRESHOLD, KEEP_BYTES),
        )
    };
    if mmap == 1 && trim == 1 {
        AllocatorSetting::Kept
    } else {
        AllocatorSetting::Unchanged
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds() -> AllocatorSetting {
    AllocatorSetting::Unchanged
}
