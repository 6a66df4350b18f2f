//! [`Emitter`]: one network's layers into an ONNX graph, walking the same traversal as
//! the profile and `specialize`, for a whole batch or one image of a scan.

use super::graph::{Attr, Graph};
use crate::arch::Act;
use crate::error::{ModelError, Result};
use crate::layers::ConvBnAct;
use crate::mobilenet::MobileNet;
use crate::walk::{LayerKind, Step, Unit};
use std::collections::BTreeMap;
use tch::Tensor;

/// Emits one network's layers into a graph.
pub(super) struct Emitter<'g> {
    /// Where the layers go: the graph, or the scan's body (one image).
    pub(super) g: &'g mut Graph,
    /// Scanning: the graph around the scan, where each image's kernels are synthesized
    /// for the whole batch (one `MatMul` per layer reads the bank once) and handed to the
    /// body as scanned inputs.
    pub(super) outer: Option<&'g mut Graph>,
    /// Scanning: the batch tensors the body reads one image of, in its input order.
    pub(super) scan_inputs: Vec<String>,
    /// The coefficients `[batch, vectors, N]` (in the graph around the scan when
    /// scanning).
    pub(super) coefficients: Option<String>,
    /// Coefficient vector `v` as `[batch, N]`, gathered once.
    pub(super) vectors: BTreeMap<usize, String>,
}

impl<'g> Emitter<'g> {
    /// An emitter of the whole batch into `g`.
    pub(super) fn batched(g: &'g mut Graph, coefficients: Option<String>) -> Self {
        Self {
            g,
            outer: None,
            scan_inputs: Vec::new(),
            coefficients,
            vectors: BTreeMap::new(),
        }
    }

    /// Coefficient vector `v` of the batch, `[batch, N]`, in the graph holding the
    /// coefficients.
    fn alpha(&mut self, scope: &str, v: usize) -> Result<String> {
        if let Some(a) = self.vectors.get(&v) {
            return Ok(a.clone());
        }
        let all = self.coefficients.clone().ok_or_else(|| {
            ModelError::Export(format!(
                "{scope} is a basis layer, but the graph has no coefficients input"
            ))
        })?;
        let g = self.outer.as_deref_mut().unwrap_or(&mut *self.g);
        let index = g.int_scalar(scope, v as i64);
        let a = g.op(
            "Gather",
            scope,
            &[&all, &index],
            vec![("axis", Attr::Int(1))],
        );
        self.vectors.insert(v, a.clone());
        Ok(a)
    }

    /// Scanning: each image's `alpha @ bank` (`bank` `[N, K]`) for the whole batch around
    /// the scan, this image's row inside it, reshaped to `dims`.
    fn per_image(&mut self, scope: &str, v: usize, bank: &Tensor, dims: &[i64]) -> Result<String> {
        let alpha = self.alpha(scope, v)?;
        let outer = self
            .outer
            .as_deref_mut()
            .ok_or_else(|| ModelError::Export(format!("{scope}: not in a scan")))?;
        let b = outer.weight(scope, bank)?;
        let all = outer.op("MatMul", scope, &[&alpha, &b], Vec::new());
        self.scan_inputs.push(all);
        let name = format!("{scope}/image_{}", self.scan_inputs.len());
        let row = self.g.fixed_input(&name, &[bank.size()[1]]);
        let shape = self.g.ints(scope, dims);
        Ok(self.g.op("Reshape", scope, &[&row, &shape], Vec::new()))
    }

    /// `x * alpha`, summed over the bases: `y` is `[batch, ..., N, ...]` with the bases on
    /// axis `axis`, `shape` reshapes `alpha` `[batch, N]` to broadcast there.
    fn mix(&mut self, scope: &str, y: &str, alpha: &str, shape: &[i64], axis: i64) -> String {
        let shape = self.g.ints(scope, shape);
        let a = self.g.op("Reshape", scope, &[alpha, &shape], Vec::new());
        let weighted = self.g.op("Mul", scope, &[y, &a], Vec::new());
        let axes = self.g.ints(scope, &[axis]);
        self.g.op(
            "ReduceSum",
            scope,
            &[&weighted, &axes],
            vec![("keepdims", Attr::Int(0))],
        )
    }

