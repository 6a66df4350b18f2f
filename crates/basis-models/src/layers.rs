//! The pieces of a MobileNet: batch norm, conv + BN + activation, squeeze-excite. Every
//! convolution is a [`BasisConv2d`]: one basis for a static layer, `N` for a basis layer.

use crate::arch::Act;
use crate::error::Result;
use basis_core::{BasisConv2d, BasisLinear, Conv2dGeometry, LayerCost};
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

    /// Trainable parameters (weight and bias).
    pub fn params(&self) -> i64 {
        2 * self.weight.size()[0]
    }
}

/// Apply a nonlinearity; in place when `x` needs no gradient (inference), as
/// torchvision's `inplace=True` activations do, which saves one activation-sized
/// allocation (and its page faults) per layer.
pub fn activate(mut x: Tensor, act: Option<Act>) -> Result<Tensor> {
    let in_place = !x.requires_grad();
    Ok(match (act, in_place) {
        (None, _) => x,
        (Some(Act::Relu), true) => x.f_relu_()?,
        (Some(Act::Relu), false) => x.f_relu()?,
        (Some(Act::Relu6), true) => x.f_clamp_(0.0, 6.0)?,
        (Some(Act::Relu6), false) => x.f_relu6()?,
        (Some(Act::Hardswish), true) => x.f_hardswish_()?,
        (Some(Act::Hardswish), false) => x.f_hardswish()?,
    })
}

/// The coefficient vectors of one forward pass, `[B, N]` each (or `[1, N]` for one
/// vector shared by the batch), indexed by the layers' `vector`.
pub type CoefficientVectors<'a> = &'a [Tensor];

/// `(N, vector)` of a basis layer, or `(1, None)` for a static one.
fn split_basis(basis: Option<(i64, usize)>) -> (i64, Option<usize>) {
    match basis {
        Some((n, v)) if n > 1 => (n, Some(v)),
        _ => (1, None),
    }
}

/// What a static or basis layer holds, whatever its kind: what baking and seeding use.
pub(crate) trait Weighted {
    /// The stored weight (the bank when `N > 1`).
    fn weight(&self) -> &Tensor;
    /// The stored bias, if any.
    fn bias(&self) -> Option<&Tensor>;
    /// Bases of the layer.
    fn num_bases(&self) -> i64;
    /// Plain-shaped weight and bias for `coefficients` (the stored ones when static).
    fn weights_for(&self, coefficients: &[Tensor]) -> Result<(Tensor, Option<Tensor>)>;
}

/// A convolution that is either static (one basis) or a basis layer reading one of the
/// coefficient vectors.
#[derive(Debug)]
pub struct Conv {
    pub(crate) conv: BasisConv2d,
    pub(crate) vector: Option<usize>,
}

impl Conv {
    /// A convolution under `path`; a basis layer when `basis` gives `(N, vector)`.
    pub fn new(
        path: &nn::Path,
        geometry: Conv2dGeometry,
        bias: bool,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let (n, vector) = split_basis(basis);
        Ok(Self {
            conv: BasisConv2d::new(path, geometry, n, bias)?,
            vector,
        })
    }

    /// Apply, with this layer's coefficient vector when it is a basis layer.
    pub fn forward(&self, x: &Tensor, coefficients: CoefficientVectors) -> Result<Tensor> {
        match self.vector {
            None => Ok(self.conv.forward_static(x)?),
            Some(v) => Ok(self
                .conv
                .forward(x, crate::error::vector(coefficients, v)?)?),
        }
    }

    /// The layer's cost on an `h x w` input.
    pub fn cost(&self, input_hw: (i64, i64)) -> Result<LayerCost> {
        Ok(self.conv.cost(input_hw)?)
    }

    /// The underlying basis layer.
    pub fn layer(&self) -> &BasisConv2d {
        &self.conv
    }
}

/// A linear layer that is static or a basis layer.
#[derive(Debug)]
pub struct Linear {
    pub(crate) linear: BasisLinear,
    pub(crate) vector: Option<usize>,
}

impl Linear {
    /// A linear layer under `path`, initialized as torchvision's MobileNets do
    /// (weights `N(0, 0.01)`, bias zero).
    pub fn new(
        path: &nn::Path,
        in_features: i64,
        out_features: i64,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let (n, vector) = split_basis(basis);
        let linear = BasisLinear::new(path, in_features, out_features, n, true)?;
        tch::no_grad(|| -> Result<()> {
            let _ = linear.weight().shallow_clone().f_normal_(0.0, 0.01)?;
            linear
                .bias()
                .map(|b| b.shallow_clone().f_zero_())
                .transpose()?;
            Ok(())
        })?;
        Ok(Self { linear, vector })
    }

    /// Apply, with this layer's coefficient vector when it is a basis layer.
    pub fn forward(&self, x: &Tensor, coefficients: CoefficientVectors) -> Result<Tensor> {
        match self.vector {
            None => Ok(self.linear.forward_static(x)?),
            Some(v) => Ok(self
                .linear
                .forward(x, crate::error::vector(coefficients, v)?)?),
        }
    }

    /// The layer's cost for one sample.
    pub fn cost(&self) -> LayerCost {
        self.linear.cost()
    }

    /// The underlying basis layer.
    pub fn layer(&self) -> &BasisLinear {
        &self.linear
    }
}

