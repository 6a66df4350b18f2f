//! Fused inference convolutions: a convolution, its bias (a folded batch norm) and its
//! activation in one pass over the output, through oneDNN's fused primitive as libtorch
//! registers it (`mkldnn::_convolution_pointwise`, the op PyTorch's compiler emits for a
//! convolution followed by an activation on the CPU). Eager libtorch runs the activation
//! as a second pass that reads and writes the whole output again.
//!
//! The fused kernel runs where it gives the same result as the unfused layers (on the
//! CPU, in fp32 or bf16, CPU autocast included, when no gradient is needed) and where it
//! is faster (`channels_last` inputs, depthwise kernels in either layout). Elsewhere
//! [`BasisConv2d::forward_fused`](crate::BasisConv2d::forward_fused) runs the convolution
//! and [`Activation::apply`] apart, with autograd as usual. [`set_enabled`] turns the fused
//! path off process-wide, for A/B measurements.

use crate::activation::Activation;
use crate::error::{BasisError, Result};
use crate::geometry::Conv2dGeometry;
use crate::layout::is_channels_last;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn bc_fused_available() -> c_int;
    fn bc_grad_enabled() -> c_int;
    #[allow(clippy::too_many_arguments)]
    fn bc_fused_conv2d(
        input: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        attr: *const c_char,
        lower: f64,
        upper: f64,
        accumulate: *mut C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn bc_fused_kind(
        input: *mut C_tensor,
        weight: *mut C_tensor,
        bias: *mut C_tensor,
        out: *mut i64,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn bc_fused_pack(
        weight: *mut C_tensor,
        stride: *const i64,
        padding: *const i64,
        dilation: *const i64,
        groups: i64,
        input_size: *const i64,
        kind: i64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn bc_free_message(message: *mut c_char);
}

/// A message from the shim (null: success) as a `Result`, freed.
pub(crate) fn check(message: *mut c_char) -> Result<()> {
    if message.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null message is a NUL-terminated string the shim malloc'ed.
    let text = unsafe { std::ffi::CStr::from_ptr(message) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: freed once, with the shim's allocator.
    unsafe { bc_free_message(message) };
    Err(BasisError::Torch(tch::TchError::Torch(text)))
}

pub(crate) fn ptr(t: &Tensor) -> *mut C_tensor {
    t.as_ptr() as *mut C_tensor
}

/// Whether autograd records operations on this thread (false inside `tch::no_grad`).
pub(crate) fn grad_enabled() -> bool {
    // SAFETY: no arguments; reads a thread-local flag.
    unsafe { bc_grad_enabled() == 1 }
}

/// A tensor the shim allocated and hands over (or null).
pub(crate) fn owned(out: *mut C_tensor) -> Option<Tensor> {
    // SAFETY: a non-null `out` is a tensor the shim allocated for us to own.
    (!out.is_null()).then(|| unsafe { Tensor::from_ptr(out) })
}

/// Where the fused primitive is at least as fast as libtorch's own convolution (measured
/// on a 2-core AVX-512 machine, PyTorch 2.13): `channels_last` inputs, which oneDNN reads
/// as they are, and depthwise kernels (one input and one output channel per group) in
/// either layout (0.96-1.23x the time of convolution + activation). A contiguous input to
/// any other kernel is reordered to oneDNN's blocked layout and back: the stem of a batch
/// of 32 per-sample kernels (3 input channels per group) took 112 ms fused against 19 ms.
/// An input of one pixel per channel (a squeeze-excite gate) is both layouts at once; the
/// shim hands it to oneDNN as `channels_last`.
fn pays(input: &Tensor, weight: &Tensor, groups: i64) -> bool {
    let size = weight.size();
    let depthwise = size.len() == 4 && size[1] == 1 && size[0] == groups;
    depthwise || is_channels_last(input) || one_pixel(input)
}

/// A 4-D input of one pixel per channel (`H = W = 1`).
pub(crate) fn one_pixel(input: &Tensor) -> bool {
    matches!(input.size().as_slice(), &[_, _, 1, 1])
}

/// The fused path is on ([`set_enabled`]) and pays for this input and kernel ([`pays`]).
fn applies(input: &Tensor, weight: &Tensor, groups: i64) -> bool {
    ENABLED.load(Ordering::Relaxed) && pays(input, weight, groups)
}

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether fused kernels are on ([`set_enabled`]): this module's and the per-sample 1x1 and
/// dense kernels' (`crate::pointwise`).
pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Turn the fused path on or off for the whole process (on by default); off, every layer
/// runs its convolution and activation apart, as eager libtorch does, and a basis layer's
/// per-sample 1x1 convolution runs as synthesis, `baddbmm` and activation (its linear
/// layers as `linear` and a mix). For A/B measurements (`basisnet benchmark --fusion off`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the fused path is on ([`set_enabled`]) and this libtorch has it (built with
/// oneDNN, which PyTorch's x86 and Arm builds are).
///
/// ```
/// // PyTorch's wheels ship oneDNN; the fused convolution is there.
/// assert!(basis_core::fused::available());
/// basis_core::fused::set_enabled(false);
/// assert!(!basis_core::fused::available());
/// basis_core::fused::set_enabled(true);
/// ```
pub fn available() -> bool {
    // SAFETY: no arguments; the shim catches every C++ exception.
    ENABLED.load(Ordering::Relaxed) && unsafe { bc_fused_available() } == 1
}

/// Whether a basis layer's inference kernels (the per-sample 1x1, dense and depthwise
/// kernels of [`crate::Strategy`], which read contiguous NCHW activations) run for
/// coefficients or activations like `t` on this thread: the fused path on
/// ([`set_enabled`]), fp32 on the CPU (or bf16 where libtorch's bf16 batch-reduce GEMM
/// runs oneDNN's micro-kernel, AVX-512; the bf16 1x1 kernel then takes batches of up to
/// 8), no CPU autocast, no gradient needed. A model's `Layout::Auto` keeps a batch of one
/// contiguous where they do.
///
/// ```
/// use tch::{Device, Kind, Tensor};
/// let alpha = Tensor::ones([1, 8], (Kind::Float, Device::Cpu));
/// assert!(tch::no_grad(|| basis_core::fused::per_sample_kernels_run(&alpha)));
/// assert!(!basis_core::fused::per_sample_kernels_run(&alpha.to_kind(Kind::Half)));
/// ```
pub fn per_sample_kernels_run(t: &Tensor) -> bool {
    let gradient = grad_enabled() && t.requires_grad();
    ENABLED.load(Ordering::Relaxed)
        && !crate::pointwise::cpu_autocast()
        && t.device() == tch::Device::Cpu
        && (t.kind() == tch::Kind::Float
            || (t.kind() == tch::Kind::BFloat16 && crate::pointwise::bf16_gemm()))
        && !gradient
}

/// `act(conv2d(input, weight, bias))` with `groups` (the geometry's, or more for a batch
/// of per-sample kernels): one oneDNN primitive where it applies (see the module's notes),
/// the convolution and then the activation otherwise.
pub(crate) fn conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: &Conv2dGeometry,
    groups: i64,
    act: Activation,
) -> Result<Tensor> {
    if let Some(y) = try_conv2d(input, weight, bias, geometry, groups, act)? {
        return Ok(y);
    }
    conv2d_apart(input, weight, bias, geometry, groups, act)
}

/// The convolution, then the activation, as eager libtorch runs them.
fn conv2d_apart(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: &Conv2dGeometry,
    groups: i64,
    act: Activation,
) -> Result<Tensor> {
    let y = input.f_conv2d(
        weight,
        bias,
        geometry.stride,
        geometry.padding,
        geometry.dilation,
        groups,
    )?;
    act.apply_timed(y)
}

/// `conv2d(input, weight, bias) + residual`: where the fused path applies, one oneDNN
/// primitive that adds the convolution into `residual`'s memory (the sum post-op, as
/// PyTorch's compiled graphs do for a residual block) and returns it; otherwise the
/// convolution and then [`add_residual`].
pub(crate) fn conv2d_add(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: &Conv2dGeometry,
    groups: i64,
    residual: &Tensor,
) -> Result<Tensor> {
    if applies(input, weight, groups) {
        let act = Activation::Identity;
        if let Some(y) = run(input, weight, bias, geometry, groups, act, Some(residual))? {
            return Ok(y);
        }
    }
    let y = conv2d_apart(input, weight, bias, geometry, groups, Activation::Identity)?;
    add_residual(y, residual)
}

/// `y + residual` (a residual block's add, timed as "residual add"), in place into `y`
/// when neither needs a gradient, as torchvision's blocks do in inference.
///
/// ```
/// use tch::{Device, Kind, Tensor};
///
/// let y = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
/// let residual = Tensor::full([2, 3], 2.0, (Kind::Float, Device::Cpu));
/// let sum = basis_core::fused::add_residual(y.shallow_clone(), &residual)?;
/// assert_eq!(sum.double_value(&[0, 0]), 3.0);
/// assert_eq!(sum.data_ptr(), y.data_ptr(), "in place: no gradient needed");
/// # Ok::<(), basis_core::BasisError>(())
/// ```
pub fn add_residual(y: Tensor, residual: &Tensor) -> Result<Tensor> {
    crate::timing::span(
        || "residual add".into(),
        || {
            if y.requires_grad() || residual.requires_grad() {
                Ok(y.f_add(residual)?)
            } else {
                Ok(y.shallow_clone().f_add_(residual)?)
            }
        },
    )
}

/// `act(conv2d(input, weight, bias))` with `geometry`'s stride, padding and dilation and
/// `groups` groups, as one oneDNN primitive; `None` where that does not apply (see the
/// module's notes) or [`set_enabled`] turned it off. Layers call it through
/// [`BasisConv2d::forward_fused`](crate::BasisConv2d::forward_fused), which falls back to
/// the unfused layers.
///
/// ```
/// use basis_core::{fused, Activation, Conv2dGeometry};
/// use tch::{Device, Kind, Tensor};
///
/// let g = Conv2dGeometry::new(8, 8, 3).padding(1).groups(8);
/// let x = Tensor::randn([2, 8, 6, 6], (Kind::Float, Device::Cpu));
/// let w = Tensor::randn([8, 1, 3, 3], (Kind::Float, Device::Cpu));
/// let y = fused::try_conv2d(&x, &w, None, &g, 8, Activation::Relu)?.expect("fp32, CPU, no grad");
/// let apart = x.conv2d(&w, None::<Tensor>, [1, 1], [1, 1], [1, 1], 8).relu();
/// assert!(y.allclose(&apart, 1e-5, 1e-5, false));
/// // A weight that needs its gradient: the fused op has no backward.
/// let w = w.set_requires_grad(true);
/// assert!(fused::try_conv2d(&x, &w, None, &g, 8, Activation::Relu)?.is_none());
/// # Ok::<(), basis_core::BasisError>(())
/// ```
pub fn try_conv2d(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: &Conv2dGeometry,
    groups: i64,
    act: Activation,
) -> Result<Option<Tensor>> {
    if !applies(input, weight, groups) {
        return Ok(None);
    }
    run(input, weight, bias, geometry, groups, act, None)
}

/// The shim's fused call (`weight` plain or prepacked by [`pack`]), without the
/// layout rule of [`pays`]; with `accumulate`, the convolution is added into that tensor
/// in place before the activation (`None` where `accumulate` does not fit: not dense in
/// the input's layout, another dtype, a gradient needed).
pub(crate) fn run(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: &Conv2dGeometry,
    groups: i64,
    act: Activation,
    accumulate: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let (attr, lower, upper) = act.onednn();
    let (stride, padding, dilation) = (geometry.stride, geometry.padding, geometry.dilation);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: the tensors outlive the call and the shim only reads them; the arrays hold
    // two values each as the shim expects; the shim writes `out` (a new tensor it hands
    // over, or null) and returns null or a message it malloc'ed.
    check(unsafe {
        bc_fused_conv2d(
            ptr(input),
            ptr(weight),
            bias.map_or(std::ptr::null_mut(), ptr),
            stride.as_ptr(),
            padding.as_ptr(),
            dilation.as_ptr(),
            groups,
            attr.as_ptr(),
            lower,
            upper,
            accumulate.map_or(std::ptr::null_mut(), ptr),
            &mut out,
        )
    })?;
    Ok(owned(out))
}

/// The dtype (`c10::ScalarType`) the fused op would run a static layer's call in, or
/// `None` where it would not run (turned off, a layout where it does not pay, a gradient
/// needed, not the CPU, another dtype): what prepacked weights are packed for.
pub(crate) fn run_kind(
    input: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    groups: i64,
) -> Result<Option<i64>> {
    if !applies(input, weight, groups) {
        return Ok(None);
    }
    let mut kind = -1i64;
    // SAFETY: the tensors outlive the call; the shim writes one value into `kind`.
    check(unsafe {
        bc_fused_kind(
            ptr(input),
            ptr(weight),
            bias.map_or(std::ptr::null_mut(), ptr),
            &mut kind,
        )
    })?;
    Ok((kind >= 0).then_some(kind))
}

/// `weight` reordered for an input of `input_size` in dtype `kind` ([`run_kind`]'s).
pub(crate) fn pack(
    weight: &Tensor,
    geometry: &Conv2dGeometry,
    input_size: &[i64],
    kind: i64,
) -> Result<Tensor> {
    let (stride, padding, dilation) = (geometry.stride, geometry.padding, geometry.dilation);
    let mut out: *mut C_tensor = std::ptr::null_mut();
    // SAFETY: as in `run`; `input_size` holds the four sizes of a 4-D input.
    check(unsafe {
        bc_fused_pack(
            ptr(weight),
            stride.as_ptr(),
            padding.as_ptr(),
            dilation.as_ptr(),
            geometry.groups,
            input_size.as_ptr(),
            kind,
            &mut out,
        )
    })?;
    owned(out)
        .ok_or_else(|| BasisError::Torch(tch::TchError::Torch("packing returned no tensor".into())))
}
