//! The C interface of `cpp/c10d.cpp` (and `cpp/nccl.cpp` when built).

use std::os::raw::{c_char, c_int};
use torch_sys::C_tensor;

/// A `c10::intrusive_ptr<c10d::Store>` owned by Rust.
#[repr(C)]
pub struct Store {
    _opaque: [u8; 0],
}

/// A `c10::intrusive_ptr<c10d::Work>` owned by Rust.
#[repr(C)]
pub struct Work {
    _opaque: [u8; 0],
}

/// A `std::shared_ptr<Overlap>` (see c10d.cpp) owned by Rust.
#[repr(C)]
pub struct Overlap {
    _opaque: [u8; 0],
}

extern "C" {
    pub fn bd_overlap_new(
        group: i64,
        params: *const *mut C_tensor,
        count: usize,
        bucket_sizes: *const usize,
        buckets: usize,
        out: *mut *mut Overlap,
    ) -> *mut c_char;
    pub fn bd_overlap_free(handle: *mut Overlap);
    pub fn bd_overlap_arm(handle: *mut Overlap);
    pub fn bd_overlap_finish(
        handle: *mut Overlap,
        world_size: i64,
        timeout_ms: i64,
        seen: *mut c_char,
    ) -> *mut c_char;
    pub fn bd_free_message(message: *mut c_char);
    pub fn bd_store_new(
        host: *const c_char,
        port: u16,
        is_server: c_int,
        world_size: i64,
        timeout_ms: i64,
        prefix: *const c_char,
        out: *mut *mut Store,
    ) -> *mut c_char;
    pub fn bd_store_free(store: *mut Store);
    pub fn bd_group_new_gloo(
        store: *mut Store,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        interface: *const c_char,
        hostname: *const c_char,
        threads: i64,
        out: *mut i64,
    ) -> *mut c_char;
    #[cfg(basis_dist_nccl)]
    pub fn bd_group_new_nccl(
        store: *mut Store,
        rank: c_int,
        size: c_int,
        timeout_ms: i64,
        out: *mut i64,
    ) -> *mut c_char;
    pub fn bd_group_free(group: i64);
    pub fn bd_all_reduce(
        group: i64,
        tensors: *const *mut C_tensor,
        count: usize,
        op: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn bd_all_reduce_start(
        group: i64,
        tensor: *mut C_tensor,
        out: *mut *mut Work,
    ) -> *mut c_char;
    pub fn bd_work_wait(work: *mut Work, timeout_ms: i64) -> *mut c_char;
    pub fn bd_work_free(work: *mut Work);
    pub fn bd_broadcast(
        group: i64,
        tensors: *const *mut C_tensor,
        count: usize,
        root: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn bd_barrier(group: i64, timeout_ms: i64) -> *mut c_char;
    pub fn bd_all_reduce_differentiable(
        group: i64,
        input: *mut C_tensor,
        timeout_ms: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Turn a returned message (null: success) into a `Result`, freeing it.
pub fn check(message: *mut c_char) -> Result<(), String> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null message is a NUL-terminated string the shim malloc'ed for us.
    let text = unsafe { std::ffi::CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, with the shim's allocator.
    unsafe { bd_free_message(message) };
    Err(text)
}
