//! [`BasisConv2d`]: a convolution whose kernel is synthesized per sample from `N` bases.

use crate::activation::Activation;
use crate::bank::KernelBank;
use crate::cost::LayerCost;
use crate::error::{BasisError, Result};
use crate::frozen::{FoldedBank, PackedWeights};
use crate::fused;
use crate::geometry::Conv2dGeometry;
use crate::layer;
use crate::strategy::Strategy;
use tch::{nn, Tensor};

/// A 2-D convolution with `N` basis kernels. For sample `b` with coefficients
/// `alpha[b, :]` it applies the kernel `sum_i alpha[b, i] * W_i` (and the bias
/// `sum_i alpha[b, i] * b_i`).
///
/// Its [`KernelBank`] holds the variables, named as PyTorch names a `Conv2d`'s: `weight`
/// `[N, Cout, Cin/g, kh, kw]` and `bias` `[N, Cout]` (`[Cout, Cin/g, kh, kw]` and `[Cout]`
/// when `N = 1`, the static layer).
///
/// ```
/// use basis_core::{BasisConv2d, Conv2dGeometry};
/// use tch::{nn, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let geometry = Conv2dGeometry::new(16, 32, 3).padding(1);
/// let layer = BasisConv2d::new(&(vs.root() / "conv"), geometry, 4, true)?;
/// let x = Tensor::randn([2, 16, 8, 8], (Kind::Float, Device::Cpu));
/// let alpha = Tensor::randn([2, 4], (Kind::Float, Device::Cpu)).softmax(-1, Kind::Float);
/// let y = layer.forward(&x, &alpha)?;
/// assert_eq!(y.size(), [2, 32, 8, 8]);
/// // A wrong coefficient width is a typed error, not an abort.
/// let bad = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
/// assert!(layer.forward(&x, &bad).is_err());
/// # Ok::<(), basis_core::BasisError>(())
/// ```
#[derive(Debug)]
pub struct BasisConv2d {
    bank: KernelBank,
    geometry: Conv2dGeometry,
    /// A static layer's folded, prepacked weights for fused inference.
    packed: PackedWeights,
    /// A basis layer's bank with its batch norm folded in, while frozen.
    folded: FoldedBank,
}

impl BasisConv2d {
    /// A layer whose variables live under `path`, each basis initialized as PyTorch
    /// initializes a `Conv2d` (uniform in `±1/sqrt(fan_in)`, weights and biases).
    pub fn new(
        path: &nn::Path,
        geometry: Conv2dGeometry,
        num_bases: i64,
        bias: bool,
    ) -> Result<Self> {
        geometry.validate()?;
        let [_, in_per_group, kh, kw] = geometry.weight_shape();
        let bound = 1.0 / ((in_per_group * kh * kw) as f64).sqrt();
        let bank = KernelBank::new(
            path,
            num_bases,
            &geometry.weight_shape(),
            bias.then_some(geometry.out_channels),
            bound,
        )?;
        Ok(Self {
            bank,
            geometry,
            packed: PackedWeights::default(),
            folded: FoldedBank::default(),
        })
    }

    /// A layer over existing tensors: `bank` `[N, Cout, Cin/g, kh, kw]`, `bias_bank`
    /// `[N, Cout]`. Gradients flow back to them.
    pub fn from_bank(
        bank: &Tensor,
        bias_bank: Option<&Tensor>,
        geometry: Conv2dGeometry,
    ) -> Result<Self> {
        geometry.validate()?;
        let bank =
            KernelBank::from_tensors("basis kernels", bank, bias_bank, &geometry.weight_shape())?;
        Ok(Self {
            bank,
            geometry,
            packed: PackedWeights::default(),
            folded: FoldedBank::default(),
        })
    }

