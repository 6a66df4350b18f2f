//! Per-layer cost tables: what [`crate::MobileNet::profile`] and the BasisNet profile return.

use crate::error::Result;
use crate::mobilenet::MobileNet;
use crate::walk::Unit;
use basis_core::{Conv2dGeometry, LayerCost};
use serde::Serialize;

/// One layer of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileRow {
    /// Module name (`features.3.depthwise`, `classifier.0`...).
    pub name: String,
    /// The row's trainable variables as the variable store and safetensors files name
    /// them (`features.3.block.1.0.weight`, ...), so a row can be matched to its weights.
    pub variables: Vec<String>,
    /// `conv 3x3/2`, `dw 5x5`, `se 1x1`, `linear`...
    pub kind: String,
    /// Output shape of one sample: channels, height, width.
    pub output: [i64; 3],
    /// Trainable parameters (all bases; batch norm included).
    pub params: i64,
    /// Multiply-adds for one sample.
    pub madds: i64,
    /// Multiply-adds of synthesizing the layer's weights for one sample (`N * P_basis`).
    pub synthesis_madds: i64,
}

impl ProfileRow {
    pub(crate) fn new(name: String, kind: String, output: [i64; 3], cost: LayerCost) -> Self {
        Self {
            name,
            variables: Vec::new(),
            kind,
            output,
            params: cost.params,
            madds: cost.madds,
            synthesis_madds: cost.synthesis_madds,
        }
    }
}

impl ProfileRow {
    pub(crate) fn with_variables(mut self, variables: Vec<String>) -> Self {
        self.variables = variables;
        self
    }
}

/// Totals of a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Trainable parameters.
    pub params: i64,
    /// Multiply-adds for one sample (synthesis not included).
    pub madds: i64,
    /// Synthesis multiply-adds for one sample.
    pub synthesis_madds: i64,
}

/// A per-layer table and its totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Every convolution and linear layer, in order.
    pub layers: Vec<ProfileRow>,
    /// Their sums.
    pub total: Totals,
}

impl Profile {
    pub(crate) fn new(layers: Vec<ProfileRow>) -> Self {
        let total = Totals {
            params: layers.iter().map(|r| r.params).sum(),
            madds: layers.iter().map(|r| r.madds).sum(),
            synthesis_madds: layers.iter().map(|r| r.synthesis_madds).sum(),
        };
        Self { layers, total }
    }

    /// A plain-text table, one layer a line, totals last.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "{:<28} {:<10} {:>16} {:>12} {:>14} {:>14}\n",
            "layer", "kind", "output", "params", "madds", "synthesis"
        );
        for r in &self.layers {
            let shape = format!("{}x{}x{}", r.output[0], r.output[1], r.output[2]);
            out += &format!(
                "{:<28} {:<10} {:>16} {:>12} {:>14} {:>14}\n",
                r.name, r.kind, shape, r.params, r.madds, r.synthesis_madds
            );
        }
        out += &format!(
            "{:<28} {:<10} {:>16} {:>12} {:>14} {:>14}\n",
            "total", "", "", self.total.params, self.total.madds, self.total.synthesis_madds
        );
        out
    }
}

impl MobileNet {
    /// The per-layer cost table for `resolution x resolution` inputs.
    pub fn profile(&self, resolution: i64) -> Result<Profile> {
        self.check_resolution(resolution)?;
        let mut rows = Vec::new();
        let mut hw = (resolution, resolution);
        for step in self.walk() {
            let variables = step.variables();
            let row = match step.unit {
                Unit::ConvBnAct(layer) => {
                    let g = *layer.conv.conv.geometry();
                    let cost = layer.cost(hw)?;
                    hw = g.output_hw(hw.0, hw.1)?;
                    ProfileRow::new(step.role, conv_kind(&g), [g.out_channels, hw.0, hw.1], cost)
                }
                Unit::SqueezeExcite(conv) => {
                    let out = conv.conv.geometry().out_channels;
                    ProfileRow::new(step.role, "se 1x1".into(), [out, 1, 1], conv.cost((1, 1))?)
                }
                Unit::Linear(linear) => {
                    let out = linear.linear.out_features();
                    ProfileRow::new(step.role, "linear".into(), [out, 1, 1], linear.cost())
                }
            };
            rows.push(row.with_variables(variables));
        }
        Ok(Profile::new(rows))
    }
}

/// A short description of a convolution for the profile: `conv 3x3/2`, `dw 5x5`...
fn conv_kind(g: &Conv2dGeometry) -> String {
    let [kh, kw] = g.kernel_size;
    let prefix = if g.is_depthwise() { "dw" } else { "conv" };
    let stride = if g.stride[0] > 1 {
        format!("/{}", g.stride[0])
    } else {
        String::new()
    };
    format!("{prefix} {kh}x{kw}{stride}")
}
