//! What [`crate::BasisConv2d`] and [`crate::BasisLinear`] share: argument checks and the
//! dispatch to a strategy's kernel.

use crate::activation::Activation;
use crate::error::{BasisError, Result};
use crate::geometry::Conv2dGeometry;
use crate::pointwise;
use crate::strategy::Strategy;
use crate::synthesis;
use crate::timing;
use tch::Tensor;

/// Coefficients checked against the batch and the bank, in the bank's dtype.
pub(crate) struct Coefficients {
    pub(crate) tensor: Tensor,
    /// One row for the whole batch (or a batch of one).
    pub(crate) shared: bool,
}

pub(crate) fn check_coefficients(
    coefficients: &Tensor,
    batch: i64,
    num_bases: i64,
    kind: tch::Kind,
) -> Result<Coefficients> {
    let size = coefficients.size();
    let &[rows, width] = size.as_slice() else {
        return Err(BasisError::Shape {
            what: "coefficients",
            expected: format!("[batch, {num_bases}]"),
            found: format!("{size:?}"),
        });
    };
    if width != num_bases {
        return Err(BasisError::CoefficientWidth {
            expected: num_bases,
            found: width,
        });
    }
    if rows != batch && rows != 1 {
        return Err(BasisError::BatchMismatch {
            batch,
            coefficients: rows,
        });
    }
    let tensor = if coefficients.f_kind()? == kind {
        coefficients.shallow_clone()
    } else {
        coefficients.f_to_kind(kind)?
    };
    Ok(Coefficients {
        tensor,
        shared: rows == 1 || batch == 1,
    })
}

/// A per-output-channel map `y * scale + shift` applied after a layer, folded into it: an
/// inference batch norm.
#[derive(Clone, Copy)]
pub(crate) struct Affine<'a> {
    pub(crate) scale: &'a Tensor,
    pub(crate) shift: &'a Tensor,
    /// The bank and bias bank already scaled (kept while frozen), if at hand.
    pub(crate) folded: Option<(&'a Tensor, Option<&'a Tensor>)>,
}

/// What follows a layer's convolution, folded or fused into it where it can be.
#[derive(Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// An inference batch norm.
    pub(crate) affine: Option<Affine<'a>>,
    /// The activation.
    pub(crate) act: Activation,
}

impl Epilogue<'_> {
    /// Nothing after the layer.
    pub(crate) const NONE: Self = Self {
        affine: None,
        act: Activation::Identity,
    };
}

