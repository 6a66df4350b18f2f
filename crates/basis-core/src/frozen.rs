//! Frozen inference: while a [`Frozen`] guard lives, static layers on `channels_last`
//! inputs keep their weights for the fused convolution ([`crate::fused`]) folded with the batch norm and reordered into
//! oneDNN's blocked layout, once, instead of on every call (what `torch.jit.freeze` and
//! PyTorch's compiler with `freezing` do). Eager libtorch reorders every weight on every
//! call; at batch 1 that is a large share of a MobileNet's time.
//!
//! Freezing is a promise: no weight, bias or batch-norm statistic of any model changes
//! while a guard lives (evaluation, benchmarking, serving). Each [`freeze`] after a time
//! with no guard starts a new generation, and a layer packs again on its first call in it,
//! so weights trained between two frozen passes are always picked up. Within a generation
//! an entry is reused only for the same input shape, the dtype the op runs in,
//! the same weight and bias tensors and an equal folded map (`scale`, `shift`); anything
//! else packs again. Each static layer holds at most one packed copy of its weights.
//!
//! ```
//! use basis_core::{frozen, to_channels_last, Activation, BasisConv2d, Conv2dGeometry};
//! use tch::{nn, Device, Kind, Tensor};
//!
//! let vs = nn::VarStore::new(Device::Cpu);
//! let conv = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(8, 16, 1), 1, true)?;
//! let x = to_channels_last(&Tensor::randn([1, 8, 14, 14], (Kind::Float, Device::Cpu)))?;
//! let plain = tch::no_grad(|| conv.forward_fused(&x, None, None, Activation::Relu))?;
//! let guard = frozen::freeze();
//! assert!(frozen::is_frozen());
//! for _ in 0..3 {
//!     // Packed on the first call, reused after.
//!     let y = tch::no_grad(|| conv.forward_fused(&x, None, None, Activation::Relu))?;
//!     assert!(y.allclose(&plain, 1e-6, 1e-6, false));
//! }
//! drop(guard);
//! assert!(!frozen::is_frozen());
//! # Ok::<(), basis_core::BasisError>(())
//! ```

use crate::activation::Activation;
use crate::error::Result;
use crate::fused;
use crate::geometry::Conv2dGeometry;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use tch::Tensor;

