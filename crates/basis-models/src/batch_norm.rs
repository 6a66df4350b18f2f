//! Batch normalization with torchvision's variable names ([`BatchNorm2d`]), and its
//! synchronized form for data-parallel training ([`with_synchronized_batch_norm`]).

use crate::error::Result;
use crate::names::module_name;
use std::cell::RefCell;
use std::rc::Rc;
use tch::{nn, Kind, Tensor};

/// A sum across the replicas of a data-parallel job that autograd can go through (its
/// backward sums the gradients across replicas): what synchronized batch norm needs.
/// `basis-train` implements it over a c10d process group.
pub trait ReplicaSum {
    /// The element-wise sum of `x` over every replica.
    fn replica_sum(&self, x: &Tensor) -> std::result::Result<Tensor, String>;
}

thread_local! {
    static REPLICAS: RefCell<Option<Rc<dyn ReplicaSum>>> = const { RefCell::new(None) };
}

/// Run `f` with synchronized batch norm: every [`BatchNorm2d`] that normalizes with batch
/// statistics on this thread takes them over the union of the replicas' batches (PyTorch's
/// `SyncBatchNorm`), summing per-channel sums, sums of squares and counts with `sum`.
/// Every replica must run the same layers in the same order.
///
/// ```
/// use basis_models::{with_synchronized_batch_norm, BatchNorm2d, BatchNormSpec, ReplicaSum};
/// use std::rc::Rc;
/// use tch::{nn, Device, Kind, Tensor};
///
/// /// One replica: the sum over replicas is the tensor itself.
/// struct Alone;
/// impl ReplicaSum for Alone {
///     fn replica_sum(&self, x: &Tensor) -> Result<Tensor, String> {
///         Ok(x.shallow_clone())
///     }
/// }
/// let vs = nn::VarStore::new(Device::Cpu);
/// let bn = BatchNorm2d::new(&vs.root(), 3, BatchNormSpec { eps: 1e-5, momentum: 0.1 })?;
/// let x = Tensor::randn([4, 3, 5, 5], (Kind::Float, Device::Cpu));
/// let synced = with_synchronized_batch_norm(Rc::new(Alone), || bn.forward_t(&x, true))?;
/// let plain = bn.forward_t(&x, true)?;
/// assert!(synced.allclose(&plain, 1e-4, 1e-4, false));
/// # Ok::<(), basis_models::ModelError>(())
/// ```
pub fn with_synchronized_batch_norm<R>(sum: Rc<dyn ReplicaSum>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<dyn ReplicaSum>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let old = self.0.take();
            REPLICAS.with(|r| *r.borrow_mut() = old);
        }
    }
    let _restore = Restore(REPLICAS.with(|r| r.borrow_mut().replace(sum)));
    f()
}

/// Batch-norm hyper-parameters (PyTorch's convention: `running = (1 - m) * running + m * batch`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNormSpec {
    /// Added to the variance.
    pub eps: f64,
    /// Weight of the current batch in the running statistics.
    pub momentum: f64,
}

/// `BatchNorm2d` with torchvision's variable names, `num_batches_tracked` included.
#[derive(Debug)]
pub struct BatchNorm2d {
    name: String,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    spec: BatchNormSpec,
}

impl BatchNorm2d {
    /// Weight one, bias zero, statistics zero mean and unit variance, as PyTorch.
    pub fn new(path: &nn::Path, channels: i64, spec: BatchNormSpec) -> Result<Self> {
        Ok(Self {
            name: module_name(path),
            weight: path.f_ones("weight", &[channels])?,
            bias: path.f_zeros("bias", &[channels])?,
            running_mean: path.f_zeros_no_train("running_mean", &[channels])?,
            running_var: path.f_ones_no_train("running_var", &[channels])?,
            num_batches_tracked: path.add(
                "num_batches_tracked",
                Tensor::f_zeros([], (Kind::Int64, path.device()))?,
                false,
            ),
            spec,
        })
    }