macro_rules! weighted {
    ($ty:ty, $field:ident) => {
        impl Weighted for $ty {
            fn weight(&self) -> &Tensor {
                self.$field.weight()
            }
            fn bias(&self) -> Option<&Tensor> {
                self.$field.bias()
            }
            fn num_bases(&self) -> i64 {
                self.$field.num_bases()
            }
            fn weights_for(&self, coefficients: &[Tensor]) -> Result<(Tensor, Option<Tensor>)> {
                match self.vector {
                    Some(v) => Ok(self
                        .$field
                        .synthesize(crate::error::vector(coefficients, v)?)?),
                    None => Ok((
                        self.$field.weight().shallow_clone(),
                        self.$field.bias().map(Tensor::shallow_clone),
                    )),
                }
            }
        }
    };
}

weighted!(Conv, conv);
weighted!(Linear, linear);

/// torchvision's `Conv2dNormActivation`: convolution (no bias), batch norm, activation.
#[derive(Debug)]
pub struct ConvBnAct {
    pub(crate) conv: Conv,
    pub(crate) bn: BatchNorm2d,
    pub(crate) act: Option<Act>,
}

impl ConvBnAct {
    /// Convolution at `conv_path`, batch norm at `bn_path` (torchvision nests them as
    /// `.0` and `.1`, except MobileNetV2's projection, which sits beside its norm).
    pub fn new(
        conv_path: &nn::Path,
        bn_path: &nn::Path,
        geometry: Conv2dGeometry,
        bn: BatchNormSpec,
        act: Option<Act>,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let conv = Conv::new(conv_path, geometry, false, basis)?;
        kaiming_normal_fan_out(&conv.conv)?;
        Ok(Self {
            conv,
            bn: BatchNorm2d::new(bn_path, geometry.out_channels, bn)?,
            act,
        })
    }

    /// Convolution, normalization, activation. In evaluation a static layer folds the
    /// normalization into its kernel and bias when the output is larger than the kernel
    /// (the fold rewrites the kernel, and saves a pass over the output).
    pub fn forward_t(
        &self,
        x: &Tensor,
        coefficients: CoefficientVectors,
        train: bool,
    ) -> Result<Tensor> {
        if !train && self.conv.vector.is_none() && self.folding_pays(x) {
            let (scale, shift) = self.bn.inference_affine()?;
            let y = self.conv.conv.forward_static_affine(x, &scale, &shift)?;
            return activate(y, self.act);
        }
        let y = self.conv.forward(x, coefficients)?;
        activate(self.bn.forward_t(&y, train)?, self.act)
    }

    /// Whether an output of `x`'s batch and size holds more values per channel than one
    /// output channel of the kernel (`B * H_out * W_out >= Cin/g * kh * kw`).
    fn folding_pays(&self, x: &Tensor) -> bool {
        let g = self.conv.conv.geometry();
        let &[b, _, h, w] = x.size().as_slice() else {
            return false;
        };
        let per_channel = g.weight_numel() / g.out_channels;
        match g.output_hw(h, w) {
            Ok((oh, ow)) => b * oh * ow >= per_channel,
            Err(_) => false,
        }
    }

    /// Cost on an `h x w` input, batch norm parameters included.
    pub fn cost(&self, input_hw: (i64, i64)) -> Result<LayerCost> {
        let mut cost = self.conv.cost(input_hw)?;
        cost.params += self.bn.params();
        Ok(cost)
    }
}

/// torchvision's `SqueezeExcitation` with MobileNetV3's hard-sigmoid gate.
#[derive(Debug)]
pub struct SqueezeExcite {
    pub(crate) fc1: Conv,
    pub(crate) fc2: Conv,
}

impl SqueezeExcite {
    /// `fc1` (`channels -> squeeze`) and `fc2` (`squeeze -> channels`), 1x1 with bias.
    pub fn new(
        path: &nn::Path,
        channels: i64,
        squeeze: i64,
        basis: Option<(i64, usize)>,
    ) -> Result<Self> {
        let fc1 = Conv::new(
            &(path / "fc1"),
            Conv2dGeometry::new(channels, squeeze, 1),
            true,
            basis,
        )?;
        let fc2 = Conv::new(
            &(path / "fc2"),
            Conv2dGeometry::new(squeeze, channels, 1),
            true,
            basis,
        )?;
        for fc in [&fc1, &fc2] {
            kaiming_normal_fan_out(&fc.conv)?;
        }
        Ok(Self { fc1, fc2 })
    }

    /// `x * hardsigmoid(fc2(relu(fc1(avgpool(x)))))`.
    pub fn forward(&self, x: &Tensor, coefficients: CoefficientVectors) -> Result<Tensor> {
        let s = x.f_adaptive_avg_pool2d([1, 1])?;
        let s = self.fc1.forward(&s, coefficients)?.f_relu()?;
        let s = self.fc2.forward(&s, coefficients)?.f_hardsigmoid()?;
        if x.requires_grad() || s.requires_grad() {
            Ok(x.f_mul(&s)?)
        } else {
            // Inference: scale the block's own intermediate in place.
            Ok(x.shallow_clone().f_mul_(&s)?)
        }
    }
}

/// torchvision's init for convolutions: `kaiming_normal_(mode="fan_out")` (gain sqrt(2)),
/// bias zero; every basis drawn independently.
fn kaiming_normal_fan_out(conv: &BasisConv2d) -> Result<()> {
    let [out, _, kh, kw] = conv.geometry().weight_shape();
    let std = (2.0 / (out * kh * kw) as f64).sqrt();
    tch::no_grad(|| -> Result<()> {
        let _ = conv.weight().shallow_clone().f_normal_(0.0, std)?;
        if let Some(b) = conv.bias() {
            let _ = b.shallow_clone().f_zero_()?;
        }
        Ok(())
    })
}
