//! Scaled dot-product attention with an f32 softmax in half precision.

use burn::prelude::*;
use burn::tensor::DType;

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

/// Long bidirectional attention without bias or mask, `softmax(q kᵀ / √d) v` over
/// `q, k: [b, h, seq, d]`, `v: [b, h, seq, d_v]`. Where [`long_attention_available`] says so
/// (CUDA in half precision) it runs as one flash-attention kernel that never materialises the
/// scores ([`crate::kernels`], `flash`); otherwise it is [`attention`].
pub fn long_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    #[cfg(feature = "kernels")]
    {
        if crate::kernels::flash_available(&q) && k.dtype() == q.dtype() && v.dtype() == q.dtype() {
            return crate::kernels::flash_attention(q, k, v);
        }
    }
    attention(q, k, v, None, None, false)
}

/// Whether [`long_attention`] takes its flash kernel for queries like `q` (the callers that
/// must first reshape their problem for it ask this).
pub fn long_attention_available(q: &Tensor<4>) -> bool {
    #[cfg(feature = "kernels")]
    {
        crate::kernels::flash_available(q)
    }
    #[cfg(not(feature = "kernels"))]
    {
        let _ = q;
        false
    }
}

/// Attention of one new query per sequence over its whole K/V cache: `q: [b, h, 1, d]`, `k`,
/// `v`: `[b, h, capacity, d]`; sequence `r` attends over positions `0..=position[r]`
/// (`position: [b]` on the device; `mask` `[b, 1, 1, capacity]` is the same thing as a mask,
/// `true` after it). Neither is read on the host, so a captured graph can replay this.
///
/// The reference is [`attention`] with the mask; on GPUs it is one kernel pair
/// ([`crate::kernels`], `attention`) that reads the length from `position`.
pub fn decode_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    position: &Tensor<1, Int>,
    mask: &Tensor<4, Bool>,
) -> Tensor<4> {
    #[cfg(feature = "kernels")]
    {
        use crate::kernels::{available, Kernel};
        if available(Kernel::DecodeAttention, &q, &k) && k.dtype() == v.dtype() {
            return crate::kernels::decode_attention(q, k, v, position.clone());
        }
    }
    let _ = position;
    attention(q, k, v, None, Some(mask.clone()), false)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;
    use dsocr_weights::{Backend, Precision};

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
}