    /// A convolution with its batch norm folded in (the scale per output channel into the
    /// kernels, the shift as the bias), on `x` of side `hw`; activation not included.
    /// Returns the output and its side.
    fn conv(
        &mut self,
        scope: &str,
        x: &str,
        hw: (i64, i64),
        layer: &ConvBnAct,
    ) -> Result<(String, (i64, i64))> {
        let geometry = layer.conv.conv.geometry();
        let bank = layer.conv.conv.bank();
        let vector = layer.conv.vector;
        let (scale, shift) = layer.bn.inference_affine()?;
        let (oh, ow) = geometry.output_hw(hw.0, hw.1)?;
        let (n, cout) = (bank.num_bases(), geometry.out_channels);
        let kernels = bank
            .weight_bank()
            .f_mul(&scale.f_reshape([1, cout, 1, 1, 1])?)?;
        let attrs = || {
            vec![
                ("kernel_shape", Attr::Ints(geometry.kernel_size.to_vec())),
                ("strides", Attr::Ints(geometry.stride.to_vec())),
                ("dilations", Attr::Ints(geometry.dilation.to_vec())),
                ("group", Attr::Int(geometry.groups)),
                (
                    "pads",
                    Attr::Ints([geometry.padding, geometry.padding].concat()),
                ),
            ]
        };
        let pointwise = geometry.kernel_size == [1, 1]
            && geometry.stride == [1, 1]
            && geometry.padding == [0, 0]
            && geometry.groups == 1;
        let y = match vector {
            None => {
                let w = self.g.weight(scope, &kernels.f_select(0, 0)?)?;
                let b = self.g.weight(scope, &shift)?;
                self.g.op("Conv", scope, &[x, &w, &b], attrs())
            }
            Some(v) if self.outer.is_some() => {
                // This image's kernel alpha @ bank, then a plain convolution.
                let shape = geometry.weight_shape();
                let w = self.per_image(scope, v, &kernels.f_reshape([n, -1])?, &shape)?;
                let b = self.g.weight(scope, &shift)?;
                self.g.op("Conv", scope, &[x, &w, &b], attrs())
            }
            Some(v) if pointwise => {
                // Each sample's kernel [cout, cin] = alpha @ bank, applied by MatMul.
                let alpha = self.alpha(scope, v)?;
                let cin = geometry.in_channels;
                let bank = self.g.weight(scope, &kernels.f_reshape([n, cout * cin])?)?;
                let flat = self.g.op("MatMul", scope, &[&alpha, &bank], Vec::new());
                let shape = self.g.ints(scope, &[-1, cout, cin]);
                let w = self.g.op("Reshape", scope, &[&flat, &shape], Vec::new());
                let shape = self.g.ints(scope, &[0, cin, hw.0 * hw.1]);
                let cols = self.g.op("Reshape", scope, &[x, &shape], Vec::new());
                let y = self.g.op("MatMul", scope, &[&w, &cols], Vec::new());
                let shape = self.g.ints(scope, &[0, cout, oh, ow]);
                let y = self.g.op("Reshape", scope, &[&y, &shape], Vec::new());
                let shift = self.g.weight(scope, &shift.f_reshape([1, cout, 1, 1])?)?;
                self.g.op("Add", scope, &[&y, &shift], Vec::new())
            }
            Some(v) => {
                // The N kernels of every output channel side by side (channel-major, so a
                // grouped convolution keeps each channel's kernels in its group), their
                // outputs mixed by each sample's coefficients.
                let alpha = self.alpha(scope, v)?;
                let [_, cin_g, kh, kw] = geometry.weight_shape();
                let side_by_side =
                    kernels
                        .f_transpose(0, 1)?
                        .f_reshape([cout * n, cin_g, kh, kw])?;
                let w = self.g.weight(scope, &side_by_side)?;
                let y = self.g.op("Conv", scope, &[x, &w], attrs());
                let shape = self.g.ints(scope, &[0, cout, n, oh, ow]);
                let y = self.g.op("Reshape", scope, &[&y, &shape], Vec::new());
                let y = self.mix(scope, &y, &alpha, &[0, 1, n, 1, 1], 2);
                let shift = self.g.weight(scope, &shift.f_reshape([1, cout, 1, 1])?)?;
                self.g.op("Add", scope, &[&y, &shift], Vec::new())
            }
        };
        Ok((y, (oh, ow)))
    }

    /// A linear layer on `[batch, in]`: `kernels` `[N, out, in]`, `biases` `[N, out]`.
    pub(super) fn linear(
        &mut self,
        scope: &str,
        x: &str,
        kernels: &Tensor,
        biases: &Tensor,
        vector: Option<usize>,
    ) -> Result<String> {
        let size = kernels.size();
        let (n, out) = (size[0], size[1]);
        Ok(match vector {
            None => {
                let w = self.g.weight(scope, &kernels.f_select(0, 0)?)?;
                let b = self.g.weight(scope, &biases.f_select(0, 0)?)?;
                self.g
                    .op("Gemm", scope, &[x, &w, &b], vec![("transB", Attr::Int(1))])
            }
            Some(v) if self.outer.is_some() => {
                // This image's weights and bias, then a plain linear layer.
                let w = self.per_image(scope, v, &kernels.f_reshape([n, -1])?, &[out, size[2]])?;
                let bias = self.per_image(scope, v, biases, &[1, out])?;
                self.g.op(
                    "Gemm",
                    scope,
                    &[x, &w, &bias],
                    vec![("transB", Attr::Int(1))],
                )
            }
            Some(v) => {
                let alpha = self.alpha(scope, v)?;
                // [in, N * out]: every basis's outputs at once, then mixed.
                let w = self.g.weight(
                    scope,
                    &kernels
                        .f_permute([2, 0, 1])?
                        .f_reshape([size[2], n * out])?,
                )?;
                let y = self.g.op("MatMul", scope, &[x, &w], Vec::new());
                let shape = self.g.ints(scope, &[0, n, out]);
                let y = self.g.op("Reshape", scope, &[&y, &shape], Vec::new());
                let y = self.mix(scope, &y, &alpha, &[0, n, 1], 1);
                let b = self.g.weight(scope, biases)?;
                let bias = self.g.op("MatMul", scope, &[&alpha, &b], Vec::new());
                self.g.op("Add", scope, &[&y, &bias], Vec::new())
            }
        })
    }

