//! Gradient averaging across ranks in buckets, as DDP does: parameters are grouped in
//! reverse order (the order backward produces their gradients) into buckets of about
//! `cap` bytes; after backward every bucket is flattened into one tensor, all buckets are
//! all-reduced concurrently, then divided by the world size and copied back.

use crate::{ffi, DistError, ProcessGroup};
use std::sync::Arc;
use tch::Tensor;

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// The trainable parameters of a model, in buckets.
pub struct GradientBuckets {
    params: Vec<Tensor>,
    cap: usize,
    /// The flat tensors of the last call's buckets, reused while the buckets stay the same
    /// (a fresh allocation of this size costs page faults on every step).
    flat: std::sync::Mutex<(Vec<Vec<usize>>, Vec<Tensor>)>,
}

impl std::fmt::Debug for GradientBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradientBuckets")
            .field("params", &self.params.len())
            .field("cap", &self.cap)
            .finish()
    }
}

impl GradientBuckets {
    /// Buckets of about `cap` bytes over `params` (in the order the model lists them).
    pub fn new(params: &[Tensor], cap: usize) -> Self {
        GradientBuckets {
            params: params.iter().rev().map(|p| p.shallow_clone()).collect(),
            cap: cap.max(1),
            flat: Default::default(),
        }
    }

    /// The buckets, as index lists into the reversed parameter list, for the parameters
    /// that have a gradient (`present`); a bucket holds one kind and device.
    fn buckets(&self, present: &[bool]) -> Vec<Vec<usize>> {
        let mut out: Vec<Vec<usize>> = Vec::new();
        let mut bytes = 0usize;
        for (i, p) in self.params.iter().enumerate().filter(|(i, _)| present[*i]) {
            let size = p.numel() * p.kind().elt_size_in_bytes();
            let same = out.last().and_then(|b| b.last()).is_some_and(|&j| {
                let q = &self.params[j];
                q.kind() == p.kind() && q.device() == p.device()
            });
            if out.is_empty() || !same || bytes + size > self.cap && bytes > 0 {
                out.push(Vec::new());
                bytes = 0;
            }
            out.last_mut().expect("pushed above").push(i);
            bytes += size;
        }
        out
    }

    /// Average every parameter's gradient across the ranks of `group`, in place.
    ///
    /// Every rank must have gradients for the same parameters (checked: one small
    /// all-reduce of the presence flags, which names the first parameter that differs).
    pub fn all_reduce_mean(&self, group: &ProcessGroup) -> Result<(), DistError> {
        if group.world_size() == 1 {
            return Ok(());
        }
        let grads: Vec<Tensor> = self.params.iter().map(|p| p.grad()).collect();
        let present: Vec<bool> = grads.iter().map(|g| g.defined()).collect();
        check_presence(group, &present)?;
        let buckets = self.buckets(&present);
        let mut cache = self.flat.lock().unwrap_or_else(|e| e.into_inner());
        if cache.0 != buckets {
            let mut flat = Vec::with_capacity(buckets.len());
            for bucket in &buckets {
                let n: i64 = bucket.iter().map(|&i| grads[i].numel() as i64).sum();
                flat.push(Tensor::f_empty(
                    [n],
                    (grads[bucket[0]].kind(), grads[bucket[0]].device()),
                )?);
            }
            *cache = (buckets.clone(), flat);
        }
        let flat = &cache.1;
        // Flatten (one pass), reduce every bucket at once, write the mean back (one pass).
        for (bucket, out) in buckets.iter().zip(flat) {
            let parts: Vec<Tensor> = bucket.iter().map(|&i| grads[i].reshape([-1])).collect();
            let _ = Tensor::f_cat_out(out, &parts, 0)?;
        }
        let pending = flat
            .iter()
            .map(|t| group.start_all_reduce_sum(t))
            .collect::<Result<Vec<_>, _>>()?;
        for work in pending {
            work.wait()?;
        }
        let scale = 1.0 / group.world_size() as f64;
        tch::no_grad(|| -> Result<(), DistError> {
            for (bucket, sum) in buckets.iter().zip(flat) {
                let mut offset = 0i64;
                for &i in bucket {
                    let g = &grads[i];
                    let n = g.numel() as i64;
                    let part = sum.f_narrow(0, offset, n)?.f_view(g.size().as_slice())?;
                    let _ = part.f_mul_scalar_out(g, scale)?;
                    offset += n;
                }
            }
            Ok(())
        })
    }

