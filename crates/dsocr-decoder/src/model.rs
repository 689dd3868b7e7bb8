//! The whole language decoder: token embedding (with image-row scatter), the layers, the final
//! RMSNorm and the untied lm_head (spec §6.1, §6.6).

use burn::prelude::*;
use burn::tensor::{DType, IndexingUpdateOp};
use dsocr_nn::{Embedding, Linear, WeightFormat};
use dsocr_weights::VarBuilder;

use crate::batch::{SlotCache, SlotStepInputs};
use crate::generation::argmax_ids;
use crate::kv_cache::{KvCache, DEFAULT_CHUNK};
use crate::layer::DecoderLayer;
use crate::moe::ExpertDispatch;
use crate::rms_norm::RmsNorm;
use crate::rope::Rope;
use crate::step::{StepInputs, StepOutput};
use crate::{DecoderConfig, DecoderError};

#[derive(Debug, Clone)]
pub struct Decoder {
    /// `model.embed_tokens.weight` `[vocab, d]`.
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    cfg: DecoderConfig,
}

impl Decoder {
    /// Loads the language model from the checkpoint root (`model.embed_tokens.weight`,
    /// `model.layers.{i}.*`, `model.norm.weight`, `lm_head.weight`) in `vb`'s dtype and device.
    pub fn load(vb: &VarBuilder, cfg: &DecoderConfig) -> Result<Self, DecoderError> {
        Self::load_as(vb, cfg, WeightFormat::Float, WeightFormat::Float)
    }

    /// Whether the checkpoint tensor `name` is one that [`load_as`](Self::load_as) keeps in
    /// its `layers` format (every `*_proj.weight` under `model.layers.`: attention, dense MLP,
    /// routed and shared experts), or, with `lm_head`, in its `lm_head` format
    /// (`lm_head.weight`). The router, norms and embedding are never among them. What
    /// `dsocr quantize` stores quantized.
    pub fn keeps_in_layer_format(name: &str, lm_head: bool) -> bool {
        (name.starts_with("model.layers.") && name.ends_with("_proj.weight")) || (lm_head && name == "lm_head.weight")
    }

