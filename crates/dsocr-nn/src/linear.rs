//! `Linear` in PyTorch's layout.

use burn::prelude::*;

use dsocr_weights::backend::is_host_device;
use dsocr_weights::{VarBuilder, WeightError};

use crate::matvec::{matvec, MATVEC_MAX_ROWS};

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
    ///
    /// On GPU backends a few rows (a decode step, up to [`MATVEC_MAX_ROWS`]) go through
    /// [`matvec`] over the contiguous rows of the stored `[out, in]` weight: a CubeCL kernel
    /// that reads the weight once at close to the memory bandwidth, where the untuned tiled
    /// matmul kernels (16-row tensor-core tiles) were measured up to 100× slower than the
    /// bandwidth bound for `m = 1` on the H100 (docs/performance.md).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (d_in, d_out) = (self.in_dim(), self.out_dim());
        let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
        let y = if rows <= MATVEC_MAX_ROWS && !is_host_device(&x.device()) {
            matvec(x.reshape([rows, d_in]), self.rows())
        } else {
            x.reshape([rows, d_in]).matmul(self.weight.clone())
        };
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }

    /// The stored `[out, in]` weight (a view, rows contiguous).
    pub fn rows(&self) -> Tensor<2> {
        self.weight.clone().transpose()
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[1]
    }
}
