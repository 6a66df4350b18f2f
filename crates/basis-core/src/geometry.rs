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

    /// On an `h x w` input smaller than the kernel's reach, the taps that read the input
    /// (the others only ever meet zero padding): the first tap kept on each axis and the
    /// geometry of the cropped kernel, whose padding shrinks by as many taps. It computes the
    /// same outputs as this geometry, with fewer multiply-adds: a 5x5 depthwise kernel on
    /// a 1x1 plane is its centre tap, on a 2x2 plane its 3x3 centre. `None` when every tap
    /// reads the input, with dilation, or when the input is too small for the kernel.
    pub(crate) fn cropped(&self, h: i64, w: i64) -> Option<([i64; 2], Conv2dGeometry)> {
        if self.dilation != [1, 1] {
            return None;
        }
        let (oh, ow) = self.output_hw(h, w).ok()?;
        // Tap `t` reads input `s * o + t - p` for outputs `o` in `0..out`: some of them lie
        // in `0..n` for `t` in `p - s * (out - 1) ..= n - 1 + p`.
        let taps = |n: i64, out: i64, axis: usize| {
            let (k, p, s) = (
                self.kernel_size[axis],
                self.padding[axis],
                self.stride[axis],
            );
            let first = (p - s * (out - 1)).max(0);
            let last = (n - 1 + p).min(k - 1);
            (first, last - first + 1)
        };
        let ((fy, ky), (fx, kx)) = (taps(h, oh, 0), taps(w, ow, 1));
        if [ky, kx] == self.kernel_size || ky < 1 || kx < 1 {
            return None;
        }
        let g = Conv2dGeometry {
            kernel_size: [ky, kx],
            padding: [self.padding[0] - fy, self.padding[1] - fx],
            ..*self
        };
        // Symmetric padding: the cropped kernel must give exactly the same outputs.
        (g.output_hw(h, w).ok()? == (oh, ow)).then_some(([fy, fx], g))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cropped_keeps_the_taps_that_read_the_input() {
        let dw5 = Conv2dGeometry::new(8, 8, 5).padding(2).groups(8);
        // A 1x1 plane: the centre tap alone.
        let (first, g) = dw5.cropped(1, 1).unwrap();
        assert_eq!((first, g.kernel_size, g.padding), ([2, 2], [1, 1], [0, 0]));
        // 2x2: the 3x3 centre, padding 1.
        let (first, g) = dw5.cropped(2, 2).unwrap();
        assert_eq!((first, g.kernel_size, g.padding), ([1, 1], [3, 3], [1, 1]));
        // Stride 2 on 2x2 (one output): rows and columns 2..=3.
        let (first, g) = dw5.stride(2).cropped(2, 2).unwrap();
        assert_eq!((first, g.kernel_size, g.padding), ([2, 2], [2, 2], [0, 0]));
        assert_eq!(g.output_hw(2, 2).unwrap(), (1, 1));
        // Each axis on its own: 1 row, 4 columns.
        let (first, g) = dw5.cropped(1, 4).unwrap();
        assert_eq!((first, g.kernel_size, g.padding), ([2, 0], [1, 5], [0, 2]));
        // Every tap reads a 4x4 plane (and MobileNetV3's 7x7 ones), or dilation: no crop.
        assert!(dw5.cropped(4, 4).is_none());
        assert!(dw5.cropped(7, 7).is_none());
        assert!(dw5.dilation(2).cropped(1, 1).is_none());
        assert!(
            Conv2dGeometry::new(3, 4, 3).cropped(2, 2).is_none(),
            "too small: an error elsewhere"
        );
        // Every cropped geometry gives the same output size.
        for k in [3, 5, 7] {
            for s in [1, 2] {
                for p in 0..k {
                    for n in 1..=9 {
                        let g = Conv2dGeometry::new(4, 4, k).stride(s).padding(p).groups(4);
                        if let Some((_, c)) = g.cropped(n, n) {
                            assert_eq!(c.output_hw(n, n).unwrap(), g.output_hw(n, n).unwrap());
                            assert!(c.padding[0] >= 0 && c.kernel_size[0] <= k);
                        }
                    }
                }
            }
        }
    }
}