static GUARDS: AtomicUsize = AtomicUsize::new(0);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Keeps inference frozen while it lives (see the module's notes).
#[derive(Debug)]
#[must_use = "inference is frozen only while the guard lives"]
pub struct Frozen {
    _private: (),
}

/// Freeze inference until the returned guard is dropped: a promise that no model's
/// weights change meanwhile. Guards nest and may live on several threads.
pub fn freeze() -> Frozen {
    if GUARDS.fetch_add(1, Ordering::SeqCst) == 0 {
        GENERATION.fetch_add(1, Ordering::SeqCst);
    }
    Frozen { _private: () }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        GUARDS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Whether a [`Frozen`] guard lives.
pub fn is_frozen() -> bool {
    GUARDS.load(Ordering::SeqCst) > 0
}

/// What an entry was packed from.
#[derive(Debug, PartialEq)]
struct Key {
    generation: u64,
    input: Vec<i64>,
    kind: i64,
    tensors: [usize; 2],
}

#[derive(Debug)]
struct Entry {
    key: Key,
    affine: Option<(Tensor, Tensor)>,
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Entry {
    fn same_affine(&self, affine: Option<(&Tensor, &Tensor)>) -> Result<bool> {
        Ok(match (&self.affine, affine) {
            (None, None) => true,
            (Some((s0, h0)), Some((s1, h1))) => s0.f_equal(s1)? && h0.f_equal(h1)?,
            _ => false,
        })
    }
}

/// One static layer's folded, prepacked weights (one entry: the last input shape).
#[derive(Debug, Default)]
pub(crate) struct PackedWeights {
    slot: Mutex<Option<Box<Entry>>>,
}

impl PackedWeights {
    /// `act(conv2d(input, weight * scale, bias * scale + shift))` through the fused op with
    /// the cached packed weight (packing it first when the cache does not hold it); `None`
    /// when inference is not frozen or the fused op does not apply: the caller then runs
    /// the unpacked path. With `residual`, the convolution is added into it in place
    /// (`None` also where the residual does not fit the fused op).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d(
        &self,
        input: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        affine: Option<(&Tensor, &Tensor)>,
        geometry: &Conv2dGeometry,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        // Contiguous inputs stay unpacked: with a packed weight oneDNN would hand back a
        // channels_last output, and the next layer expects the input's layout (one pixel
        // per channel is both layouts).
        let layout_fits = crate::is_channels_last(input) || fused::one_pixel(input);
        if !is_frozen() || !layout_fits {
            return Ok(None);
        }
        let Some(kind) = fused::run_kind(input, weight, bias, geometry.groups)? else {
            return Ok(None);
        };
        let key = Key {
            generation: GENERATION.load(Ordering::SeqCst),
            input: input.size(),
            kind,
            tensors: [
                weight.data_ptr() as usize,
                bias.map_or(0, |b| b.data_ptr() as usize),
            ],
        };
        // A poisoned lock only means another thread panicked mid-update: start over.
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let hit = match slot.as_ref() {
            Some(entry) => entry.key == key && entry.same_affine(affine)?,
            None => false,
        };
        if !hit {
            *slot = None;
            let (folded, bias) = fold(weight, bias, affine)?;
            let packed = fused::pack(&folded, geometry, &key.input, key.kind)?;
            let affine = affine
                .map(|(s, h)| -> Result<_> { Ok((s.f_detach_copy()?, h.f_detach_copy()?)) })
                .transpose()?;
            *slot = Some(Box::new(Entry {
                key,
                affine,
                weight: packed,
                bias,
            }));
        }
        let Some(entry) = slot.as_ref() else {
            return Ok(None);
        };
        fused::run(
            input,
            &entry.weight,
            entry.bias.as_ref(),
            geometry,
            geometry.groups,
            act,
            residual,
        )
    }
}

/// The kernel and bias with `y * scale + shift` folded in, detached.
fn fold(
    weight: &Tensor,
    bias: Option<&Tensor>,
    affine: Option<(&Tensor, &Tensor)>,
) -> Result<(Tensor, Option<Tensor>)> {
    let _guard = tch::no_grad_guard();
    Ok(match affine {
        None => (
            weight.f_detach_copy()?,
            bias.map(Tensor::f_detach_copy).transpose()?,
        ),
        Some((scale, shift)) => (
            weight.f_mul(&scale.f_reshape([-1, 1, 1, 1])?)?,
            Some(match bias {
                Some(b) => b.f_mul(scale)?.f_add(shift)?,
                None => shift.f_detach_copy()?,
            }),
        ),
    })
}

/// What a folded bank was computed from.
#[derive(Debug, PartialEq)]
struct BankKey {
    generation: u64,
    kind: tch::Kind,
    tensors: [usize; 2],
}

#[derive(Debug)]
struct BankEntry {
    key: BankKey,
    affine: (Tensor, Tensor),
    bank: Tensor,
    bias_bank: Option<Tensor>,
}

/// One basis layer's bank and bias bank with a batch norm's scale folded in, kept while
/// frozen: the fold reads and writes all `N` kernels, which at batch 1 costs more than
/// synthesizing the one kernel a sample needs. Reused under the same rules as
/// [`PackedWeights`] (same generation, dtype, tensors and an equal map).
#[derive(Debug, Default)]
pub(crate) struct FoldedBank {
    slot: Mutex<Option<Box<BankEntry>>>,
}

impl FoldedBank {
    /// `(bank * scale, bias_bank * scale)` (`scale` per output channel, the bank
    /// `[N, Cout, ...]`, the bias bank `[N, Cout]`) from the cache, computing it on a miss;
    /// `None` when inference is not frozen or a gradient is needed (the caller folds as
    /// usual, with autograd).
    pub(crate) fn get(
        &self,
        bank: &Tensor,
        bias_bank: Option<&Tensor>,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Option<(Tensor, Option<Tensor>)>> {
        let tracked = [Some(bank), bias_bank, Some(scale), Some(shift)]
            .into_iter()
            .flatten()
            .any(Tensor::requires_grad);
        if !is_frozen() || (tracked && fused::grad_enabled()) {
            return Ok(None);
        }
        let key = BankKey {
            generation: GENERATION.load(Ordering::SeqCst),
            kind: bank.f_kind()?,
            tensors: [
                bank.data_ptr() as usize,
                bias_bank.map_or(0, |b| b.data_ptr() as usize),
            ],
        };
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let hit = match slot.as_ref() {
            Some(e) => e.key == key && e.affine.0.f_equal(scale)? && e.affine.1.f_equal(shift)?,
            None => false,
        };
        if !hit {
            *slot = None;
            let _guard = tch::no_grad_guard();
            let (folded, bias) = fold_bank(bank, bias_bank, scale)?;
            *slot = Some(Box::new(BankEntry {
                key,
                affine: (scale.f_detach_copy()?, shift.f_detach_copy()?),
                bank: folded,
                bias_bank: bias,
            }));
        }
        Ok(slot.as_ref().map(|e| {
            (
                e.bank.shallow_clone(),
                e.bias_bank.as_ref().map(Tensor::shallow_clone),
            )
        }))
    }
}

/// The bank `[N, Cout, ...]` and bias bank `[N, Cout]` scaled per output channel.
pub(crate) fn fold_bank(
    bank: &Tensor,
    bias_bank: Option<&Tensor>,
    scale: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let size = bank.size();
    let out = size[1];
    let mut per_channel = vec![1i64; size.len()];
    per_channel[1] = out;
    let folded = bank.f_mul(&scale.f_reshape(per_channel)?)?;
    let bias = bias_bank
        .map(|bb| bb.f_mul(&scale.f_reshape([1, out])?))
        .transpose()?;
    Ok((folded, bias))
}
