//! ONNX export with a dynamic batch: [`MobileNet::to_onnx`] (a static network, or a
//! specialist taking its coefficients as an input), [`Lightweight::to_onnx`] (logits and
//! coefficients) and [`BasisNet::to_onnx`] (both graphs).
//!
//! The exporter walks the network with the same traversal as the profile and
//! `specialize`. Batch norm is folded into the convolutions (evaluation). CondConv-style
//! exports freeze the batch into a grouped convolution's group count (onnx/onnx#3843); a
//! specialist here keeps the batch dynamic in one of two forms ([`SpecialistForm`]):
//!
//! | layer | [`SpecialistForm::Scan`] (default) | [`SpecialistForm::Batched`] |
//! |---|---|---|
//! | the whole specialist | a `Scan` over the batch: one image at a time | the whole batch at once |
//! | static convolution, linear | `Conv`, `Gemm` | `Conv`, `Gemm` |
//! | basis convolution, any kernel | the image's kernel `alpha @ bank` (`MatMul`), then `Conv` | 1x1: each image's kernel by `MatMul`, applied by a batched `MatMul`; k x k and depthwise: one `Conv` with the `N` kernels of every channel side by side, its outputs mixed by the coefficients (`Mul`, `ReduceSum`) |
//! | basis linear (classifier, squeeze-excite) | the image's weights by `MatMul`, then `Gemm` | the `N` outputs mixed by the coefficients |
//!
//! The scan is the paper's computation (synthesize, then run a static network) and the
//! faster in ONNX Runtime; the batched form needs no control flow, for runtimes without
//! `Scan`, at `N` times the cost of the k x k layers.
//!
//! Graphs are fp32, opset [`MIN_OPSET`] or newer (`HardSwish` needs 14, `ReduceSum` with an
//! axes input 13), at a fixed resolution with the batch dimension named `batch`.

mod emit;
mod graph;
pub mod proto;

use crate::basisnet::BasisNet;
use crate::error::{ModelError, Result};
use crate::lightweight::Lightweight;
use crate::mobilenet::MobileNet;
use emit::Emitter;
use graph::{Attr, Graph};
use prost::Message;
use proto::{ModelProto, OperatorSetIdProto, StringStringEntryProto};
use std::collections::BTreeMap;

/// The oldest opset the graphs use operators of.
pub const MIN_OPSET: i64 = 17;
/// The newest opset offered (ONNX 1.18's; ONNX Runtime 1.22 and newer run it).
pub const MAX_OPSET: i64 = 23;

/// Check an opset asked for.
fn check_opset(opset: i64) -> Result<()> {
    if (MIN_OPSET..=MAX_OPSET).contains(&opset) {
        Ok(())
    } else {
        Err(ModelError::Export(format!(
            "the graphs are written in opset {MIN_OPSET} to {MAX_OPSET} (HardSwish and ReduceSum with an axes input need {MIN_OPSET}), found opset {opset}"
        )))
    }
}