    fn activate(&mut self, scope: &str, x: String, act: Option<Act>) -> String {
        match act {
            None => x,
            Some(Act::Relu) => self.g.op("Relu", scope, &[&x], Vec::new()),
            Some(Act::Relu6) => {
                let (lo, hi) = (
                    self.g.float_scalar(scope, 0.0),
                    self.g.float_scalar(scope, 6.0),
                );
                self.g.op("Clip", scope, &[&x, &lo, &hi], Vec::new())
            }
            Some(Act::Hardswish) => self.g.op("HardSwish", scope, &[&x], Vec::new()),
        }
    }

    /// The network on `x` (`[batch, C, side, side]`): its pooled features and logits.
    pub(super) fn network(
        &mut self,
        net: &MobileNet,
        x: &str,
        side: i64,
    ) -> Result<(String, String)> {
        net.check_resolution(side)?;
        let steps: Vec<Step<'_>> = net.walk();
        let last_classifier = steps.iter().rposition(|s| s.kind == LayerKind::Classifier);
        let (mut x, mut hw) = (x.to_string(), (side, side));
        let (mut block_input, mut se_input, mut pooled) = (x.clone(), x.clone(), None);
        let mut previous = None;
        for (i, step) in steps.iter().enumerate() {
            let scope = step.role.as_str();
            let w = step.weighted();
            if step.kind == LayerKind::Expand
                || (step.kind == LayerKind::Depthwise && previous != Some(LayerKind::Expand))
            {
                block_input = x.clone();
            }
            match step.unit {
                Unit::ConvBnAct(layer) => {
                    let (y, out) = self.conv(scope, &x, hw, layer)?;
                    x = self.activate(scope, y, layer.act);
                    hw = out;
                    if step.adds_input {
                        x = self.g.op("Add", scope, &[&x, &block_input], Vec::new());
                    }
                }
                Unit::SqueezeExcite(conv) => {
                    let g = conv.conv.geometry();
                    let kernels = w.bank.weight_bank().f_reshape([
                        w.bank.num_bases(),
                        g.out_channels,
                        g.in_channels,
                    ])?;
                    let biases = w.bank.bias_bank().ok_or_else(|| {
                        ModelError::Export(format!("{scope}: a squeeze-excite layer without bias"))
                    })?;
                    if step.role.ends_with("fc1") {
                        se_input = x.clone();
                        let s = self.g.op("GlobalAveragePool", scope, &[&x], Vec::new());
                        let s = self.g.op("Flatten", scope, &[&s], Vec::new());
                        let s = self.linear(scope, &s, &kernels, &biases, w.vector)?;
                        x = self.g.op("Relu", scope, &[&s], Vec::new());
                    } else {
                        let s = self.linear(scope, &x, &kernels, &biases, w.vector)?;
                        let s = self.g.op(
                            "HardSigmoid",
                            scope,
                            &[&s],
                            vec![
                                ("alpha", Attr::Float(1.0 / 6.0)),
                                ("beta", Attr::Float(0.5)),
                            ],
                        );
                        let shape = self.g.ints(scope, &[0, g.out_channels, 1, 1]);
                        let s = self.g.op("Reshape", scope, &[&s, &shape], Vec::new());
                        x = self.g.op("Mul", scope, &[&se_input, &s], Vec::new());
                    }
                }
                Unit::Linear(layer) => {
                    if pooled.is_none() {
                        let p = self.g.op("GlobalAveragePool", scope, &[&x], Vec::new());
                        x = self.g.op("Flatten", scope, &[&p], Vec::new());
                        pooled = Some(x.clone());
                    }
                    let bank = layer.linear.bank();
                    let biases = bank.bias_bank().ok_or_else(|| {
                        ModelError::Export(format!("{scope}: a classifier layer without bias"))
                    })?;
                    x = self.linear(scope, &x, &bank.weight_bank(), &biases, w.vector)?;
                    if Some(i) != last_classifier {
                        x = self.g.op("HardSwish", scope, &[&x], Vec::new());
                    }
                }
            }
            previous = Some(step.kind);
        }
        let pooled =
            pooled.ok_or_else(|| ModelError::Export("a network without classifier".into()))?;
        Ok((pooled, x))
    }
}
