//! How a basis layer turns per-sample coefficients into outputs.

use crate::geometry::Conv2dGeometry;

/// Execution strategy of a basis layer. Every strategy computes, for each sample `b`, the
/// layer with weight `sum_i alpha[b, i] * W_i`; they differ only in speed (and all equal
/// [`Strategy::PerSample`], the reference, within fp32 rounding, gradients included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Strategy {
    /// Pick per call from the layer's shape, the batch and the coefficients ([`Strategy::resolve`]).
    #[default]
    Auto,
    /// The reference: synthesize each sample's kernel and run one plain convolution per sample.
    PerSample,
    /// Synthesize all `B` kernels, then one grouped convolution over the batch: the input is
    /// viewed as `(1, B*C, H, W)` and `groups = B * g` (timm's CondConv2d batching).
    GroupedConv,
    /// Synthesize all `B` kernels, then one batched matrix multiply; 1x1 kernels and linear
    /// layers only. At inference on fp32 CPU tensors (NCHW, stride 1, no padding) a 1x1
    /// layer runs in one pass instead: each sample's kernel rows are synthesized in cache,
    /// multiplied by oneDNN's batch-reduce GEMM, and the bias and activation applied to
    /// each output block while it is in cache.
    BatchedMatmul,
    /// Run the input through all `N` bases (one convolution with `N * Cout` outputs), then mix
    /// the `N` outputs of each sample with its coefficients. No synthesis; `N` times the
    /// convolution's work. On one vector per sample (linear layers, 1x1 kernels on a 1x1
    /// input) at inference in fp32 on the CPU, from batch 2, the `N` GEMMs accumulate per
    /// block of outputs instead, without writing the `N` outputs.
    MixOutputs,
    /// One kernel for the whole batch: valid when there is a single coefficient row (a fixed
    /// specialist, `B = 1`, `N = 1`), or, without gradients, when every row is equal.
    Shared,
}

impl Strategy {
    /// Every concrete strategy (all but `Auto`), for tests and benchmarks.
    pub const CONCRETE: [Strategy; 5] = [
        Strategy::PerSample,
        Strategy::GroupedConv,
        Strategy::BatchedMatmul,
        Strategy::MixOutputs,
        Strategy::Shared,
    ];

    /// The strategy's name, as written in benchmark tables.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::PerSample => "per-sample",
            Strategy::GroupedConv => "grouped-conv",
            Strategy::BatchedMatmul => "batched-matmul",
            Strategy::MixOutputs => "mix-outputs",
            Strategy::Shared => "shared",
        }
    }

    /// Whether this strategy can run a layer of this geometry at all (before looking at the
    /// coefficients; `Shared` also needs a single coefficient row).
    pub fn supports(self, geometry: &Conv2dGeometry) -> bool {
        match self {
            Strategy::BatchedMatmul => geometry.is_pointwise(),
            _ => true,
        }
    }

    /// The concrete strategy `Auto` runs for a layer of this geometry on `batch` inputs of
    /// `input_hw`, when the coefficients are one row for the batch (`shared_rows`) or not.
    ///
    /// The rule comes from `cargo bench -p basis-core` (MobileNetV3-Large layer shapes at
    /// 224 px, N = 8, fp32); the measurements are in the benchmark report
    /// (`docs/src/bench-report.md`, "basis-core: per-sample kernel strategies"):
    ///
    /// - a 1x1 convolution on a batch of one: `BatchedMatmul` (one GEMM, faster than
    ///   libtorch's 1x1 convolution);
    /// - a 1x1 kernel on a 1x1 input (linear layers, squeeze-excite convs) on a batch of
    ///   one: `MixOutputs`, one GEMM over all bases (1.34-1.41x faster than synthesizing
    ///   the one weight matrix first, on the head's 960-1280 layer);
    /// - one coefficient row (or a batch of one): `Shared`, one kernel and one ordinary
    ///   convolution, close to the static layer;
    /// - a 1x1 kernel on a 1x1 input (linear layers, squeeze-excite convs): `MixOutputs`
    ///   as one GEMM over all bases, where synthesizing a weight matrix per sample costs
    ///   several times more;
    /// - other 1x1 kernels: `BatchedMatmul`, the fastest per-sample strategy on every
    ///   pointwise shape;
    /// - everything else, depthwise included: `GroupedConv`.
    ///
    /// `MixOutputs` on spatial layers costs `N` times the convolution and never won at
    /// inference; in training, on planes of at most `N` pixels, it does
    /// ([`Strategy::in_training`]). `PerSample` is the reference.
    pub fn resolve(
        geometry: &Conv2dGeometry,
        batch: i64,
        input_hw: (i64, i64),
        shared_rows: bool,
    ) -> Strategy {
        let dense = crate::synthesis::is_dense_on_one_pixel(geometry, input_hw);
        if geometry.is_pointwise() && !dense && batch == 1 {
            Strategy::BatchedMatmul
        } else if dense && batch == 1 {
            Strategy::MixOutputs
        } else if shared_rows || batch == 1 {
            Strategy::Shared
        } else if dense {
            Strategy::MixOutputs
        } else if geometry.is_pointwise() {
            Strategy::BatchedMatmul
        } else {
            Strategy::GroupedConv
        }
    }

    /// The strategy `Auto` runs while autograd records (training), from the one
    /// [`Strategy::resolve`] picked for a layer with `num_bases` bases on `input_hw`: a
    /// per-sample 1x1 layer on at most `N` pixels runs [`Strategy::MixOutputs`] instead of
    /// [`Strategy::BatchedMatmul`]. There, synthesizing each sample's kernel costs as much as
    /// the convolution or more, and the batched product of tiny matrices (and its
    /// backward, whose inner dimension is the pixel count) runs far below the speed of one
    /// convolution over all bases. Forward and backward of `basisnet-fashion`'s 2x2 layers
    /// at batch 128, N = 4 (2-core AVX-512 machine, PyTorch 2.13): 2.3-3.0 against 14.4-14.7
    /// ms; on 4x4 planes the batched product stays (1.6 against 3.3 ms on the expansion).
    ///
    /// ```
    /// use basis_core::{Conv2dGeometry, Strategy};
    /// let expand = Conv2dGeometry::new(96, 576, 1);
    /// assert_eq!(Strategy::BatchedMatmul.in_training(&expand, (2, 2), 4), Strategy::MixOutputs);
    /// assert_eq!(Strategy::BatchedMatmul.in_training(&expand, (4, 4), 4), Strategy::BatchedMatmul);
    /// ```
    pub fn in_training(
        self,
        geometry: &Conv2dGeometry,
        input_hw: (i64, i64),
        num_bases: i64,
    ) -> Strategy {
        let (h, w) = input_hw;
        if self == Strategy::BatchedMatmul && geometry.is_pointwise() && h * w <= num_bases {
            Strategy::MixOutputs
        } else {
            self
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
