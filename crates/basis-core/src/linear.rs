//! [`BasisLinear`]: a fully connected layer whose weight is synthesized per sample.

use crate::cost::LayerCost;
use crate::error::{BasisError, Result};
use crate::geometry::Conv2dGeometry;
use crate::layer;
use crate::strategy::Strategy;
use tch::{nn, Tensor};

/// A linear layer with `N` basis weights: sample `b` gets `sum_i alpha[b, i] * W_i`.
///
/// Variables: `weight` `[N, out, in]` and `bias` `[N, out]`, stored as a plain `Linear`'s
/// (`[out, in]`, `[out]`) when `N = 1`. It runs through the same strategies as
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
    weight: Tensor,
    bias: Option<Tensor>,
    in_features: i64,
    out_features: i64,
    num_bases: i64,
    strategy: Strategy,
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
        layer::check_num_bases(num_bases)?;
        let bound = 1.0 / (in_features as f64).sqrt();
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = path.f_var(
            "weight",
            &layer::stored_shape(num_bases, &[out_features, in_features]),
            init,
        )?;
        let bias = bias
            .then(|| {
                path.f_var(
                    "bias",
                    &layer::stored_shape(num_bases, &[out_features]),
                    init,
                )
            })
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            in_features,
            out_features,
            num_bases,
            strategy: Strategy::Auto,
        })
    }

    /// A layer over existing tensors: `bank` `[N, out, in]`, `bias_bank` `[N, out]`.
    pub fn from_bank(bank: &Tensor, bias_bank: Option<&Tensor>) -> Result<Self> {
        let size = bank.size();
        let &[num_bases, out_features, in_features] = size.as_slice() else {
            return Err(BasisError::Shape {
                what: "basis weights",
                expected: "[N, out, in]".into(),
                found: format!("{size:?}"),
            });
        };
        layer::check_num_bases(num_bases)?;
        if let Some(bb) = bias_bank {
            layer::check_stored("basis biases", bb, &[num_bases, out_features])?;
        }
        Ok(Self {
            weight: layer::stored(bank),
            bias: bias_bank.map(layer::stored),
            in_features,
            out_features,
            num_bases,
            strategy: Strategy::Auto,
        })
    }

    /// Use `strategy` for every later [`BasisLinear::forward`].
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Change the strategy of a built layer.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// Number of bases `N`.
    pub fn num_bases(&self) -> i64 {
        self.num_bases
    }

    /// Input features.
    pub fn in_features(&self) -> i64 {
        self.in_features
    }

    /// Output features.
    pub fn out_features(&self) -> i64 {
        self.out_features
    }

    /// The stored weight variable (`[N, out, in]`, or `[out, in]` when `N = 1`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The stored bias variable, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weights as a bank `[N, out, in]`.
    pub fn bank(&self) -> Tensor {
        layer::bank_view(&self.weight, self.num_bases)
    }

    /// The biases as a bank `[N, out]`, if any.
    pub fn bias_bank(&self) -> Option<Tensor> {
        self.bias
            .as_ref()
            .map(|b| layer::bank_view(b, self.num_bases))
    }

    /// Apply to `input` `[B, in]` with `coefficients` `[B, N]` or `[1, N]`.
    pub fn forward(&self, input: &Tensor, coefficients: &Tensor) -> Result<Tensor> {
        self.forward_with(input, coefficients, self.strategy)
    }

    /// [`BasisLinear::forward`] with an explicit strategy.
    pub fn forward_with(
        &self,
        input: &Tensor,
        coefficients: &Tensor,
        strategy: Strategy,
    ) -> Result<Tensor> {
        let batch = self.check_input(input)?;
        let alpha =
            layer::check_coefficients(coefficients, batch, self.num_bases, self.weight.f_kind()?)?;
        let geometry = Conv2dGeometry::new(self.in_features, self.out_features, 1);
        let resolved = match strategy {
            Strategy::Auto => Strategy::resolve(&geometry, batch, (1, 1), alpha.shared),
            s => s,
        };
        match resolved {
            Strategy::Shared => {
                let row = layer::shared_row(&alpha)?;
                let (weight, bias) = self.synthesize(&row)?;
                return Ok(input.f_linear(&weight, bias.as_ref())?);
            }
            Strategy::MixOutputs => {
                let alpha = alpha.tensor.f_expand([batch, self.num_bases], false)?;
                let bank = self.bank();
                let bias = self.bias_bank();
                return crate::synthesis::mix_outputs_dense(input, &alpha, &bank, bias.as_ref());
            }
            _ => {}
        }
        let bank =
            self.bank()
                .f_reshape([self.num_bases, self.out_features, self.in_features, 1, 1])?;
        let x = input.f_reshape([batch, self.in_features, 1, 1])?;
        let y = layer::apply(
            &x,
            &alpha,
            &bank,
            self.bias_bank().as_ref(),
            &geometry,
            resolved,
        )?;
        Ok(y.f_reshape([batch, self.out_features])?)
    }

    /// The static layer (`N = 1`) without coefficients: exactly PyTorch's `Linear`.
    pub fn forward_static(&self, input: &Tensor) -> Result<Tensor> {
        layer::require_static(self.num_bases)?;
        self.check_input(input)?;
        Ok(input.f_linear(&self.weight, self.bias.as_ref())?)
    }

    /// Weight `[out, in]` and bias `[out]` of one coefficient vector `[N]` or `[1, N]`.
    pub fn synthesize(&self, coefficients: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        layer::synthesize_one(coefficients, &self.bank(), self.bias_bank().as_ref())
    }

    /// Parameters and multiply-adds for one sample.
    pub fn cost(&self) -> LayerCost {
        LayerCost::linear(
            self.in_features,
            self.out_features,
            self.num_bases,
            self.bias.is_some(),
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
