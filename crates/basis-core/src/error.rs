//! The one error type of basis-core.

/// What went wrong in a basis-core call. Each message names what was expected and what came.
#[derive(Debug, thiserror::Error)]
pub enum BasisError {
    /// A tensor argument has the wrong number of dimensions or the wrong sizes.
    #[error("{what}: expected {expected}, found {found}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The shape that was expected, in words.
        expected: String,
        /// The shape that came.
        found: String,
    },
    /// The coefficients do not have one column per basis.
    #[error("coefficients have {found} columns, expected one per basis ({expected})")]
    CoefficientWidth {
        /// The number of bases of the layer.
        expected: i64,
        /// The width of the coefficient tensor.
        found: i64,
    },
    /// The coefficients have neither one row per sample nor a single shared row.
    #[error(
        "coefficients have {coefficients} rows, expected one per sample ({batch}) or a single shared row"
    )]
    BatchMismatch {
        /// Samples in the input batch.
        batch: i64,
        /// Rows of the coefficient tensor.
        coefficients: i64,
    },
    /// The input's channel (or feature) count does not match the layer.
    #[error("input has {found} channels, expected {expected}")]
    Channels {
        /// The layer's input channels.
        expected: i64,
        /// The input's channels.
        found: i64,
    },
    /// The input is too small for the kernel.
    #[error("input of {found} is too small for the layer: {expected}")]
    Spatial {
        /// What the layer needs, in words.
        expected: String,
        /// The input's spatial size.
        found: String,
    },
    /// A softmax temperature that is zero, negative, infinite or NaN.
    #[error("temperature must be a finite number > 0, found {0}")]
    Temperature(f64),
    /// A probability outside `[0, 1)`.
    #[error("basis dropout probability must be in [0, 1), found {0}")]
    DropoutProbability(f64),
    /// A layer description that cannot exist (zero channels, groups that do not divide...).
    #[error("invalid layer: {0}")]
    Config(String),
    /// An execution strategy asked for a layer or coefficients it cannot run.
    #[error("strategy {strategy} cannot run this call: {reason}")]
    Unsupported {
        /// The strategy's name.
        strategy: &'static str,
        /// Why, in words.
        reason: String,
    },
    /// An error libtorch reported (device mismatch, out of memory, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result with [`BasisError`].
pub type Result<T, E = BasisError> = std::result::Result<T, E>;
