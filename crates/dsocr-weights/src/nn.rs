//! Layers shared by every block, loaded straight from PyTorch-layout tensors.

use burn::prelude::*;
use burn::tensor::DType;

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
    ///
    /// On GPU backends a single row (a decode step) is a matrix-vector product, computed as a
    /// multiply and a sum over the contiguous rows of the stored `[out, in]` weight (CubeCL
    /// accumulates half-precision sums in f32, like a matmul): it reads the weight once, where
    /// the untuned tiled matmul kernels (16-row tensor-core tiles) were measured up to 100×
    /// slower than the bandwidth bound for `m = 1` on the H100 (docs/performance.md).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (d_in, d_out) = (self.in_dim(), self.out_dim());
        let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
        let y = if rows == 1 && !crate::backend::is_host_device(&x.device()) {
            self.matvec(x.reshape([1, d_in]))
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

    /// `x: [1, in]` → `[1, out]` as a multiply and a sum over the rows of the stored
    /// `[out, in]` weight (the GPU decode path of [`forward`](Self::forward)).
    fn matvec(&self, x: Tensor<2>) -> Tensor<2> {
        let w = self.weight.clone().transpose(); // [out, in], rows contiguous
        (w * x).sum_dim(1).reshape([1, self.out_dim()])
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

/// Scaled dot-product attention `softmax(q kᵀ / √d + bias) v` over `[batch, heads, seq, d]`,
/// with an optional boolean `mask` (`true` = not attended, broadcast over batch/heads/queries)
/// and an optional bottom-right-aligned causal mask (query `i` sees keys `0..=i + seq_k − seq_q`).
///
/// In f32 this is Burn's `attention`. In half precision the scores are cast to f32 before the
/// scale, bias, mask and softmax, and the probabilities back to the activation dtype for the
/// `· v` matmul: HF's eager attention does exactly this (`softmax(..., dtype=float32)`), while
/// Burn's kernels would run the softmax in the half type.
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    mask: Option<Tensor<4, Bool>>,
    causal: bool,
) -> Tensor<4> {
    use burn::tensor::module;
    use burn::tensor::ops::AttentionModuleOptions;
    let dtype = q.dtype();
    if dtype == DType::F32 {
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
        let mask = mask.map(|m| {
            let [b, h, s_q, _] = q.dims();
            let s_k = k.dims()[2];
            m.expand([b, h, s_q, s_k])
        });
        return module::attention(q, k, v, mask, bias, options);
    }
    let [_, _, seq_q, head_dim] = q.dims();
    let seq_k = k.dims()[2];
    let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) * (1.0 / (head_dim as f64).sqrt());
    let scores = match bias {
        Some(bias) => scores + bias.cast(DType::F32),
        None => scores,
    };
    let scores = match mask {
        Some(mask) => scores.mask_fill(mask, f32::NEG_INFINITY),
        None => scores,
    };
    let scores = if causal && seq_q > 1 {
        let mask = Tensor::<2, Bool>::tril_mask([seq_q, seq_k], seq_k as i64 - seq_q as i64, &scores.device());
        scores.mask_fill(mask.unsqueeze::<4>(), f32::NEG_INFINITY)
    } else {
        scores
    };
    burn::tensor::activation::softmax(scores, 3).cast(dtype).matmul(v)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use crate::{Backend, Precision};

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a.cast(DType::F32) - b.cast(DType::F32)).abs().max().into_scalar()
    }

    /// The half-precision path (f32 softmax, explicit causal mask) agrees with Burn's f32
    /// attention, with and without a bias, for a prefill chunk that follows cached keys.
    #[test]
    fn half_precision_attention_matches_f32() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let rnd = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v, bias) = (rnd([1, 2, 5, 16]), rnd([1, 2, 9, 16]), rnd([1, 2, 9, 16]), rnd([1, 2, 5, 9]));
        let half = |t: &Tensor<4>| t.clone().cast(DType::F16);
        for causal in [false, true] {
            let want = attention(q.clone(), k.clone(), v.clone(), Some(bias.clone()), None, causal);
            let got = attention(half(&q), half(&k), half(&v), Some(half(&bias)), None, causal);
            assert_eq!(got.dtype(), DType::F16);
            let diff = max_diff(got, want.clone());
            assert!(diff < 1e-2, "causal {causal}: {diff}");
            // The mask matters: without it the causal result would be far off.
            let unmasked = attention(q.clone(), k.clone(), v.clone(), Some(bias.clone()), None, !causal);
            assert!(max_diff(unmasked, want) > 1e-1);
        }
    }

    /// A mask over padding positions gives the same result as leaving the padding out (the
    /// decoder's fixed-shape decode step), on both paths.
    #[test]
    fn masked_padding_equals_shorter_keys() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let rnd = |shape: [usize; 4]| Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (rnd([1, 2, 1, 16]), rnd([1, 2, 12, 16]), rnd([1, 2, 12, 16]));
        let valid = 7;
        let mask = Tensor::<1, Int>::arange(0..12, &device).greater_equal_elem(valid as i64).reshape([1, 1, 1, 12]);
        let want =
            attention(q.clone(), k.clone().narrow(2, 0, valid), v.clone().narrow(2, 0, valid), None, None, false);
        let got = attention(q.clone(), k.clone(), v.clone(), None, Some(mask.clone()), false);
        assert!(max_diff(got, want.clone()) < 1e-5);
        let half = |t: &Tensor<4>| t.clone().cast(DType::F16);
        let got = attention(half(&q), half(&k), half(&v), None, Some(mask), false);
        assert!(max_diff(got, want.clone()) < 1e-2);
        let unmasked = attention(q, k, v, None, None, false);
        assert!(max_diff(unmasked, want) > 1e-2);
    }

    /// The GPU decode path of `Linear` (multiply + row sum) equals the matmul path.
    #[test]
    fn matvec_equals_matmul() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let linear = Linear {
            weight: Tensor::<2>::random([24, 40], Distribution::Normal(0.0, 1.0), &device).transpose(),
            bias: None,
        };
        let x = Tensor::<2>::random([1, 40], Distribution::Normal(0.0, 1.0), &device);
        let want = x.clone().matmul(linear.weight.clone());
        let got = linear.matvec(x);
        assert_eq!(got.dims(), [1, 24]);
        let diff: f32 = (got - want).abs().max().into_scalar();
        assert!(diff < 1e-4, "{diff}");
    }

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
