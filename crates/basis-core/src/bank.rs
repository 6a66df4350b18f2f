//! [`KernelBank`]: the `N` basis tensors of one layer (weights and, optionally, biases)
//! and the strategy that runs them; what [`crate::BasisConv2d`] and [`crate::BasisLinear`]
//! share.

use crate::error::{BasisError, Result};
use crate::layer::{self, Coefficients};
use crate::strategy::Strategy;
use tch::{nn, Tensor};

/// The bases of one layer. Variables are named as PyTorch names the plain layer's
/// (`weight`, `bias`) with a leading basis axis `[N, ...]`; with one basis (`N = 1`, the
/// static layer) they are stored without it, so a static network's checkpoints are
/// exactly torchvision's.
///
/// ```
/// use basis_core::{BasisLinear, Strategy};
/// use tch::{nn, Device};
///
/// let vs = nn::VarStore::new(Device::Cpu);
/// let layer = BasisLinear::new(&vs.root(), 8, 3, 4, true)?.with_strategy(Strategy::MixOutputs);
/// let bank = layer.bank();
/// assert_eq!(bank.num_bases(), 4);
/// assert_eq!(bank.weight_bank().size(), [4, 3, 8]);
/// assert_eq!(bank.bias_bank().unwrap().size(), [4, 3]);
/// assert_eq!(bank.strategy(), Strategy::MixOutputs);
/// // One coefficient vector gives the plain layer's weight and bias.
/// let (w, b) = bank.synthesize(&tch::Tensor::from_slice(&[0.25f32; 4]))?;
/// assert_eq!((w.size(), b.unwrap().size()), (vec![3, 8], vec![3]));
/// # Ok::<(), basis_core::BasisError>(())
/// ```
#[derive(Debug)]
pub struct KernelBank {
    weight: Tensor,
    bias: Option<Tensor>,
    num_bases: i64,
    strategy: Strategy,
}

impl KernelBank {
    /// `num_bases` kernels of `kernel_shape` (and biases of `bias_len`) under `path`, each
    /// drawn uniformly in `±bound` (PyTorch's default initialization of the plain layer).
    pub(crate) fn new(
        path: &nn::Path,
        num_bases: i64,
        kernel_shape: &[i64],
        bias_len: Option<i64>,
        bound: f64,
    ) -> Result<Self> {
        layer::check_num_bases(num_bases)?;
        let init = nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let weight = path.f_var(
            "weight",
            &layer::stored_shape(num_bases, kernel_shape),
            init,
        )?;
        let bias = bias_len
            .map(|n| path.f_var("bias", &layer::stored_shape(num_bases, &[n]), init))
            .transpose()?;
        Ok(Self {
            weight,
            bias,
            num_bases,
            strategy: Strategy::Auto,
        })
    }

    /// A bank over existing tensors: `weights` `[N, ...kernel_shape]`, `biases`
    /// `[N, kernel_shape[0]]`. Gradients flow back to them.
    pub(crate) fn from_tensors(
        what: &'static str,
        weights: &Tensor,
        biases: Option<&Tensor>,
        kernel_shape: &[i64],
    ) -> Result<Self> {
        let size = weights.size();
        let num_bases = *size.first().unwrap_or(&0);
        if size.len() != kernel_shape.len() + 1 {
            return Err(BasisError::Shape {
                what,
                expected: format!("[N, {}]", dims(kernel_shape)),
                found: format!("{size:?}"),
            });
        }
        layer::check_num_bases(num_bases)?;
        let mut expected = vec![num_bases];
        expected.extend(kernel_shape);
        layer::check_stored(what, weights, &expected)?;
        if let Some(b) = biases {
            layer::check_stored("basis biases", b, &[num_bases, kernel_shape[0]])?;
        }
        Ok(Self {
            weight: layer::stored(weights),
            bias: biases.map(layer::stored),
            num_bases,
            strategy: Strategy::Auto,
        })
    }

    /// Number of bases `N`.
    pub fn num_bases(&self) -> i64 {
        self.num_bases
    }

    /// Whether this is a static layer (one basis, applied without coefficients).
    pub fn is_static(&self) -> bool {
        self.num_bases == 1
    }

    /// The stored weight variable (`[N, ...]`, or the plain weight when `N = 1`).
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The stored bias variable, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The weights as a bank `[N, ...]` (a view, also when `N = 1`).
    pub fn weight_bank(&self) -> Tensor {
        layer::bank_view(&self.weight, self.num_bases)
    }

    /// The biases as a bank `[N, out]`, if the layer has a bias.
    pub fn bias_bank(&self) -> Option<Tensor> {
        self.bias
            .as_ref()
            .map(|b| layer::bank_view(b, self.num_bases))
    }

    /// The strategy a layer's `forward` uses (`Auto` unless set).
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Choose the strategy of later `forward` calls.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// The plain weight and bias of one coefficient vector `[N]` or `[1, N]`: what baking
    /// a specialist into a static network stores.
    pub fn synthesize(&self, coefficients: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        layer::synthesize_one(coefficients, &self.weight_bank(), self.bias_bank().as_ref())
    }

    /// Plain weight and bias: synthesized for `coefficients`, or the stored ones of a
    /// static layer (`None`).
    pub fn weights_for(&self, coefficients: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        match coefficients {
            Some(c) => self.synthesize(c),
            None => {
                self.require_static()?;
                Ok((
                    self.weight.shallow_clone(),
                    self.bias.as_ref().map(Tensor::shallow_clone),
                ))
            }
        }
    }

    /// Coefficients checked against a batch of `batch` and this bank.
    pub(crate) fn coefficients(&self, coefficients: &Tensor, batch: i64) -> Result<Coefficients> {
        layer::check_coefficients(coefficients, batch, self.num_bases, self.weight.f_kind()?)
    }

    /// A static call (no coefficients) needs one basis.
    pub(crate) fn require_static(&self) -> Result<()> {
        layer::require_static(self.num_bases)
    }
}

fn dims(shape: &[i64]) -> String {
    shape
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