    /// Use `strategy` for every later [`BasisConv2d::forward`].
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.bank.set_strategy(strategy);
        self
    }

    /// The bases and strategy of the layer.
    pub fn bank(&self) -> &KernelBank {
        &self.bank
    }

    /// The bases and strategy of the layer, to change the strategy.
    pub fn bank_mut(&mut self) -> &mut KernelBank {
        &mut self.bank
    }

    /// The convolution's shape.
    pub fn geometry(&self) -> &Conv2dGeometry {
        &self.geometry
    }

    /// Apply the layer to `input` `[B, Cin, H, W]` with `coefficients` `[B, N]` (or `[1, N]`,
    /// one vector for the whole batch), using the layer's strategy.
    pub fn forward(&self, input: &Tensor, coefficients: &Tensor) -> Result<Tensor> {
        self.forward_with(input, coefficients, self.bank.strategy())
    }

    /// [`BasisConv2d::forward`] with an explicit strategy.
    pub fn forward_with(
        &self,
        input: &Tensor,
        coefficients: &Tensor,
        strategy: Strategy,
    ) -> Result<Tensor> {
        self.apply(input, coefficients, strategy, layer::Epilogue::NONE)
    }

    /// Check the arguments and run `strategy`, then the epilogue (folded and fused where
    /// it can be).
    fn apply(
        &self,
        input: &Tensor,
        coefficients: &Tensor,
        strategy: Strategy,
        epilogue: layer::Epilogue,
    ) -> Result<Tensor> {
        let batch = self.check_input(input)?;
        let alpha = self.bank.coefficients(coefficients, batch)?;
        let (bank, bias_bank) = (self.bank.weight_bank(), self.bank.bias_bank());
        let folded = match epilogue.affine {
            Some(a) => self
                .folded
                .get(&bank, bias_bank.as_ref(), a.scale, a.shift)?,
            None => None,
        };
        let epilogue = layer::Epilogue {
            affine: epilogue.affine.map(|a| layer::Affine {
                folded: folded.as_ref().map(|(b, bb)| (b, bb.as_ref())),
                ..a
            }),
            ..epilogue
        };
        layer::apply(
            input,
            &alpha,
            &bank,
            bias_bank.as_ref(),
            &self.geometry,
            strategy,
            epilogue,
        )
    }

    /// [`BasisConv2d::forward`] followed by the per-output-channel affine map
    /// `y * scale + shift` (`[Cout]` each), folded into the layer: the bank and its biases
    /// are scaled and the shift joins each sample's bias, which saves a pass over the
    /// output (an inference batch norm), for any coefficients.
    ///
    /// ```
    /// use basis_core::{BasisConv2d, Conv2dGeometry};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let conv = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(3, 4, 3).padding(1), 2, true)?;
    /// let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    /// let alpha = Tensor::randn([2, 2], (Kind::Float, Device::Cpu));
    /// let scale = Tensor::from_slice(&[0.5f32, 2.0, -1.0, 1.5]);
    /// let shift = Tensor::from_slice(&[0.1f32, 0.2, 0.3, -0.4]);
    /// let folded = conv.forward_affine(&x, &alpha, &scale, &shift)?;
    /// let apart = conv.forward(&x, &alpha)? * scale.view([1, 4, 1, 1]) + shift.view([1, 4, 1, 1]);
    /// assert!(folded.allclose(&apart, 1e-5, 1e-5, false));
    /// # Ok::<(), basis_core::BasisError>(())
    /// ```
    pub fn forward_affine(
        &self,
        input: &Tensor,
        coefficients: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        self.check_affine(scale, shift)?;
        let affine = layer::Affine {
            scale,
            shift,
            folded: None,
        };
        let epilogue = layer::Epilogue {
            affine: Some(affine),
            act: Activation::Identity,
        };
        self.apply(input, coefficients, self.bank.strategy(), epilogue)
    }

    fn check_affine(&self, scale: &Tensor, shift: &Tensor) -> Result<()> {
        let out = self.geometry.out_channels;
        for (what, t) in [("scale", scale), ("shift", shift)] {
            if t.size() != [out] {
                return Err(BasisError::Unsupported {
                    strategy: "affine",
                    reason: format!(
                        "the affine {what} must have shape [{out}], found {:?}",
                        t.size()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The static layer (`N = 1`) applied without coefficients: exactly PyTorch's `Conv2d`.
    pub fn forward_static(&self, input: &Tensor) -> Result<Tensor> {
        self.bank.require_static()?;
        self.check_input(input)?;
        let g = &self.geometry;
        crate::timing::span(
            || static_work(g, input),
            || {
                let (_, _, h, w) = input.size4()?;
                // A plane smaller than the kernel's reach runs the taps that read it.
                let cropped = layer::crop_kernel(self.bank.weight(), g, h, w)?;
                let (weight, g) = match &cropped {
                    Some((weight, cropped)) => (weight, cropped),
                    None => (self.bank.weight(), g),
                };
                Ok(input.f_conv2d(
                    weight,
                    self.bank.bias(),
                    g.stride,
                    g.padding,
                    g.dilation,
                    g.groups,
                )?)
            },
        )
    }

    /// The static layer followed by the per-output-channel affine map `y * scale + shift`
    /// (`[Cout]` each), run as one convolution whose kernel and bias absorb the map: an
    /// inference batch norm folded into the layer saves a pass over the output.
    ///
    /// ```
    /// use basis_core::{BasisConv2d, Conv2dGeometry};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let conv = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(3, 4, 3).padding(1), 1, false)?;
    /// let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    /// let scale = Tensor::from_slice(&[0.5f32, 2.0, -1.0, 1.5]);
    /// let shift = Tensor::from_slice(&[0.1f32, 0.2, 0.3, -0.4]);
    /// let folded = conv.forward_static_affine(&x, &scale, &shift)?;
    /// let apart = conv.forward_static(&x)? * scale.view([1, 4, 1, 1]) + shift.view([1, 4, 1, 1]);
    /// assert!(folded.allclose(&apart, 1e-5, 1e-5, false));
    /// # Ok::<(), basis_core::BasisError>(())
    /// ```
    pub fn forward_static_affine(
        &self,
        input: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
    ) -> Result<Tensor> {
        self.check_affine(scale, shift)?;
        self.bank.require_static()?;
        self.check_input(input)?;
        let g = &self.geometry;
        crate::timing::span(
            || format!("{} + folded batch norm", static_work(g, input)),
            || {
                let weight = self.bank.weight().f_mul(&scale.f_reshape([-1, 1, 1, 1])?)?;
                let bias = match self.bank.bias() {
                    Some(b) => b.f_mul(scale)?.f_add(shift)?,
                    None => shift.shallow_clone(),
                };
                Ok(input.f_conv2d(
                    &weight,
                    Some(&bias),
                    g.stride,
                    g.padding,
                    g.dilation,
                    g.groups,
                )?)
            },
        )
    }

    /// The layer (with `coefficients`, or without for a static layer), the per-channel
    /// affine map `y * scale + shift` when given (an inference batch norm, folded into the
    /// kernels), then `act`: where it can, convolution, bias and activation run as one
    /// oneDNN pass over the output ([`crate::fused`]: a static layer, the grouped
    /// convolution of per-sample kernels, one shared kernel); otherwise the activation is
    /// applied after the layer, with gradients as usual. While inference is frozen
    /// ([`crate::frozen::freeze`]) a static layer keeps its folded kernel in oneDNN's
    /// blocked layout between calls instead of reordering it on every call.
    ///
    /// ```
    /// use basis_core::{Activation, BasisConv2d, Conv2dGeometry};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let conv = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(3, 4, 3).padding(1), 1, false)?;
    /// let x = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    /// let scale = Tensor::from_slice(&[0.5f32, 2.0, -1.0, 1.5]);
    /// let shift = Tensor::from_slice(&[0.1f32, 0.2, 0.3, -0.4]);
    /// let affine = Some((&scale, &shift));
    /// let fused = tch::no_grad(|| conv.forward_fused(&x, None, affine, Activation::Hardswish))?;
    /// let apart = conv.forward_static_affine(&x, &scale, &shift)?.hardswish();
    /// assert!(fused.allclose(&apart, 1e-5, 1e-5, false));
    ///
    /// // A basis layer: 4 bases, each sample its own kernel.
    /// let dw = Conv2dGeometry::new(4, 4, 3).padding(1).groups(4);
    /// let conv = BasisConv2d::new(&(vs.root() / "dw"), dw, 4, true)?;
    /// let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    /// let alpha = Tensor::rand([2, 4], (Kind::Float, Device::Cpu));
    /// let fused = tch::no_grad(|| conv.forward_fused(&x, Some(&alpha), affine, Activation::RELU6))?;
    /// let apart = conv.forward_affine(&x, &alpha, &scale, &shift)?.relu6();
    /// assert!(fused.allclose(&apart, 1e-5, 1e-5, false));
    /// # Ok::<(), basis_core::BasisError>(())
    /// ```
    pub fn forward_fused(
        &self,
        input: &Tensor,
        coefficients: Option<&Tensor>,
        affine: Option<(&Tensor, &Tensor)>,
        act: Activation,
    ) -> Result<Tensor> {
        self.fused(input, coefficients, affine, act, None)
    }

    /// [`BasisConv2d::forward_fused`] without an activation, plus `residual` (the input
    /// of a residual block): `layer(input) * scale + shift + residual`. Where the fused
    /// path applies to a static layer, the convolution is added into `residual`'s memory
    /// in the same oneDNN pass (the sum post-op, as PyTorch's compiled graphs do), so when
    /// no gradient is needed pass a residual that nothing reads afterwards; otherwise the
    /// sum is a second pass, in place into the layer's output.
    ///
    /// ```
    /// use basis_core::{to_channels_last, BasisConv2d, Conv2dGeometry};
    /// use tch::{nn, Device, Kind, Tensor};
    ///
    /// let vs = nn::VarStore::new(Device::Cpu);
    /// let conv = BasisConv2d::new(&vs.root(), Conv2dGeometry::new(8, 4, 1), 1, false)?;
    /// let x = to_channels_last(&Tensor::randn([2, 8, 6, 6], (Kind::Float, Device::Cpu)))?;
    /// let residual = to_channels_last(&Tensor::randn([2, 4, 6, 6], (Kind::Float, Device::Cpu)))?;
    /// let expected = conv.forward_static(&x)? + &residual;
    /// let y = tch::no_grad(|| conv.forward_fused_add(&x, None, None, &residual.copy()))?;
    /// assert!(y.allclose(&expected, 1e-5, 1e-5, false));
    /// # Ok::<(), basis_core::BasisError>(())
    /// ```
    pub fn forward_fused_add(
        &self,
        input: &Tensor,
        coefficients: Option<&Tensor>,
        affine: Option<(&Tensor, &Tensor)>,
        residual: &Tensor,
    ) -> Result<Tensor> {
        self.fused(
            input,
            coefficients,
            affine,
            Activation::Identity,
            Some(residual),
        )
    }

    /// [`BasisConv2d::forward_fused`], with `residual` added before `act` when given.
    fn fused(
        &self,
        input: &Tensor,
        coefficients: Option<&Tensor>,
        affine: Option<(&Tensor, &Tensor)>,
        act: Activation,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        if let Some((scale, shift)) = affine {
            self.check_affine(scale, shift)?;
        }
        if let Some(coefficients) = coefficients {
            let affine = affine.map(|(scale, shift)| layer::Affine {
                scale,
                shift,
                folded: None,
            });
            let Some(residual) = residual else {
                let epilogue = layer::Epilogue { affine, act };
                return self.apply(input, coefficients, self.bank.strategy(), epilogue);
            };
            let epilogue = layer::Epilogue {
                affine,
                act: Activation::Identity,
            };
            let y = self.apply(input, coefficients, self.bank.strategy(), epilogue)?;
            return act.apply_timed(fused::add_residual(y, residual)?);
        }
        self.bank.require_static()?;
        self.check_input(input)?;
        let g = &self.geometry;
        let work = || {
            let folded = if affine.is_some() {
                " + folded batch norm"
            } else {
                ""
            };
            let add = if residual.is_some() {
                " + residual add"
            } else {
                ""
            };
            format!("{}{folded}{add}", static_work(g, input))
        };
        let packed = crate::timing::span(work, || {
            let (weight, bias) = (self.bank.weight(), self.bank.bias());
            self.packed
                .conv2d(input, weight, bias, affine, g, act, residual)
        })?;
        if let Some(y) = packed {
            return Ok(y);
        }
        let (weight, bias) = match affine {
            None => (
                self.bank.weight().shallow_clone(),
                self.bank.bias().map(Tensor::shallow_clone),
            ),
            Some((scale, shift)) => (
                self.bank.weight().f_mul(&scale.f_reshape([-1, 1, 1, 1])?)?,
                Some(match self.bank.bias() {
                    Some(b) => b.f_mul(scale)?.f_add(shift)?,
                    None => shift.shallow_clone(),
                }),
            ),
        };
        crate::timing::span(work, || match residual {
            None => fused::conv2d(input, &weight, bias.as_ref(), g, g.groups, act),
            Some(residual) => {
                let y = fused::conv2d_add(input, &weight, bias.as_ref(), g, g.groups, residual)?;
                act.apply_timed(y)
            }
        })
    }

    /// Parameters and multiply-adds of the layer for one `h x w` input.
    pub fn cost(&self, input_hw: (i64, i64)) -> Result<LayerCost> {
        LayerCost::conv2d(
            &self.geometry,
            input_hw,
            self.bank.num_bases(),
            self.bank.bias().is_some(),
        )
    }

    /// Check `input` is `[B, Cin, H, W]` and large enough; returns `B`.
    fn check_input(&self, input: &Tensor) -> Result<i64> {
        let size = input.size();
        let &[batch, channels, h, w] = size.as_slice() else {
            return Err(BasisError::Shape {
                what: "input",
                expected: format!("[batch, {}, height, width]", self.geometry.in_channels),
                found: format!("{size:?}"),
            });
        };
        if channels != self.geometry.in_channels {
            return Err(BasisError::Channels {
                expected: self.geometry.in_channels,
                found: channels,
            });
        }
        self.geometry.output_hw(h, w)?;
        Ok(batch)
    }
}

/// A static layer's entry in the timing profile.
fn static_work(g: &Conv2dGeometry, input: &Tensor) -> String {
    let size = input.size();
    let hw = (size[size.len() - 2], size[size.len() - 1]);
    format!("{} (static)", g.kind_name(hw))
}
