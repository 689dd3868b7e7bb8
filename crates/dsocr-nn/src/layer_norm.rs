//! LayerNorm with f32 statistics.

use burn::prelude::*;
use burn::tensor::DType;
use dsocr_weights::{VarBuilder, WeightError};

/// LayerNorm over the last dimension (`weight`, `bias`, eps).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self, WeightError> {
        Ok(Self { weight: vb.get("weight", [dim])?, bias: vb.get("bias", [dim])?, eps })
    }

    /// Statistics and normalisation in f32 whatever the activation dtype (HF under autocast
    /// returns f32 from LayerNorm; spec §6.8), cast back to the input dtype. The GPU backends
    /// reduce half-precision tensors with half-precision accumulators, which cost ~0.1 abs on
    /// the fixture's CLIP output in bf16.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        if dtype == DType::F32 {
            return burn::tensor::module::layer_norm(x, self.weight.clone(), Some(self.bias.clone()), self.eps);
        }
        let (weight, bias) = (self.weight.clone().cast(DType::F32), self.bias.clone().cast(DType::F32));
        burn::tensor::module::layer_norm(x.cast(DType::F32), weight, Some(bias), self.eps).cast(dtype)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use dsocr_weights::{Backend, Precision};

    #[test]
    fn half_precision_layer_norm_matches_f32() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let x = Tensor::<3>::random([2, 3, 64], Distribution::Normal(3.0, 2.0), &device);
        let norm = LayerNorm {
            weight: Tensor::<1>::random([64], Distribution::Normal(1.0, 0.1), &device),
            bias: Tensor::<1>::random([64], Distribution::Normal(0.0, 0.1), &device),
            eps: 1e-6,
        };
        let want = norm.forward(x.clone());
        let half = LayerNorm {
            weight: norm.weight.clone().cast(DType::BF16),
            bias: norm.bias.clone().cast(DType::BF16),
            eps: 1e-6,
        };
        let got = half.forward(x.cast(DType::BF16));
        assert_eq!(got.dtype(), DType::BF16);
        let diff: f32 = (got.cast(DType::F32) - want).abs().max().into_scalar();
        assert!(diff < 3e-2, "{diff}");
    }
}