    /// Normalize with batch statistics (and update the running ones) when `train`.
    ///
    /// Inside [`with_synchronized_batch_norm`], training statistics are those of every
    /// replica's batch together.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train {
            let _ = tch::no_grad(|| self.num_batches_tracked.shallow_clone().f_add_scalar_(1))?;
            if let Some(sum) = REPLICAS.with(|r| r.borrow().clone()) {
                return self.forward_synchronized(x, sum.as_ref());
            }
            // NCHW fp32 on the CPU (a per-sample specialist): basis-core's kernel.
            if let Some(y) = basis_core::batch_norm_train(
                x,
                &self.weight,
                &self.bias,
                &self.running_mean,
                &self.running_var,
                self.spec.momentum,
                self.spec.eps,
            )? {
                return Ok(y);
            }
        }
        Ok(x.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            self.spec.momentum,
            self.spec.eps,
            true,
        )?)
    }

    /// Batch norm over the union of the replicas' batches: per-channel sum, sum of squares
    /// and count summed across replicas (differentiably), biased variance to normalize,
    /// unbiased to update the running variance, as PyTorch's `SyncBatchNorm`.
    fn forward_synchronized(&self, x: &Tensor, sum: &dyn ReplicaSum) -> Result<Tensor> {
        let c = self.weight.size()[0];
        let dims: &[i64] = &[0, 2, 3];
        let count = (x.numel() as i64 / c.max(1)) as f64;
        let xf = x.f_to_kind(Kind::Float)?;
        let stats = Tensor::f_cat(
            &[
                xf.f_sum_dim_intlist(dims, false, Kind::Float)?,
                xf.f_square()?.f_sum_dim_intlist(dims, false, Kind::Float)?,
                Tensor::f_full([1], count, (Kind::Float, x.device()))?,
            ],
            0,
        )?;
        let total = sum
            .replica_sum(&stats)
            .map_err(crate::ModelError::Replica)?;
        let n = total.f_narrow(0, 2 * c, 1)?;
        let n_value = n.f_double_value(&[0])?;
        let mean = total.f_narrow(0, 0, c)?.f_div(&n)?;
        let var = total
            .f_narrow(0, c, c)?
            .f_div(&n)?
            .f_sub(&mean.f_square()?)?
            .f_clamp_min(0.0)?;
        tch::no_grad(|| -> Result<()> {
            let m = self.spec.momentum;
            let unbiased = n_value / (n_value - 1.0).max(1.0);
            let _ = self
                .running_mean
                .shallow_clone()
                .f_mul_scalar_(1.0 - m)?
                .f_add_(&mean.f_mul_scalar(m)?)?;
            let _ = self
                .running_var
                .shallow_clone()
                .f_mul_scalar_(1.0 - m)?
                .f_add_(&var.f_mul_scalar(m * unbiased)?)?;
            Ok(())
        })?;
        let scale = var
            .f_add_scalar(self.spec.eps)?
            .f_rsqrt()?
            .f_mul(&self.weight)?;
        let shift = self.bias.f_sub(&mean.f_mul(&scale)?)?;
        let shape = [1, c, 1, 1];
        Ok(xf
            .f_mul(&scale.f_view(shape)?)?
            .f_add(&shift.f_view(shape)?)?
            .f_to_kind(x.kind())?)
    }

    /// Copy parameters, running statistics and counter from `other` (same width).
    pub(crate) fn copy_from(&self, other: &BatchNorm2d) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for (dst, src) in self.tensors().into_iter().zip(other.tensors()) {
                dst.shallow_clone().f_copy_(src)?;
            }
            Ok(())
        })
    }

    fn tensors(&self) -> [&Tensor; 5] {
        [
            &self.weight,
            &self.bias,
            &self.running_mean,
            &self.running_var,
            &self.num_batches_tracked,
        ]
    }

    /// The inference normalization as a per-channel affine map `x * scale + shift`, from
    /// the running statistics: `scale = weight / sqrt(running_var + eps)`,
    /// `shift = bias - running_mean * scale`.
    pub fn inference_affine(&self) -> Result<(Tensor, Tensor)> {
        let scale = self
            .weight
            .f_div(&self.running_var.f_add_scalar(self.spec.eps)?.f_sqrt()?)?;
        let shift = self.bias.f_sub(&self.running_mean.f_mul(&scale)?)?;
        Ok((scale, shift))
    }

    /// Its module path in the variable store (`features.0.1`, `specialist.features.0.1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Trainable parameters (weight and bias).
    pub fn params(&self) -> i64 {
        2 * self.weight.size()[0]
    }
}
