//! RMSNorm as HF DeepseekV2RMSNorm computes it: statistics in f32, the normalised value cast
//! back to the activation dtype BEFORE the weight multiply (spec §6.2, pitfall 26).

use burn::prelude::*;
use burn::tensor::DType;
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
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let variance = x.clone().square().mean_dim(D - 1);
        let normed = x * (variance + self.eps).sqrt().recip();
        normed.cast(dtype) * self.weight.clone().unsqueeze::<D>()
    }
}
