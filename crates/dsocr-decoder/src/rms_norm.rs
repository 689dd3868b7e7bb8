//! RMSNorm as HF DeepseekV2RMSNorm computes it: statistics in f32, the normalised value cast
//! back to the activation dtype BEFORE the weight multiply (spec §6.2, pitfall 26). The op is
//! [`dsocr_nn::rms_norm`] (one kernel on GPUs).

use burn::prelude::*;
use dsocr_weights::VarBuilder;

use crate::DecoderError;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor<1>,
    eps: f64,
}

impl RmsNorm {
    /// Loads `<prefix>.weight` `[dim]`.
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self, DecoderError> {
        Ok(Self { weight: vb.get("weight", [dim])?, eps })
    }

    /// `weight * to_dtype(x_f32 / sqrt(mean(x_f32²) + eps))` over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        dsocr_nn::rms_norm(x, &self.weight, self.eps)
    }

    /// The residual add before the norm, fused: `(h, forward(h))` with `h = x + delta`.
    pub fn forward_residual<const D: usize>(&self, x: Tensor<D>, delta: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        dsocr_nn::add_rms_norm(x, delta, &self.weight, self.eps)
    }
}
