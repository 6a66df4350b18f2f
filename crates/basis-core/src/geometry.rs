//! The shape of one convolution: channels, kernel, stride, padding, dilation, groups.

use crate::error::{BasisError, Result};

/// The hyper-parameters of a 2-D convolution, independent of its weights.
///
/// ```
/// use basis_core::Conv2dGeometry;
/// // A depthwise 5x5, stride 2, as in MobileNetV3-Large's third stage.
/// let g = Conv2dGeometry::new(72, 72, 5).stride(2).padding(2).groups(72);
/// g.validate().unwrap();
/// assert!(g.is_depthwise());
/// assert_eq!(g.weight_shape(), [72, 1, 5, 5]);
/// assert_eq!(g.output_hw(56, 56).unwrap(), (28, 28));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    /// Input channels.
    pub in_channels: i64,
    /// Output channels.
    pub out_channels: i64,
    /// Kernel height and width.
    pub kernel_size: [i64; 2],
    /// Stride along height and width.
    pub stride: [i64; 2],
    /// Zero padding along height and width (each side).
    pub padding: [i64; 2],
    /// Dilation along height and width.
    pub dilation: [i64; 2],
    /// Channel groups (`in_channels` for depthwise).
    pub groups: i64,
}

impl Conv2dGeometry {
    /// A square `kernel x kernel` convolution, stride 1, no padding, dilation 1, one group.
    pub fn new(in_channels: i64, out_channels: i64, kernel: i64) -> Self {
        Self {
            in_channels,
            out_channels,
            kernel_size: [kernel, kernel],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }

    /// The same stride along both axes.
    pub fn stride(mut self, stride: i64) -> Self {
        self.stride = [stride, stride];
        self
    }

    /// The same padding along both axes.
    pub fn padding(mut self, padding: i64) -> Self {
        self.padding = [padding, padding];
        self
    }

    /// The same dilation along both axes.
    pub fn dilation(mut self, dilation: i64) -> Self {
        self.dilation = [dilation, dilation];
        self
    }

    /// Channel groups.
    pub fn groups(mut self, groups: i64) -> Self {
        self.groups = groups;
        self
    }

    /// Check that the numbers can describe a convolution.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("kernel height", self.kernel_size[0]),
            ("kernel width", self.kernel_size[1]),
            ("stride", self.stride[0].min(self.stride[1])),
            ("dilation", self.dilation[0].min(self.dilation[1])),
            ("groups", self.groups),
        ];
        for (name, value) in positive {
            if value < 1 {
                return Err(BasisError::Config(format!(
                    "{name} must be >= 1, found {value}"
                )));
            }
        }
        if self.padding[0] < 0 || self.padding[1] < 0 {
            return Err(BasisError::Config(format!(
                "padding must be >= 0, found {:?}",
                self.padding
            )));
        }
        if self.in_channels % self.groups != 0 || self.out_channels % self.groups != 0 {
            return Err(BasisError::Config(format!(
                "groups ({}) must divide in_channels ({}) and out_channels ({})",
                self.groups, self.in_channels, self.out_channels
            )));
        }
        Ok(())
    }

    /// Shape of one kernel: `[out, in / groups, kh, kw]`, as PyTorch stores it.
    pub fn weight_shape(&self) -> [i64; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel_size[0],
            self.kernel_size[1],
        ]
    }

    /// Elements of one kernel.
    pub fn weight_numel(&self) -> i64 {
        self.weight_shape().iter().product()
    }

    /// A 1x1 kernel.
    pub fn is_pointwise(&self) -> bool {
        self.kernel_size == [1, 1]
    }

    /// One group per input channel, as many outputs as inputs.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }

    /// What kind of layer this is on an `h x w` input, as profiles name it: `depthwise 3x3`,
    /// `1x1`, `1x1 on 1x1 input` (linear and squeeze-excite layers), `3x3 dense`.
    ///
    /// ```
    /// use basis_core::Conv2dGeometry;
    /// assert_eq!(Conv2dGeometry::new(16, 16, 5).groups(16).kind_name((14, 14)), "depthwise 5x5");
    /// assert_eq!(Conv2dGeometry::new(16, 64, 1).kind_name((1, 1)), "1x1 on 1x1 input");
    /// ```
    pub fn kind_name(&self, input_hw: (i64, i64)) -> String {
        let [kh, kw] = self.kernel_size;
        if self.is_depthwise() {
            format!("depthwise {kh}x{kw}")
        } else if self.is_pointwise() && input_hw == (1, 1) {
            "1x1 on 1x1 input".into()
        } else if self.is_pointwise() {
            "1x1".into()
        } else {
            format!("{kh}x{kw} dense")
        }
    }

    /// Output height and width for an `h x w` input, or an error when the input is smaller
    /// than the (dilated) kernel after padding.
    pub fn output_hw(&self, h: i64, w: i64) -> Result<(i64, i64)> {
        let out = |size: i64, axis: usize| {
            let span = self.dilation[axis] * (self.kernel_size[axis] - 1) + 1;
            let padded = size + 2 * self.padding[axis];
            (padded >= span).then(|| (padded - span) / self.stride[axis] + 1)
        };
        match (out(h, 0), out(w, 1)) {
            (Some(oh), Some(ow)) => Ok((oh, ow)),
            _ => Err(BasisError::Spatial {
                expected: format!(
                    "at least a {}x{} kernel (dilation {:?}) after padding {:?}",
                    self.kernel_size[0], self.kernel_size[1], self.dilation, self.padding
                ),
                found: format!("{h}x{w}"),
            }),
        }
    }
}
