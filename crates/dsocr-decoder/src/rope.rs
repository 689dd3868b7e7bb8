//! Rotary position embedding, NeoX "rotate-half" pairing `(i, i + head_dim/2)` over the whole
//! head (spec §6.3, pitfall 23). Burn's `RotaryEncoding` rotates interleaved pairs and is NOT
//! this.
//!
//! cos/sin are computed on the host in f32 exactly as transformers' `LlamaRotaryEmbedding`
//! does (`inv_freq = 1 / theta^(2i/d)`, `angle = pos · inv_freq`, both halves equal) and cast
//! to the activation dtype, as HF does under autocast.

use burn::prelude::*;
use burn::tensor::DType;

#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    inv_freq: Vec<f32>,
    /// `[table_len, head_dim]` cos and sin for positions `0..table_len`, in the model dtype.
    cos: Tensor<2>,
    sin: Tensor<2>,
    table_len: usize,
}

impl Rope {
    /// Tables for positions `0..table_len` (normally `max_position_embeddings`).
    pub fn new(head_dim: usize, theta: f64, table_len: usize, device: &Device, dtype: DType) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
        let (cos, sin) = Self::host_tables(&inv_freq, 0, table_len, device, dtype);
        Self { head_dim, inv_freq, cos, sin, table_len }
    }

    fn host_tables(
        inv_freq: &[f32],
        start: usize,
        len: usize,
        device: &Device,
        dtype: DType,
    ) -> (Tensor<2>, Tensor<2>) {
        let half = inv_freq.len();
        let head_dim = 2 * half;
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for pos in start..start + len {
            let angles: Vec<f32> = inv_freq.iter().map(|&f| pos as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let make = |v: Vec<f32>| {
            Tensor::<2>::from_data(TensorData::new(v, [len, head_dim]).convert_dtype(dtype), (device, dtype))
        };
        (make(cos), make(sin))
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// cos and sin `[len, head_dim]` for positions `start..start + len` (a slice of the
    /// precomputed table; positions beyond it are computed on the host).
    pub fn cos_sin(&self, start: usize, len: usize) -> (Tensor<2>, Tensor<2>) {
        if start + len <= self.table_len {
            (self.cos.clone().narrow(0, start, len), self.sin.clone().narrow(0, start, len))
        } else {
            Self::host_tables(&self.inv_freq, start, len, &self.cos.device(), self.cos.dtype())
        }
    }

    /// cos and sin `[rows, head_dim]`, row `r` for position `positions[r]`: one row per
    /// sequence of a batched decode step (gathered from the table on the device; computed on
    /// the host if a position is beyond it).
    pub fn rows(&self, positions: &[usize]) -> (Tensor<2>, Tensor<2>) {
        let device = self.cos.device();
        if positions.iter().all(|&p| p < self.table_len) {
            let n = positions.len();
            let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
            let index = Tensor::<1, Int>::from_data(TensorData::new(index, [n]), &device);
            return (self.cos.clone().select(0, index.clone()), self.sin.clone().select(0, index));
        }
        let (cos, sin): (Vec<_>, Vec<_>) =
            positions.iter().map(|&p| Self::host_tables(&self.inv_freq, p, 1, &device, self.cos.dtype())).unzip();
        (Tensor::cat(cos, 0), Tensor::cat(sin, 0))
    }

    /// cos and sin `[1, head_dim]` of the position held by the device tensor `position` `[1]`
    /// (a decode step whose position lives in device memory, as a captured graph needs). The
    /// position must be below the table length (`max_position_embeddings`, which bounds every
    /// position generation feeds).
    pub fn row_at(&self, position: Tensor<1, Int>) -> (Tensor<2>, Tensor<2>) {
        (self.cos.clone().select(0, position.clone()), self.sin.clone().select(0, position))
    }

    /// The number of positions the precomputed table covers.
    pub fn table_len(&self) -> usize {
        self.table_len
    }

    /// [`apply`](Self::apply) for one new position per sequence: `x: [rows, heads, 1, head_dim]`
    /// with `cos`, `sin` `[rows, head_dim]` from [`rows`](Self::rows).
    pub fn apply_rows(&self, x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
        dsocr_nn::rope_rows(x, cos, sin)
    }

    /// `x * cos + rotate_half(x) * sin` for `x: [batch, heads, len, head_dim]`, with
    /// `rotate_half([a, b]) = [-b, a]` and `cos`, `sin` of shape `[len, head_dim]`.
    pub fn apply(&self, x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
        let half = self.head_dim / 2;
        let a = x.clone().narrow(3, 0, half);
        let b = x.clone().narrow(3, half, half);
        let rotated = Tensor::cat(vec![b.neg(), a], 3);
        x * cos.clone().unsqueeze::<4>() + rotated * sin.clone().unsqueeze::<4>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsocr_weights::{Backend, Precision};

    #[test]
    fn rotate_half_against_hand_computed_values() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        // head_dim 4, theta 100: inv_freq = [1, 100^(-1/2)] = [1, 0.1].
        let rope = Rope::new(4, 100.0, 8, &device, DType::F32);
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 1, 4]), &device);
        let pos = 3usize;
        let (cos, sin) = rope.cos_sin(pos, 1);
        let y: Vec<f32> = rope.apply(x, &cos, &sin).into_data().iter::<f32>().collect();
        let (c0, s0) = ((3.0f64).cos(), (3.0f64).sin());
        let (c1, s1) = ((0.3f64).cos(), (0.3f64).sin());
        // pairs (0, 2) and (1, 3): y_i = x_i cos - x_{i+2} sin ; y_{i+2} = x_{i+2} cos + x_i sin
        let expected = [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + 1.0 * s0, 4.0 * c1 + 2.0 * s1];
        for (g, e) in y.iter().zip(expected) {
            assert!((*g as f64 - e).abs() < 1e-5, "{y:?} vs {expected:?}");
        }
        // Positions past the table are computed on the host and agree with the formula.
        let (cos_far, sin_far) = rope.cos_sin(10, 1);
        let cf: Vec<f32> = cos_far.into_data().iter::<f32>().collect();
        let sf: Vec<f32> = sin_far.into_data().iter::<f32>().collect();
        assert!((cf[0] as f64 - 10f64.cos()).abs() < 1e-6 && (cf[3] as f64 - 1f64.cos()).abs() < 1e-6);
        assert!((sf[1] as f64 - 1f64.sin()).abs() < 1e-6 && (sf[2] as f64 - 10f64.sin()).abs() < 1e-6);
    }
}