    /// [`load`](Self::load) with the layers' projections and experts kept as `layers` says and
    /// the lm_head as `lm_head` says (a quantized decoder: the embedding, norms and router stay
    /// in `vb`'s dtype).
    pub fn load_as(
        vb: &VarBuilder,
        cfg: &DecoderConfig,
        layers: WeightFormat,
        lm_head: WeightFormat,
    ) -> Result<Self, DecoderError> {
        cfg.validate()?;
        let (vocab, d) = (cfg.vocab_size, cfg.hidden_size);
        let model = vb.pp("model");
        let embed_tokens = Embedding::load(&model.pp("embed_tokens"), vocab, d)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::load(&model.pp("layers").pp(i), cfg, i, layers))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = RmsNorm::load(&model.pp("norm"), d, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::from_rows(embed_tokens.table(), None)
        } else {
            Linear::load_as(&vb.pp("lm_head"), d, vocab, false, lm_head)?
        };
        let rope = Rope::new(cfg.head_dim(), cfg.rope_theta, cfg.max_position_embeddings, vb.device(), vb.dtype());
        Ok(Self { embed_tokens, layers, norm, lm_head, rope, cfg: cfg.clone() })
    }

    /// How the MoE layers run their experts (default [`ExpertDispatch::Auto`]).
    pub fn set_expert_dispatch(&mut self, dispatch: ExpertDispatch) {
        for layer in &mut self.layers {
            layer.set_expert_dispatch(dispatch);
        }
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// The activation / weight dtype.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Token embeddings `[1, L, d]`.
    ///
    /// Every id must be `< vocab_size` (checked by [`embed_with_image`](Self::embed_with_image)
    /// and [`generate`](crate::generate); here an out-of-range id is a caller bug).
    pub fn embed(&self, ids: &[u32]) -> Tensor<3> {
        self.embed_tokens.forward(ids).unsqueeze::<3>()
    }

    /// Token embeddings `[1, L, d]` with the rows at the positions holding `image_token_id`
    /// replaced, in order, by the `N` rows of `image_embeds` `[N, d]` (spec §6.1).
    pub fn embed_with_image(
        &self,
        ids: &[u32],
        image_token_id: u32,
        image_embeds: Tensor<2>,
    ) -> Result<Tensor<3>, DecoderError> {
        self.check_ids(ids)?;
        let [n, d] = image_embeds.dims();
        if d != self.cfg.hidden_size {
            return Err(DecoderError::Shape(format!(
                "image embeddings have width {d}, the decoder expects {}",
                self.cfg.hidden_size
            )));
        }
        let positions: Vec<i64> =
            ids.iter().enumerate().filter(|(_, &id)| id == image_token_id).map(|(p, _)| p as i64).collect();
        if positions.len() != n {
            return Err(DecoderError::Shape(format!(
                "the prompt has {} image tokens (id {image_token_id}) but {n} image embeddings were given",
                positions.len()
            )));
        }
        let embeds = self.embed(ids);
        if n == 0 {
            return Ok(embeds);
        }
        let [_, len, _] = embeds.dims();
        let device = self.device();
        let positions = Tensor::<1, Int>::from_data(TensorData::new(positions, [n]), &device);
        let rows = embeds.reshape([len, d]).select_assign(
            0,
            positions,
            image_embeds.cast(self.dtype()),
            IndexingUpdateOp::Assign,
        );
        Ok(rows.unsqueeze::<3>())
    }

    /// Errors if an id is outside the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), DecoderError> {
        match ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            Some(id) => Err(DecoderError::Shape(format!("token id {id} >= vocab_size {}", self.cfg.vocab_size))),
            None => Ok(()),
        }
    }

    /// An empty KV cache growing in chunks of 256 positions.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with_chunk(DEFAULT_CHUNK)
    }

    pub fn new_cache_with_chunk(&self, chunk: usize) -> KvCache {
        KvCache::new(self.layers.len(), chunk)
    }

    /// Runs `embeds` `[batch, t, d]` at positions `cache.len()..cache.len() + t` (prefill when
    /// the cache is empty, decode for t = 1) and returns the final-norm hidden states
    /// `[batch, t, d]` of those positions. Appends their K/V to `cache`.
    pub fn forward(&self, embeds: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        self.forward_inner(embeds, cache, false).0
    }

    /// [`forward`](Self::forward), also returning the hidden state at the LAST new position
    /// (batch 0) before and after every layer, `[num_layers + 1, d]` in f32: row 0 the input
    /// embeddings, row i the output of layer i−1, row `num_layers` the final-norm output (the
    /// output of the last layer itself is not included), as HF `output_hidden_states` and the
    /// golden `prefill_hidden_last`.
    pub fn forward_traced(&self, embeds: Tensor<3>, cache: &mut KvCache) -> (Tensor<3>, Tensor<2>) {
        let (hidden, trace) = self.forward_inner(embeds, cache, true);
        let trace = Tensor::stack::<2>(trace, 0);
        (hidden, trace)
    }

    fn forward_inner(&self, embeds: Tensor<3>, cache: &mut KvCache, trace: bool) -> (Tensor<3>, Vec<Tensor<1>>) {
        let [_, t, d] = embeds.dims();
        let last = |x: &Tensor<3>| x.clone().narrow(0, 0, 1).narrow(1, t - 1, 1).reshape([d]).cast(DType::F32);
        let mut states = Vec::new();
        let (cos, sin) = self.rope.cos_sin(cache.len(), t);
        let mut x = embeds;
        for layer in &self.layers {
            if trace {
                states.push(last(&x));
            }
            x = layer.forward(x, &self.rope, &cos, &sin, cache);
        }
        cache.advance(t);
        let hidden = self.norm.forward(x);
        if trace {
            states.push(last(&hidden));
        }
        (hidden, states)
    }

    /// A batched decode step: `tokens[r]` is fed to live row `r` of `cache` at position
    /// `cache.len(r)` (`tokens.len() == cache.live()`). Returns the final-norm hidden states
    /// `[live, 1, d]` and advances every live row by one position.
    pub fn forward_slots(&self, tokens: &[u32], cache: &mut SlotCache) -> Tensor<3> {
        let slots = tokens.len();
        debug_assert_eq!(slots, cache.live());
        let d = self.cfg.hidden_size;
        cache.reserve_step();
        let (cos, sin) = self.rope.rows(&cache.positions());
        let mut x = self.embed(tokens).reshape([slots, 1, d]);
        for layer in &self.layers {
            x = layer.forward_slots(x, &self.rope, &cos, &sin, cache);
        }
        cache.advance_live();
        self.norm.forward(x)
    }

    /// One decode step whose inputs live in device memory ([`StepInputs`]: the token id and
    /// its position), so that nothing in it comes from the host and it can be captured as a
    /// graph and replayed ([`crate::step`]). Writes the step's K/V into `cache` at that
    /// position (the buffers must already hold it, `KvCache::reserve`; the cache length is the
    /// caller's to advance) and returns the logits `[1, vocab]` in f32 and their argmax `[1]`
    /// (lowest id on ties), both on the device.
    pub fn forward_step(&self, inputs: &StepInputs, cache: &mut KvCache) -> StepOutput {
        let d = self.cfg.hidden_size;
        let token = inputs.state.clone().narrow(0, 0, 1);
        let position = inputs.state.clone().narrow(0, 1, 1);
        let capacity = inputs.positions.dims()[0];
        // Key positions after this one are not attended (nor written yet).
        let mask = inputs.positions.clone().greater(position.clone().expand([capacity])).reshape([1, 1, 1, capacity]);
        let (cos, sin) = self.rope.row_at(position.clone());
        let mut x = self.embed_tokens.forward_ids(token).reshape([1, 1, d]);
        for layer in &self.layers {
            x = layer.forward_step(x, &self.rope, &cos, &sin, &position, &mask, cache);
        }
        let logits = self.logits(self.norm.forward(x)).reshape([1, self.cfg.vocab_size]);
        let token = argmax_ids(logits.clone());
        StepOutput { logits, token }
    }

    /// Whether [`forward_step`](Self::forward_step) runs without any host read (every MoE
    /// layer gathers its experts on the device), which graph capture requires.
    pub fn steps_on_device(&self) -> bool {
        self.layers.iter().all(DecoderLayer::decodes_on_device)
    }

    /// [`steps_on_device`](Self::steps_on_device) for a batched step of `rows` rows
    /// ([`forward_slots_step`](Self::forward_slots_step)).
    pub fn steps_rows_on_device(&self, rows: usize) -> bool {
        self.layers.iter().all(|layer| layer.decodes_rows_on_device(rows))
    }

    /// A batched decode step whose inputs live in device memory ([`SlotStepInputs`]: a token
    /// and a position per row), so that it can be captured as a graph and replayed (as
    /// [`forward_step`](Self::forward_step) for one sequence). Row `r` writes its K/V into slot
    /// `r` of `cache` at its position (the buffers must hold it; the lengths are the caller's to
    /// advance) and attends over that slot's positions up to it. Returns the logits
    /// `[rows, vocab]` in f32 and their argmax `[rows]`, on the device.
    pub fn forward_slots_step(&self, inputs: &SlotStepInputs, cache: &mut SlotCache) -> StepOutput {
        let (d, rows) = (self.cfg.hidden_size, inputs.rows());
        let heads = self.cfg.num_kv_heads();
        let tokens = inputs.state.clone().narrow(0, 0, rows);
        let position = inputs.state.clone().narrow(0, rows, rows);
        let capacity = inputs.positions.dims()[0];
        let per_row = |t: Tensor<1, Int>, width: usize| t.reshape([rows, 1]).expand([rows, width]);
        // Key positions after each row's own are not attended (nor written yet).
        let mask = inputs
            .positions
            .clone()
            .reshape([1, capacity])
            .expand([rows, capacity])
            .greater(per_row(position.clone(), capacity))
            .reshape([rows, 1, 1, capacity]);
        // Row r·heads + h of the flattened buffers starts at (r·heads + h)·capacity.
        let index = inputs.row_starts.clone() + per_row(position.clone(), heads).reshape([rows * heads]);
        let (cos, sin) = self.rope.row_at(position.clone());
        let mut x = self.embed_tokens.forward_ids(tokens).reshape([rows, 1, d]);
        for layer in &self.layers {
            x = layer.forward_slots_step(x, &self.rope, &cos, &sin, &position, &mask, &index, cache);
        }
        let logits = self.logits(self.norm.forward(x)).reshape([rows, self.cfg.vocab_size]);
        let token = argmax_ids(logits.clone());
        StepOutput { logits, token }
    }

    /// The RoPE tables.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// `lm_head` on hidden states `[batch, t, d]` → logits `[batch, t, vocab]` in f32.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(hidden).cast(DType::F32)
    }
}