/// Run `strategy` (resolving `Auto`) on checked arguments, then the epilogue's `act`.
/// `input` is `[B, C, H, W]`. With an `affine` map, the bank and its biases are scaled first and the shift
/// joins every sample's bias, so the layer's output is already `y * scale + shift` for any
/// coefficients.
pub(crate) fn apply(
    input: &Tensor,
    coefficients: &Coefficients,
    bank: &Tensor,
    bias_bank: Option<&Tensor>,
    geometry: &Conv2dGeometry,
    strategy: Strategy,
    epilogue: Epilogue,
) -> Result<Tensor> {
    let Epilogue { affine, act } = epilogue;
    let (batch, _, h, w) = input.size4()?;
    geometry.output_hw(h, w)?;
    let num_bases = bank.size()[0];
    let strategy = match strategy {
        Strategy::Auto => {
            let resolved = Strategy::resolve(geometry, batch, (h, w), coefficients.shared);
            let records = crate::fused::grad_enabled()
                && [input, &coefficients.tensor, bank]
                    .into_iter()
                    .any(Tensor::requires_grad);
            if records {
                resolved.in_training(geometry, (h, w), num_bases)
            } else {
                resolved
            }
        }
        concrete => concrete,
    };
    if !strategy.supports(geometry) {
        return Err(BasisError::Unsupported {
            strategy: strategy.name(),
            reason: format!(
                "it needs a 1x1 kernel, the layer has {}x{}",
                geometry.kernel_size[0], geometry.kernel_size[1]
            ),
        });
    }
    let (bank, bias_bank) = match affine {
        None => (bank.shallow_clone(), bias_bank.map(Tensor::shallow_clone)),
        Some(Affine {
            folded: Some((bank, bias_bank)),
            ..
        }) => (bank.shallow_clone(), bias_bank.map(Tensor::shallow_clone)),
        Some(a) => crate::frozen::fold_bank(bank, bias_bank, a.scale)?,
    };
    // On a plane smaller than the kernel's reach, the convolutions run the taps that read
    // it (profiles keep the layer's own name).
    let named = geometry;
    let cropped = match strategy {
        Strategy::GroupedConv | Strategy::Shared | Strategy::PerSample => {
            crop_kernel(&bank, geometry, h, w)?
        }
        _ => None,
    };
    let (bank, geometry) = match &cropped {
        Some((bank, g)) => (bank.shallow_clone(), g),
        None => (bank, geometry),
    };
    // Each coefficient row's bias `[rows, Cout]`: its share of the bias bank, plus the shift.
    let biases = |rows: &Tensor| -> Result<Option<Tensor>> {
        let from_bank = bias_bank.as_ref().map(|bb| rows.f_matmul(bb)).transpose()?;
        Ok(match (from_bank, affine) {
            (Some(b), Some(a)) => Some(b.f_add(a.shift)?),
            (None, Some(a)) => Some(
                a.shift
                    .f_unsqueeze(0)?
                    .f_expand([rows.size()[0], geometry.out_channels], false)?,
            ),
            (b, None) => b,
        })
    };
    let alpha = || -> Result<Tensor> {
        Ok(if coefficients.tensor.size()[0] == batch {
            coefficients.tensor.shallow_clone()
        } else {
            coefficients.tensor.f_expand([batch, num_bases], false)?
        })
    };
    // The kernels that run one convolution take the activation (fused into it where
    // oneDNN can); after the others it is a pass of its own.
    if strategy == Strategy::BatchedMatmul && pointwise::applies(input, &bank, geometry) {
        let y = timing::span(
            || work(named, (h, w), strategy, affine.is_some()),
            || {
                let alpha = alpha()?;
                pointwise::forward(input, &alpha, &bank, biases(&alpha)?.as_ref(), act)
            },
        )?;
        if let Some(y) = y {
            return Ok(y);
        }
    }
    let kernel = match strategy {
        Strategy::PerSample => synthesis::per_sample,
        Strategy::BatchedMatmul => synthesis::batched_matmul,
        Strategy::MixOutputs => synthesis::mix_outputs,
        Strategy::GroupedConv => {
            return timing::span(
                || work(named, (h, w), strategy, affine.is_some()),
                || {
                    let alpha = alpha()?;
                    let bias = biases(&alpha)?;
                    synthesis::grouped_conv(input, &alpha, &bank, bias.as_ref(), geometry, act)
                },
            );
        }
        // `Auto` resolves to a concrete strategy above; one row for the whole batch.
        Strategy::Shared | Strategy::Auto => {
            let row = shared_row(coefficients)?;
            return timing::span(
                || work(named, (h, w), strategy, affine.is_some()),
                || {
                    let bias = biases(&row)?;
                    synthesis::shared(input, &row, &bank, bias.as_ref(), geometry, act)
                },
            );
        }
    };
    let y = timing::span(
        || work(named, (h, w), strategy, affine.is_some()),
        || {
            let alpha = alpha()?;
            kernel(input, &alpha, &bank, biases(&alpha)?.as_ref(), geometry)
        },
    )?;
    act.apply_timed(y)
}

/// `weight` (a bank `[N, out, in / groups, kh, kw]` or one kernel `[out, in / groups, kh,
/// kw]`) cropped to the taps that read an `h x w` input, with the geometry that runs it
/// ([`Conv2dGeometry::cropped`]); `None` when every tap reads the input. libtorch's
/// (oneDNN's) depthwise convolution of a 5x5 kernel on a 1x1 plane took 9 ms for 128
/// images of 288 channels, and its weight gradient 12 ms; the 1x1 centre is a multiply.
pub(crate) fn crop_kernel(
    weight: &Tensor,
    geometry: &Conv2dGeometry,
    h: i64,
    w: i64,
) -> Result<Option<(Tensor, Conv2dGeometry)>> {
    let Some(([fy, fx], g)) = geometry.cropped(h, w) else {
        return Ok(None);
    };
    let [ky, kx] = g.kernel_size;
    let weight = weight.f_narrow(-2, fy, ky)?.f_narrow(-1, fx, kx)?;
    Ok(Some((weight, g)))
}