    /// Number of buckets when every parameter has a gradient.
    pub fn len(&self) -> usize {
        self.buckets(&vec![true; self.params.len()]).len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
}

/// Check that every rank had gradients for the same parameters: one small all-reduce of
/// the flags; a mismatch names the first parameter (counted from the last).
fn check_presence(group: &ProcessGroup, present: &[bool]) -> Result<(), DistError> {
    let flags = Tensor::from_slice(&present.iter().map(|&p| p as i32).collect::<Vec<_>>());
    group.all_reduce_sum(&[&flags])?;
    let counts = Vec::<i32>::try_from(&flags).map_err(DistError::Torch)?;
    let world = group.world_size() as i32;
    match counts.iter().position(|&c| c != 0 && c != world) {
        Some(i) => Err(DistError::Mismatch(format!(
            "parameter {i} (of {}, counted from the last) has a gradient on {} of {world} \
             ranks; every rank must run the same layers",
            present.len(),
            counts[i],
        ))),
        None => Ok(()),
    }
}

/// Gradient averaging that overlaps backward, as DDP's reducer does: a hook on every
/// parameter copies its gradient into its bucket when autograd produces it, and each
/// bucket's all-reduce starts as soon as the bucket is full, while backward goes on.
/// Call [`OverlappingBuckets::arm`] before backward and [`OverlappingBuckets::finish`]
/// after it; the result equals [`GradientBuckets::all_reduce_mean`]'s.
///
/// Every rank must run the same layers in the same order (buckets fill, and start, in
/// the order backward reaches them). Buckets with parameters that got no gradient are
/// reduced after backward (zeros in those places), and those parameters keep no gradient.
pub struct OverlappingBuckets {
    handle: *mut ffi::Overlap,
    group: Arc<ProcessGroup>,
    count: usize,
    buckets: usize,
}

// SAFETY: the C++ state is guarded by its own mutex; hooks hold only a weak reference.
unsafe impl Send for OverlappingBuckets {}

impl std::fmt::Debug for OverlappingBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlappingBuckets")
            .field("params", &self.count)
            .field("buckets", &self.buckets)
            .finish()
    }
}

impl OverlappingBuckets {
    /// Hooks on `params` (in the order the model lists them), buckets of about `cap`
    /// bytes in reverse order, reducing over `group`.
    pub fn new(group: Arc<ProcessGroup>, params: &[Tensor], cap: usize) -> Result<Self, DistError> {
        let plan = GradientBuckets::new(params, cap);
        let buckets = plan.buckets(&vec![true; params.len()]);
        let sizes: Vec<usize> = buckets.iter().map(Vec::len).collect();
        let ordered: Vec<&Tensor> = buckets.iter().flatten().map(|&i| &plan.params[i]).collect();
        let list = crate::group::ptrs(&ordered);
        let mut handle = std::ptr::null_mut();
        // SAFETY: live tensors (the shim keeps its own references), sizes adding up to them.
        ffi::check(unsafe {
            ffi::bd_overlap_new(
                group.id(),
                list.as_ptr(),
                list.len(),
                sizes.as_ptr(),
                sizes.len(),
                &mut handle,
            )
        })
        .map_err(DistError::Mismatch)?;
        Ok(OverlappingBuckets {
            handle,
            group,
            count: list.len(),
            buckets: sizes.len(),
        })
    }

    /// Number of buckets.
    pub fn len(&self) -> usize {
        self.buckets
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Start listening for this step's gradients (call before backward).
    pub fn arm(&self) {
        // SAFETY: live handle.
        unsafe { ffi::bd_overlap_arm(self.handle) }
    }

    /// Finish this step (call after backward): every parameter that got a gradient holds
    /// the mean over the ranks.
    pub fn finish(&self) -> Result<(), DistError> {
        let mut seen = vec![0 as std::os::raw::c_char; self.count];
        // SAFETY: live handle, `seen` holds one flag per parameter.
        ffi::check(unsafe {
            ffi::bd_overlap_finish(
                self.handle,
                self.group.world_size() as i64,
                self.group.timeout_ms(),
                seen.as_mut_ptr(),
            )
        })
        .map_err(self.group.fail("all-reduce (sum)"))?;
        let present: Vec<bool> = seen.iter().map(|&s| s != 0).collect();
        check_presence(&self.group, &present)
    }
}

impl Drop for OverlappingBuckets {
    fn drop(&mut self) {
        // SAFETY: made by bd_overlap_new, freed once (its hooks are removed).
        unsafe { ffi::bd_overlap_free(self.handle) }
    }
}
