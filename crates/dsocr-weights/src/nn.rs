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

    /// `x: [..., in]` → `[..., out]`, computed as ONE 2-D matmul `[rows, in] @ [in, out]`.
    ///
    /// Not `burn::tensor::module::linear`: for a batch-1 input such as a decode step's
    /// `[1, 1, in]` it keeps the batched form and reshapes the weight to `[1, in, out]`, and a
    /// reshape of our transposed weight view is a full copy (flex `Layout::reshape` refuses
    /// non-contiguous layouts): every call copied the whole weight (the 129280×1280 lm_head:
    /// ~0.9 s per decode step on 2 CPU cores in f32). A 2-D matmul reads the strided view as it is.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (d_in, d_out) = (self.in_dim(), self.out_dim());
        let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
        let y = x.reshape([rows, d_in]).matmul(self.weight.clone());
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
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
