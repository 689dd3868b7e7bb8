//! Standard multi-head self-attention (DeepSeek-OCR has `use_mla: false`, spec §6.3):
//! q/k/v/o projections, rotate-half RoPE on q and k, causal softmax(q kᵀ / √d) v.

use burn::prelude::*;
use dsocr_nn::{attention, decode_attention, Linear, WeightFormat};
use dsocr_weights::VarBuilder;

use crate::batch::SlotCache;
use crate::kv_cache::KvCache;
use crate::rope::Rope;
use crate::{DecoderConfig, DecoderError};

#[derive(Debug, Clone)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Loads `<prefix>.{q,k,v,o}_proj.weight` (biases only if `attention_bias`), kept as
    /// `format` says.
    pub fn load(vb: &VarBuilder, cfg: &DecoderConfig, format: WeightFormat) -> Result<Self, DecoderError> {
        let (d, bias) = (cfg.hidden_size, cfg.attention_bias);
        let heads_dim = cfg.num_attention_heads * cfg.head_dim();
        let kv_dim = cfg.num_kv_heads() * cfg.head_dim();
        Ok(Self {
            q_proj: Linear::load_as(&vb.pp("q_proj"), d, heads_dim, bias, format)?,
            k_proj: Linear::load_as(&vb.pp("k_proj"), d, kv_dim, bias, format)?,
            v_proj: Linear::load_as(&vb.pp("v_proj"), d, kv_dim, bias, format)?,
            o_proj: Linear::load_as(&vb.pp("o_proj"), heads_dim, d, bias, format)?,
            num_heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// The q, k and v projections of `x` (one pass over the three weights on the CPU
    /// backends' host path, [`Linear::forward_all`]).
    fn qkv(&self, x: Tensor<3>) -> [Tensor<3>; 3] {
        Linear::forward_all([&self.q_proj, &self.k_proj, &self.v_proj], x)
    }

    /// `x: [batch, t, d]` at positions `cache.len()..cache.len() + t`; `cos`/`sin` are the
    /// RoPE tables of those positions. Appends this layer's K/V to `cache`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let split_heads = |y: Tensor<3>| y.reshape([b, t, self.num_heads, self.head_dim]).swap_dims(1, 2);
        let [q, k, v] = self.qkv(x).map(split_heads);

        let q = rope.apply(q, cos, sin);
        let k = rope.apply(k, cos, sin);
        // A decode step attends over the whole preallocated cache with the unwritten positions
        // masked (fixed shapes within a chunk, see `KvCache::append_padded`). A prompt attends
        // over the written positions with a causal mask that is bottom-right aligned (query i
        // sees keys 0..=past + i).
        let out = if t == 1 {
            let (k, v, mask) = cache.append_padded(layer, k, v);
            attention(q, k, v, None, Some(mask), false)
        } else {
            let (k, v) = cache.append(layer, k, v);
            attention(q, k, v, None, None, true)
        }; // [b, heads, t, head_dim]
        let out = out.swap_dims(1, 2).reshape([b, t, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// A decode step of one sequence whose position lives in device memory: `x: [1, 1, d]`
    /// at the position held by `position` `[1]`, `cos`/`sin` from [`Rope::row_at`], `mask`
    /// `[1, 1, 1, capacity]` true past that position. Writes this layer's K/V there (in place)
    /// and attends over the whole buffer with the mask: no host value enters, so the step can
    /// be captured as a graph and replayed.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_step(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        position: &Tensor<1, Int>,
        mask: &Tensor<4, Bool>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Tensor<3> {
        let split_heads = |y: Tensor<3>| y.reshape([1, 1, self.num_heads, self.head_dim]).swap_dims(1, 2);
        let [q, k, v] = self.qkv(x).map(split_heads);
        let q = rope.apply_rows(q, cos, sin);
        let k = rope.apply_rows(k, cos, sin);
        let (k, v) = cache.write_at(layer, k, v, position);
        let out = decode_attention(q, k, v, position, mask); // [1, heads, 1, head_dim]
        let out = out.swap_dims(1, 2).reshape([1, 1, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// [`forward_slots`](Self::forward_slots) with the positions in device memory (a batched
    /// step captured as a graph): row `r` of `x` `[rows, 1, d]` at `position[r]`, `cos`/`sin`
    /// from [`Rope::row_at`], its K/V written at the flat buffer rows `index` and attended with
    /// `mask` `[rows, 1, 1, capacity]` (true past each row's position).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_slots_step(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        position: &Tensor<1, Int>,
        mask: &Tensor<4, Bool>,
        index: &Tensor<1, Int>,
        cache: &mut SlotCache,
        layer: usize,
    ) -> Tensor<3> {
        let rows = x.dims()[0];
        let split_heads = |y: Tensor<3>| y.reshape([rows, 1, self.num_heads, self.head_dim]).swap_dims(1, 2);
        let [q, k, v] = self.qkv(x).map(split_heads);
        let q = rope.apply_rows(q, cos, sin);
        let k = rope.apply_rows(k, cos, sin);
        let (k, v) = cache.write_rows(layer, k, v, index);
        let out = decode_attention(q, k, v, position, mask); // [rows, heads, 1, head_dim]
        let out = out.swap_dims(1, 2).reshape([rows, 1, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }

    /// A decode step of several sequences, one new token each: `x: [slots, 1, d]`, row `s` at
    /// position `cache.len(s)` with `cos`/`sin` rows from [`Rope::rows`]. Writes each row's K/V
    /// at its own position and attends over that slot's positions only (per-row length mask).
    pub fn forward_slots(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: &mut SlotCache,
        layer: usize,
    ) -> Tensor<3> {
        let [s, t, _] = x.dims();
        debug_assert_eq!(t, 1);
        let split_heads = |y: Tensor<3>| y.reshape([s, 1, self.num_heads, self.head_dim]).swap_dims(1, 2);
        let [q, k, v] = self.qkv(x).map(split_heads);
        let q = rope.apply_rows(q, cos, sin);
        let k = rope.apply_rows(k, cos, sin);
        let (k, v, mask) = cache.write(layer, k, v);
        let out = attention(q, k, v, None, Some(mask), false); // [slots, heads, 1, head_dim]
        let out = out.swap_dims(1, 2).reshape([s, 1, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}
