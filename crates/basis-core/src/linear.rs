//! [`BasisLinear`]: a fully connected layer whose weight is synthesized per sample.

use crate::bank::KernelBank;
use crate::cost::LayerCost;
use crate::error::{BasisError, Result};
use crate::geometry::Conv2dGeometry;
use crate::layer;
use crate::strategy::Strategy;
use tch::{nn, Kind, Tensor};

/// A linear layer with `N` basis weights: sample `b` gets `sum_i alpha[b, i] * W_i`.
///
/// Its [`KernelBank`] holds `weight` `[N, out, in]` and `bias` `[N, out]`, stored as a
/// plain `Linear`'s (`[out, in]`, `[out]`) when `N = 1`. It runs through the same strategies as
/// [`crate::BasisConv2d`], as a 1x1 convolution on a 1x1 input, except `Shared`, which
/// is one matrix multiply.
///
/// ```
/// use basis_core::BasisLinear;
/// use tch::{nn, Device, Kind, Tensor};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let head = BasisLinear::new(&(vs.root() / "classifier"), 64, 10, 8, true)?;
/// let x = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
/// let alpha = Tensor::rand([4, 8], (Kind::Float, Device::Cpu));
/// assert_eq!(head.forward(&x, &alpha)?.size(), [4, 10]);
/// # Ok::<(), basis_core::BasisError>(())
/// ```
#[derive(Debug)]
pub struct BasisLinear {
    bank: KernelBank,
    in_features: i64,
    out_features: i64,
}

impl BasisLinear {
    /// A layer whose variables live under `path`, each basis initialized as PyTorch
    /// initializes a `Linear` (uniform in `±1/sqrt(in_features)`).
    pub fn new(
        path: &nn::Path,
        in_features: i64,
        out_features: i64,
        num_bases: i64,
        bias: bool,
    ) -> Result<Self> {
        Conv2dGeometry::new(in_features, out_features, 1).validate()?;
        let bound = 1.0 / (in_features as f64).sqrt();
        let bank = KernelBank::new(
            path,
            num_bases,
            &[out_features, in_features],
            bias.then_some(out_features),
            bound,
        )?;
        Ok(Self {
            bank,
            in_features,
            out_features,
        })
    }

    /// A layer over existing tensors: `bank` `[N, out, in]`, `bias_bank` `[N, out]`.
    pub fn from_bank(bank: &Tensor, bias_bank: Option<&Tensor>) -> Result<Self> {
        let size = bank.size();
        let &[_, out_features, in_features] = size.as_slice() else {
            return Err(BasisError::Shape {
                what: "basis weights",
                expected: "[N, out, in]".into(),
                found: format!("{size:?}"),
            });
        };
        let bank = KernelBank::from_tensors(
            "basis weights",
            bank,
            bias_bank,
            &[out_features, in_features],
        )?;
        Ok(Self {
            bank,
            in_features,
            out_features,
        })
    }

    /// Use `strategy` for every later [`BasisLinear::forward`].
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

    /// Input features.
    pub fn in_features(&self) -> i64 {
        self.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> i64 {
        self.out_features
    }

    /// Apply to `input` `[B, in]` with `coefficients` `[B, N]` or `[1, N]`.
    pub fn forward(&self, input: &Tensor, coefficients: &Tensor) -> Result<Tensor> {
        self.forward_with(input, coefficients, self.bank.strategy())
    }

    /// [`BasisLinear::forward`] with an explicit strategy.
    pub fn forward_with(
        &self,
        input: &Tensor,
        coefficients: &Tensor,
        strategy: Strategy,
    ) -> Result<Tensor> {
        let batch = self.check_input(input)?;
        let alpha = self.bank.coefficients(coefficients, batch)?;
        let num_bases = self.bank.num_bases();
        let geometry = Conv2dGeometry::new(self.in_features, self.out_features, 1);
        let resolved = match strategy {
            Strategy::Auto => Strategy::resolve(&geometry, batch, (1, 1), alpha.shared),
            s => s,
        };
        match resolved {
            Strategy::Shared => {
                return crate::timing::span(
                    || "linear (shared)".into(),
                    || {
                        let row = layer::shared_row(&alpha)?;
                        let (weight, bias) = self.bank.synthesize(&row)?;
                        Ok(input.f_linear(&weight, bias.as_ref())?)
                    },
                );
            }
            Strategy::MixOutputs => {
                return crate::timing::span(
                    || "linear (mix-outputs)".into(),
                    || {
                        let alpha = alpha.tensor.f_expand([batch, num_bases], false)?;
                        let bank = self.bank.weight_bank();
                        let bias = self
                            .bank
                            .bias_bank()
                            .map(|bb| alpha.f_matmul(&bb))
                            .transpose()?;
                        crate::synthesis::mix_outputs_dense(input, &alpha, &bank, bias.as_ref())
                    },
                );
            }
            _ => {}
        }
        let bank = self.bank.weight_bank().f_reshape([
            num_bases,
            self.out_features,
            self.in_features,
            1,
            1,
        ])?;
        let x = input.f_reshape([batch, self.in_features, 1, 1])?;
        let y = layer::apply(
            &x,
            &alpha,
            &bank,
            self.bank.bias_bank().as_ref(),
            &geometry,
            resolved,
            layer::Epilogue::NONE,
        )?;
        Ok(y.f_reshape([batch, self.out_features])?)
    }

    /// The static layer (`N = 1`) without coefficients: PyTorch's `Linear` (at inference
    /// on up to four fp32 CPU vectors, the basis layers' streamed kernel with the one
    /// basis, equal to rounding).
    pub fn forward_static(&self, input: &Tensor) -> Result<Tensor> {
        self.bank.require_static()?;
        let batch = self.check_input(input)?;
        crate::timing::span(
            || "linear (static)".into(),
            || {
                let weight = self.bank.weight();
                let bank = weight.f_unsqueeze(0)?;
                if crate::pointwise::streams(input, &bank) {
                    let alpha = Tensor::f_ones([batch, 1], (Kind::Float, input.device()))?;
                    let bias = self
                        .bank
                        .bias()
                        .map(|b| b.f_unsqueeze(0)?.f_expand([batch, -1], false))
                        .transpose()?;
                    let y = crate::pointwise::dense_forward(input, &alpha, &bank, bias.as_ref())?;
                    if let Some(y) = y {
                        return Ok(y);
                    }
                }
                Ok(input.f_linear(weight, self.bank.bias())?)
            },
        )
    }

    /// Parameters and multiply-adds for one sample.
    pub fn cost(&self) -> LayerCost {
        LayerCost::linear(
            self.in_features,
            self.out_features,
            self.bank.num_bases(),
            self.bank.bias().is_some(),
        )
    }

    fn check_input(&self, input: &Tensor) -> Result<i64> {
        let size = input.size();
        let &[batch, features] = size.as_slice() else {
            return Err(BasisError::Shape {
                what: "input",
                expected: format!("[batch, {}]", self.in_features),
                found: format!("{size:?}"),
            });
        };
        if features != self.in_features {
            return Err(BasisError::Channels {
                expected: self.in_features,
                found: features,
            });
        }
        Ok(batch)
    }
}
