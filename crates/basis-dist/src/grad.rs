//! Gradient averaging across ranks in buckets, as DDP does: parameters are grouped in
//! reverse order (the order backward produces their gradients) into buckets of about
//! `cap` bytes; after backward every bucket is flattened into one tensor, all buckets are
//! all-reduced concurrently, then divided by the world size and copied back.

use crate::{DistError, ProcessGroup};
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
        let flags = Tensor::from_slice(&present.iter().map(|&p| p as i32).collect::<Vec<_>>());
        group.all_reduce_sum(&[&flags])?;
        let counts = Vec::<i32>::try_from(&flags).map_err(DistError::Torch)?;
        let world = group.world_size() as i32;
        if let Some(i) = counts.iter().position(|&c| c != 0 && c != world) {
            return Err(DistError::Mismatch(format!(
                "parameter {} (of {}, counted from the last) has a gradient on {} of {} ranks; \
                 every rank must run the same layers",
                i,
                self.params.len(),
                counts[i],
                world
            )));
        }
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