/// A serialized `ModelProto` around `graph` with `metadata`.
fn model_bytes(
    graph: Graph,
    name: &str,
    opset: i64,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    ModelProto {
        // IR version 8 came with opset 17 and is read by every runtime that runs it.
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("basisnet-rs".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(graph.finish(name)),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto {
                key: Some(k.clone()),
                value: Some(v.clone()),
            })
            .collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// How a specialist's graph keeps the batch dynamic (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpecialistForm {
    /// A `Scan` over the batch: each image's kernels synthesized, then applied by plain
    /// `Conv` and `Gemm` (the paper's computation; the faster in ONNX Runtime).
    #[default]
    Scan,
    /// Batch-independent operators over the whole batch, no control flow (for runtimes
    /// without `Scan`): `N` times the cost in the k x k and depthwise layers.
    Batched,
}

impl MobileNet {
    /// This network as an ONNX model (serialized `ModelProto`, fp32) at `resolution`:
    /// input `images` `[batch, C, resolution, resolution]`, for a specialist also
    /// `coefficients` `[batch, vectors, N]` (the lightweight model's output), output
    /// `logits` `[batch, classes]`.
    ///
    /// ```
    /// use basis_models::{Arch, BasisSpec, MobileNet, MobileNetConfig};
    /// let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    /// let config = MobileNetConfig::new(Arch::MobilenetV3Small).width(0.5).in_channels(1).classes(10);
    /// let net = MobileNet::new(&vs.root(), config, BasisSpec::new(4))?;
    /// let bytes = net.to_onnx(28, basis_models::onnx::MIN_OPSET)?;
    /// assert!(bytes.len() > 4 * 100_000); // the weights, fp32
    /// assert!(net.to_onnx(28, 13).unwrap_err().to_string().contains("found opset 13"));
    /// # Ok::<(), basis_models::ModelError>(())
    /// ```
    pub fn to_onnx(&self, resolution: i64, opset: i64) -> Result<Vec<u8>> {
        self.to_onnx_with(
            resolution,
            opset,
            SpecialistForm::default(),
            &BTreeMap::new(),
        )
    }

    /// [`MobileNet::to_onnx`] in `form` (a specialist's; a static network has one form),
    /// with `metadata` in the model's `metadata_props`.
    pub fn to_onnx_with(
        &self,
        resolution: i64,
        opset: i64,
        form: SpecialistForm,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>> {
        check_opset(opset)?;
        let c = self.config();
        let (v, n) = (self.num_coefficient_vectors() as i64, self.spec().num_bases);
        let mut g = Graph::default();
        let images = g.input("images", &[1, c.in_channels, resolution, resolution]);
        let coefficients = (v > 0).then(|| g.input("coefficients", &[1, v, n]));
        let logits = tch::no_grad(|| -> Result<String> {
            match (&coefficients, form) {
                (Some(all), SpecialistForm::Scan) => {
                    // The body runs one image [C, H, W] with its kernels, which the graph
                    // around it synthesizes for the whole batch.
                    let mut body = Graph::nested("image:");
                    let image = body.fixed_input("image", &[c.in_channels, resolution, resolution]);
                    let axes = body.ints("image", &[0]);
                    let x = body.op("Unsqueeze", "image", &[&image, &axes], Vec::new());
                    let mut e = Emitter {
                        g: &mut body,
                        outer: Some(&mut g),
                        scan_inputs: Vec::new(),
                        coefficients: Some(all.clone()),
                        vectors: BTreeMap::new(),
                    };
                    let (_, logits) = e.network(self, &x, resolution)?;
                    let scanned = std::mem::take(&mut e.scan_inputs);
                    let logits = body.op("Squeeze", "image", &[&logits, &axes], Vec::new());
                    body.fixed_output(&logits, "image_logits", &[c.num_classes]);
                    let mut inputs = vec![images.as_str()];
                    inputs.extend(scanned.iter().map(String::as_str));
                    Ok(g.op(
                        "Scan",
                        "specialist",
                        &inputs,
                        vec![
                            (
                                "body",
                                Attr::Graph(Box::new(body.finish("specialist_per_image"))),
                            ),
                            ("num_scan_inputs", Attr::Int(inputs.len() as i64)),
                        ],
                    ))
                }
                _ => Emitter::batched(&mut g, coefficients.clone())
                    .network(self, &images, resolution)
                    .map(|(_, logits)| logits),
            }
        })?;
        g.output(&logits, "logits", &[1, c.num_classes]);
        let name = if self.spec().is_static() {
            "static"
        } else {
            "specialist"
        };
        Ok(model_bytes(g, name, opset, metadata))
    }
}

impl Lightweight {
    /// The lightweight model as an ONNX model at `resolution` (its own, low resolution):
    /// input `images` `[batch, C, resolution, resolution]` (the caller resizes, as
    /// [`BasisNet::lightweight_input`] does), outputs `logits` `[batch, classes]` and
    /// `coefficients` `[batch, vectors, N]` (softmax rows).
    pub fn to_onnx(
        &self,
        resolution: i64,
        opset: i64,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Vec<u8>> {
        check_opset(opset)?;
        let c = self.backbone().config();
        let (v, n) = (self.vectors as i64, self.num_bases);
        let mut g = Graph::default();
        let images = g.input("images", &[1, c.in_channels, resolution, resolution]);
        let (logits, coefficients) = tch::no_grad(|| -> Result<(String, String)> {
            let mut e = Emitter::batched(&mut g, None);
            let (pooled, logits) = e.network(self.backbone(), &images, resolution)?;
            let scope = "coefficient_head";
            let kernels = self.head.bank().weight_bank();
            let biases = self
                .head
                .bank()
                .bias_bank()
                .ok_or_else(|| ModelError::Export("the coefficient head has no bias".into()))?;
            let z = e.linear(scope, &pooled, &kernels, &biases, None)?;
            let shape = e.g.ints(scope, &[0, v, n]);
            let z = e.g.op("Reshape", scope, &[&z, &shape], Vec::new());
            let t = e.g.float_scalar(scope, self.temperature() as f32);
            let z = e.g.op("Div", scope, &[&z, &t], Vec::new());
            let alpha =
                e.g.op("Softmax", scope, &[&z], vec![("axis", Attr::Int(-1))]);
            Ok((logits, alpha))
        })?;
        g.output(&logits, "logits", &[1, c.num_classes]);
        g.output(&coefficients, "coefficients", &[1, v, n]);
        Ok(model_bytes(g, "lightweight", opset, metadata))
    }
}

/// The two graphs of a BasisNet.
#[derive(Debug, Clone)]
pub struct BasisNetGraphs {
    /// `lightweight.onnx`: low-resolution `images` -> `logits`, `coefficients`.
    pub lightweight: Vec<u8>,
    /// `specialist.onnx`: full-resolution `images`, `coefficients` -> `logits`.
    pub specialist: Vec<u8>,
}

impl BasisNet {
    /// Both stages as ONNX models at their resolutions, the specialist in `form`, each
    /// with `metadata` (the resolutions are added as `lightweight_resolution` and
    /// `resolution`).
    pub fn to_onnx(
        &self,
        opset: i64,
        form: SpecialistForm,
        metadata: &BTreeMap<String, String>,
    ) -> Result<BasisNetGraphs> {
        let config = self.config();
        let mut metadata = metadata.clone();
        metadata.insert(
            "lightweight_resolution".into(),
            config.lightweight_resolution.to_string(),
        );
        metadata.insert("resolution".into(), config.resolution.to_string());
        Ok(BasisNetGraphs {
            lightweight: self.lightweight().to_onnx(
                config.lightweight_resolution,
                opset,
                &metadata,
            )?,
            specialist: self.specialist().to_onnx_with(
                config.resolution,
                opset,
                form,
                &metadata,
            )?,
        })
    }
}