/// A basis layer's entry in the timing profile: its kind and strategy.
fn work(
    geometry: &Conv2dGeometry,
    input_hw: (i64, i64),
    strategy: Strategy,
    folded: bool,
) -> String {
    let bn = if folded { " + folded batch norm" } else { "" };
    format!("{} ({}){bn}", geometry.kind_name(input_hw), strategy.name())
}

/// The one coefficient row `Shared` runs with: a single row, or rows that are all equal
/// and need no gradient (one row could not carry each sample's gradient).
pub(crate) fn shared_row(coefficients: &Coefficients) -> Result<Tensor> {
    let alpha = &coefficients.tensor;
    let first = alpha.f_narrow(0, 0, 1)?;
    if coefficients.shared {
        return Ok(first);
    }
    if alpha.requires_grad() {
        return Err(BasisError::Unsupported {
            strategy: Strategy::Shared.name(),
            reason: "the coefficients have one row per sample and require gradients; pass a single [1, N] row".into(),
        });
    }
    let equal = alpha.f_eq_tensor(&first)?.f_all()?.f_int64_value(&[])? != 0;
    if !equal {
        return Err(BasisError::Unsupported {
            strategy: Strategy::Shared.name(),
            reason: "the coefficient rows differ between samples".into(),
        });
    }
    Ok(first)
}

/// The bank view `[N, ...]` of a stored weight: a static layer (one basis) stores the
/// plain kernel, so its checkpoints are those of the ordinary layer.
pub(crate) fn bank_view(weight: &Tensor, num_bases: i64) -> Tensor {
    if num_bases == 1 {
        weight.unsqueeze(0)
    } else {
        weight.shallow_clone()
    }
}

/// The shape a bank of `num_bases` kernels of `shape` is stored with.
pub(crate) fn stored_shape(num_bases: i64, shape: &[i64]) -> Vec<i64> {
    if num_bases == 1 {
        shape.to_vec()
    } else {
        std::iter::once(num_bases)
            .chain(shape.iter().copied())
            .collect()
    }
}

pub(crate) fn check_num_bases(num_bases: i64) -> Result<()> {
    if num_bases < 1 {
        return Err(BasisError::Config(format!(
            "the number of bases must be >= 1, found {num_bases}"
        )));
    }
    Ok(())
}

/// A static call (no coefficients) needs a layer with one basis.
pub(crate) fn require_static(num_bases: i64) -> Result<()> {
    if num_bases != 1 {
        return Err(BasisError::Unsupported {
            strategy: "static",
            reason: format!("the layer has {num_bases} bases and needs coefficients"),
        });
    }
    Ok(())
}

/// Check a stored weight (or bias) against the shape the layer needs.
pub(crate) fn check_stored(what: &'static str, tensor: &Tensor, expected: &[i64]) -> Result<()> {
    let found = tensor.size();
    if found != expected {
        return Err(BasisError::Shape {
            what,
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        });
    }
    Ok(())
}

/// The stored form of a bank `[N, ...]`: without the leading axis when `N = 1`.
pub(crate) fn stored(bank: &Tensor) -> Tensor {
    if bank.size()[0] == 1 {
        bank.squeeze_dim(0)
    } else {
        bank.shallow_clone()
    }
}

/// Kernel and bias (plain shapes) of one coefficient vector `[N]` or `[1, N]`.
pub(crate) fn synthesize_one(
    coefficients: &Tensor,
    bank: &Tensor,
    bias_bank: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let num_bases = bank.size()[0];
    let row = coefficients.f_reshape([1, -1])?;
    let alpha = check_coefficients(&row, 1, num_bases, bank.f_kind()?)?;
    let weight = synthesis::synthesize(&alpha.tensor, bank)?.f_squeeze_dim(0)?;
    let bias = bias_bank
        .map(|bb| alpha.tensor.f_matmul(bb)?.f_squeeze_dim(0))
        .transpose()?;
    Ok((weight, bias))
}
