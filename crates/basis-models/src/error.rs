//! The error type of basis-models.

use basis_core::BasisError;
use tch::Tensor;

/// What went wrong building, running or loading a model. Each message names the value
/// or tensor, what was expected and what came.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A basis layer refused its input or coefficients.
    #[error(transparent)]
    Basis(#[from] BasisError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A configuration value that cannot work.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// The input image is smaller than the network's downsampling allows.
    #[error(
        "{arch}: input of {found}x{found} px is too small; its {strides} stride-2 layers need at least {min} px"
    )]
    Resolution {
        /// The architecture.
        arch: String,
        /// Stride-2 layers.
        strides: u32,
        /// The smallest resolution that works.
        min: i64,
        /// The resolution that came.
        found: i64,
    },
    /// An input tensor of the wrong shape.
    #[error("{what}: expected {expected}, found {found}")]
    Input {
        /// Which input.
        what: &'static str,
        /// What was expected.
        expected: String,
        /// What came.
        found: String,
    },
    /// Coefficient vectors that do not match the specialist's scope.
    #[error("the specialist needs {expected} coefficient vector(s), found {found}")]
    CoefficientVectors {
        /// Vectors the specialist reads.
        expected: usize,
        /// Vectors that came.
        found: usize,
    },
    /// Synchronized batch norm could not sum its statistics across replicas.
    #[error("synchronized batch norm: {0}")]
    Replica(String),
    /// A checkpoint that does not fit the model.
    #[error("checkpoint {path}: {problem}")]
    Checkpoint {
        /// The file.
        path: String,
        /// What does not fit, naming the tensor.
        problem: String,
    },
    /// A network or an option the ONNX exporter cannot write.
    #[error("ONNX export: {0}")]
    Export(String),
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Result with [`ModelError`].
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Vector `v` of the coefficients, or an error when there are too few.
pub(crate) fn vector(coefficients: &[Tensor], v: usize) -> Result<&Tensor> {
    coefficients.get(v).ok_or(ModelError::CoefficientVectors {
        expected: v + 1,
        found: coefficients.len(),
    })
}
