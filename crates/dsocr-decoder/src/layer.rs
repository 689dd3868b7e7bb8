//! One pre-norm decoder layer (spec §6.2):
//!
//! ```text
//! h = x + Attn(RMSNorm_in(x))
//! x = h + FFN(RMSNorm_post(h))      FFN = dense MLP below first_k_dense_replace, MoE after
//! ```
//!
//! The add that makes `h` and the norm after it are one op (`RmsNorm::forward_residual`).

use burn::prelude::*;
use dsocr_nn::WeightFormat;
use dsocr_weights::VarBuilder;

use crate::attention::Attention;
use crate::batch::SlotCache;
use crate::kv_cache::KvCache;
use crate::mlp::Mlp;
use crate::moe::{ExpertDispatch, Moe};
use crate::rms_norm::RmsNorm;
use crate::rope::Rope;
use crate::{DecoderConfig, DecoderError};

/// (Burn 0.22 tensors are large handles, so the variants differ in size; there are only a few
/// dozen of these per model.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

impl FeedForward {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match self {
            FeedForward::Dense(mlp) => mlp.forward(x),
            FeedForward::Moe(moe) => moe.forward(x),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: FeedForward,
    index: usize,
}

impl DecoderLayer {
    /// Loads `model.layers.{index}.*` from `vb` (already at that prefix); the projections and
    /// experts are kept as `format` says (norms and the router stay in the model's dtype).
    pub fn load(
        vb: &VarBuilder,
        cfg: &DecoderConfig,
        index: usize,
        format: WeightFormat,
    ) -> Result<Self, DecoderError> {
        let d = cfg.hidden_size;
        let mlp = if cfg.is_moe_layer(index) {
            FeedForward::Moe(Moe::load(&vb.pp("mlp"), cfg, format)?)
        } else {
            FeedForward::Dense(Mlp::load(&vb.pp("mlp"), d, cfg.intermediate_size, format)?)
        };
        Ok(Self {
            input_layernorm: RmsNorm::load(&vb.pp("input_layernorm"), d, cfg.rms_norm_eps)?,
            self_attn: Attention::load(&vb.pp("self_attn"), cfg, format)?,
            post_attention_layernorm: RmsNorm::load(&vb.pp("post_attention_layernorm"), d, cfg.rms_norm_eps)?,
            mlp,
            index,
        })
    }

    pub fn set_expert_dispatch(&mut self, dispatch: ExpertDispatch) {
        if let FeedForward::Moe(moe) = &mut self.mlp {
            moe.set_dispatch(dispatch);
        }
    }

    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(self.input_layernorm.forward(x.clone()), rope, cos, sin, cache, self.index);
        let (h, normed) = self.post_attention_layernorm.forward_residual(x, attn);
        let ffn = self.mlp.forward(normed);
        h + ffn
    }

    /// [`forward`](Self::forward) for a decode step whose position lives in device memory
    /// (see [`Attention::forward_step`]).
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
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attn = self.self_attn.forward_step(normed, rope, cos, sin, position, mask, cache, self.index);
        let (h, normed) = self.post_attention_layernorm.forward_residual(x, attn);
        let ffn = self.mlp.forward(normed);
        h + ffn
    }

    /// Whether this layer's feed-forward runs without reading anything back to the host at
    /// decode size (a dense MLP, or a MoE whose experts are gathered on the device).
    pub fn decodes_on_device(&self) -> bool {
        self.decodes_rows_on_device(1)
    }

    /// [`decodes_on_device`](Self::decodes_on_device) for a batched step of `rows` rows.
    pub fn decodes_rows_on_device(&self, rows: usize) -> bool {
        match &self.mlp {
            FeedForward::Dense(_) => true,
            FeedForward::Moe(moe) => moe.runs_on_device(rows),
        }
    }

    /// [`forward_slots`](Self::forward_slots) with the positions in device memory (see
    /// [`Attention::forward_slots_step`]).
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
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attn = self.self_attn.forward_slots_step(normed, rope, cos, sin, position, mask, index, cache, self.index);
        let (h, normed) = self.post_attention_layernorm.forward_residual(x, attn);
        let ffn = self.mlp.forward(normed);
        h + ffn
    }

    /// [`forward`](Self::forward) for a batched decode step over a [`SlotCache`].
    pub fn forward_slots(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        cache: &mut SlotCache,
    ) -> Tensor<3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attn = self.self_attn.forward_slots(normed, rope, cos, sin, cache, self.index);
        let (h, normed) = self.post_attention_layernorm.forward_residual(x, attn);
        let ffn = self.mlp.forward(normed);
        h + ffn
    }
}
