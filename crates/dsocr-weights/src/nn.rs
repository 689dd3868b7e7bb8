//! Layers shared by every block, loaded straight from PyTorch-layout tensors.

use burn::prelude::*;

use crate::{VarBuilder, WeightError};

/// `y = x W^T + b` with `W` kept in PyTorch's `[out, in]` layout (a transposed view is fed to
/// the matmul, so loading never transposes on the host).
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[in, out]` view of the stored `[out, in]` weight.
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// Loads `<prefix>.weight` `[out, in]` and, if `bias`, `<prefix>.bias` `[out]`.
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self, WeightError> {
        let weight = vb.get("weight", [out_dim, in_dim])?.transpose();
        let bias = if bias { Some(vb.get("bias", [out_dim])?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::linear(x, self.weight.clone(), self.bias.clone())
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[1]
    }
}

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

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, self.weight.clone(), Some(self.bias.clone()), self.eps)
    }
}
