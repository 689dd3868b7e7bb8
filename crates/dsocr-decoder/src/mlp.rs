//! SwiGLU MLP: `down(silu(gate(x)) ⊙ up(x))` (dense layers and the shared experts, spec §6.4).

use burn::prelude::*;
use burn::tensor::activation::silu;
use dsocr_nn::{Linear, WeightFormat};
use dsocr_weights::VarBuilder;

use crate::DecoderError;

#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// Loads `<prefix>.{gate,up}_proj.weight` `[intermediate, hidden]` and
    /// `<prefix>.down_proj.weight` `[hidden, intermediate]`, kept as `format` says.
    pub fn load(
        vb: &VarBuilder,
        hidden: usize,
        intermediate: usize,
        format: WeightFormat,
    ) -> Result<Self, DecoderError> {
        Ok(Self {
            gate_proj: Linear::load_as(&vb.pp("gate_proj"), hidden, intermediate, false, format)?,
            up_proj: Linear::load_as(&vb.pp("up_proj"), hidden, intermediate, false, format)?,
            down_proj: Linear::load_as(&vb.pp("down_proj"), intermediate, hidden, false, format)?,
        })
    }

    /// `[gate_proj, up_proj, down_proj]` weights in PyTorch `[out, in]` layout (views of
    /// tensor weights, dequantized copies of host weights: [`Linear::rows`]).
    pub fn weights(&self) -> [Tensor<2>; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj].map(Linear::rows)
    }

    /// The three projections.
    pub fn projections(&self) -> [&Linear; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let [gate, up] = Linear::forward_all([&self.gate_proj, &self.up_proj], x);
        self.down_proj.forward(silu(gate) * up)
    }
}
