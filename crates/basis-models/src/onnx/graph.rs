//! [`Graph`]: an ONNX graph under construction. Nodes take and give tensor names;
//! initializers come from libtorch tensors (stored fp32, little-endian raw data); the
//! batch dimension of inputs and outputs is the symbol `batch`.

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// An attribute value of a node.
pub(crate) enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Graph(Box<GraphProto>),
}

/// Nodes, initializers and the names they use, in the order they were added.
#[derive(Default)]
pub(crate) struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    counter: usize,
    /// Before every name this graph makes: a subgraph's names must differ from the
    /// names of the graph around it.
    prefix: String,
}

/// A float tensor's type: fixed dimensions, the first one the symbol `batch` when
/// `batched`.
fn value_info(name: &str, dims: &[i64], batched: bool) -> ValueInfoProto {
    let dim = |i: usize, d: i64| tensor_shape_proto::Dimension {
        value: Some(if i == 0 && batched {
            tensor_shape_proto::dimension::Value::DimParam("batch".into())
        } else {
            tensor_shape_proto::dimension::Value::DimValue(d)
        }),
        denotation: None,
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: dims.iter().enumerate().map(|(i, &d)| dim(i, d)).collect(),
                }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

impl Graph {
    /// A subgraph (a loop body) whose names all start with `prefix`.
    pub(crate) fn nested(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// A graph input `[batch, dims[1..]]` (fp32).
    pub(crate) fn input(&mut self, name: &str, dims: &[i64]) -> String {
        self.inputs.push(value_info(name, dims, true));
        name.into()
    }

    /// A graph input of fixed `dims` (a loop body's slice).
    pub(crate) fn fixed_input(&mut self, name: &str, dims: &[i64]) -> String {
        self.inputs.push(value_info(name, dims, false));
        name.into()
    }

    /// Mark `tensor` as the graph output `name` `[batch, dims[1..]]` (fp32).
    pub(crate) fn output(&mut self, tensor: &str, name: &str, dims: &[i64]) {
        self.node("Identity", name, &[tensor], &[name], Vec::new());
        self.outputs.push(value_info(name, dims, true));
    }

    /// Mark `tensor` as the output `name` of fixed `dims` (a loop body's result).
    pub(crate) fn fixed_output(&mut self, tensor: &str, name: &str, dims: &[i64]) {
        self.node("Identity", name, &[tensor], &[name], Vec::new());
        self.outputs.push(value_info(name, dims, false));
    }

    /// A fresh tensor name under `scope`.
    fn fresh(&mut self, scope: &str) -> String {
        self.counter += 1;
        format!("{}{scope}/{}", self.prefix, self.counter)
    }

    /// A constant fp32 tensor from libtorch (any float kind, any device).
    pub(crate) fn weight(&mut self, scope: &str, tensor: &Tensor) -> Result<String> {
        let t = tensor
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let values = Vec::<f32>::try_from(t.f_flatten(0, -1)?)?;
        let name = self.fresh(scope);
        self.initializers.push(TensorProto {
            dims: t.size(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.clone()),
            raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ..Default::default()
        });
        Ok(name)
    }

    /// A constant int64 vector (shapes, axes, indices).
    pub(crate) fn ints(&mut self, scope: &str, values: &[i64]) -> String {
        let name = self.fresh(scope);
        self.initializers.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.clone()),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    /// A constant int64 scalar (a `Gather` index).
    pub(crate) fn int_scalar(&mut self, scope: &str, value: i64) -> String {
        let name = self.fresh(scope);
        self.initializers.push(TensorProto {
            dims: Vec::new(),
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.clone()),
            int64_data: vec![value],
            ..Default::default()
        });
        name
    }

    /// A constant fp32 scalar.
    pub(crate) fn float_scalar(&mut self, scope: &str, value: f32) -> String {
        let name = self.fresh(scope);
        self.initializers.push(TensorProto {
            dims: Vec::new(),
            data_type: Some(DataType::Float as i32),
            name: Some(name.clone()),
            float_data: vec![value],
            ..Default::default()
        });
        name
    }

    /// Add a node `op(inputs) -> outputs`.
    fn node(
        &mut self,
        op: &str,
        scope: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<(&str, Attr)>,
    ) {
        let attribute = attributes
            .into_iter()
            .map(|(name, value)| {
                let mut a = AttributeProto {
                    name: Some(name.into()),
                    ..Default::default()
                };
                match value {
                    Attr::Int(i) => {
                        a.r#type = Some(AttributeType::Int as i32);
                        a.i = Some(i);
                    }
                    Attr::Ints(v) => {
                        a.r#type = Some(AttributeType::Ints as i32);
                        a.ints = v;
                    }
                    Attr::Float(f) => {
                        a.r#type = Some(AttributeType::Float as i32);
                        a.f = Some(f);
                    }
                    Attr::Graph(g) => {
                        a.r#type = Some(AttributeType::Graph as i32);
                        a.g = Some(*g);
                    }
                }
                a
            })
            .collect();
        let name = format!("{}{scope}/{op}_{}", self.prefix, self.nodes.len());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: Some(name),
            op_type: Some(op.into()),
            attribute,
            ..Default::default()
        });
    }

    /// Add a node with one output and return its name.
    pub(crate) fn op(
        &mut self,
        op: &str,
        scope: &str,
        inputs: &[&str],
        attributes: Vec<(&str, Attr)>,
    ) -> String {
        let out = self.fresh(scope);
        self.node(op, scope, inputs, &[&out], attributes);
        out
    }

    /// The finished graph.
    pub(crate) fn finish(self, name: &str) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: Some(name.into()),
            initializer: self.initializers,
            input: self.inputs,
            output: self.outputs,
            ..Default::default()
        }
    }
}
