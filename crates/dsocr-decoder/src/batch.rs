//! Batched decoding of several sequences at once (continuous batching).
//!
//! [`SlotCache`]: per layer one K and one V buffer `[slots, heads, capacity, head_dim]` and a
//! length per slot; capacity grows in chunks (as [`KvCache`]) and a finished sequence's slot is
//! reused without reallocation. The live sequences always occupy the first rows: when one
//! finishes, the last one's rows are moved into its place, so a step computes exactly the live
//! rows (a view of the first `live` rows, no copy) and never a free one. [`Batcher`] runs
//! sequences in those slots: a new sequence is prefilled alone (its prompt through a
//! single-sequence [`KvCache`], then copied into the next free row), and every
//! [`Batcher::step`] feeds each live sequence its last token in ONE batched forward
//! `[live, 1, d]` with per-row RoPE positions and per-row length masks. Sampling,
//! repeat guard and finish reason are per sequence and follow [`generate`](crate::generate)
//! exactly; a step reads back one small tensor of `slots` token ids, nothing else.

use burn::prelude::*;
use burn::tensor::{DType, IndexingUpdateOp};

use crate::generation::{check_prompt, length_or_repetition, GenerationConfig};
use crate::kv_cache::KvCache;
use crate::{Decoder, DecoderError, FinishReason};

/// The KV cache of a batch: one region per slot; the live sequences in rows `0..live`.
#[derive(Debug, Clone)]
pub struct SlotCache {
    /// Per layer: K and V `[slots, heads, capacity, head_dim]` (allocated at the first write).
    layers: Vec<(Option<Tensor<4>>, Option<Tensor<4>>)>,
    /// Positions written per row (rows `0..live` are in use).
    lens: Vec<usize>,
    live: usize,
    heads: usize,
    head_dim: usize,
    chunk: usize,
    capacity: usize,
    device: Device,
    dtype: DType,
    /// Of the current step, made once by [`reserve_step`](Self::reserve_step) and shared by
    /// every layer: the flattened write rows `[live · heads]` and the mask `[live, 1, 1, capacity]`.
    step: Option<(Tensor<1, Int>, Tensor<4, Bool>)>,
}

impl SlotCache {
    /// An empty cache of `slots` slots for `decoder`, growing by `chunk` positions.
    pub fn new(decoder: &Decoder, slots: usize, chunk: usize) -> Self {
        let cfg = decoder.config();
        Self {
            layers: vec![(None, None); cfg.num_hidden_layers],
            lens: vec![0; slots],
            live: 0,
            heads: cfg.num_kv_heads(),
            head_dim: cfg.head_dim(),
            chunk: chunk.max(1),
            capacity: 0,
            device: decoder.device(),
            dtype: decoder.dtype(),
            step: None,
        }
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Rows in use (the live sequences are rows `0..live`).
    pub fn live(&self) -> usize {
        self.live
    }

    /// Positions held by row `row`.
    pub fn len(&self, row: usize) -> usize {
        self.lens[row]
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Allocated positions per slot.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of the K/V buffers.
    pub fn bytes(&self) -> usize {
        let per = self.slots() * self.heads * self.capacity * self.head_dim * self.dtype.size();
        2 * per * self.layers.len()
    }

    /// The position of every live row's next token.
    pub(crate) fn positions(&self) -> Vec<usize> {
        self.lens[..self.live].to_vec()
    }

    /// Copies a prefilled sequence (`cache`, batch 1) into the next free row and returns it.
    /// `None` when every slot is in use.
    pub fn insert(&mut self, cache: &KvCache) -> Option<usize> {
        if self.live == self.slots() {
            return None;
        }
        self.step = None;
        let row = self.live;
        let len = cache.len();
        self.grow(len.max(1));
        let (h, d) = (self.heads, self.head_dim);
        for (layer, (k_buf, v_buf)) in self.layers.iter_mut().enumerate() {
            let Some((k, v)) = cache.layer_buffers(layer) else { continue };
            for (buf, new) in [(k_buf, k), (v_buf, v)] {
                let new = new.clone().slice([0..1, 0..h, 0..len, 0..d]).cast(self.dtype);
                if let Some(old) = buf.take() {
                    *buf = Some(old.slice_assign([row..row + 1, 0..h, 0..len, 0..d], new));
                }
            }
        }
        self.lens[row] = len;
        self.live += 1;
        Some(row)
    }

    /// Frees row `row`: the last live row moves into it (its K/V copied), so the live rows stay
    /// `0..live`. Returns the row that moved, if one did.
    pub fn remove(&mut self, row: usize) -> Option<usize> {
        if row >= self.live {
            return None;
        }
        self.step = None;
        let last = self.live - 1;
        self.live -= 1;
        if row == last {
            self.lens[last] = 0;
            return None;
        }
        let (h, c, d) = (self.heads, self.capacity, self.head_dim);
        for (k_buf, v_buf) in &mut self.layers {
            for buf in [k_buf, v_buf] {
                if let Some(old) = buf.take() {
                    let moved = old.clone().slice([last..last + 1, 0..h, 0..c, 0..d]);
                    *buf = Some(old.slice_assign([row..row + 1, 0..h, 0..c, 0..d], moved));
                }
            }
        }
        self.lens[row] = self.lens[last];
        self.lens[last] = 0;
        Some(last)
    }

    /// Makes room for one more position in every live row and prepares the step's write rows
    /// and mask (one host→device upload each per step, not per layer).
    pub(crate) fn reserve_step(&mut self) {
        let positions = self.positions();
        self.grow(positions.iter().max().copied().unwrap_or(0) + 1);
        let (n, h, c) = (self.live, self.heads, self.capacity);
        // Row r = slot·h + head of the flattened [s·h·c, d] buffer starts at r·c; the new
        // position of that slot is added.
        let rows: Vec<i64> = (0..n * h).map(|r| (r * c + positions[r / h]) as i64).collect();
        let index = Tensor::<1, Int>::from_data(TensorData::new(rows, [n * h]), &self.device);
        let valid: Vec<i64> = positions.iter().map(|&p| p as i64 + 1).collect();
        let valid = Tensor::<1, Int>::from_data(TensorData::new(valid, [n]), &self.device).reshape([n, 1]);
        let mask = Tensor::<1, Int>::arange(0..c as i64, &self.device)
            .reshape([1, c])
            .greater_equal(valid)
            .reshape([n, 1, 1, c]);
        self.step = Some((index, mask));
    }

    /// Grows every buffer to hold `need` positions (a multiple of the chunk; one copy).
    fn grow(&mut self, need: usize) {
        if need <= self.capacity {
            return;
        }
        let grown = need.div_ceil(self.chunk) * self.chunk;
        let (s, h, d) = (self.slots(), self.heads, self.head_dim);
        let old_capacity = self.capacity;
        for (k, v) in &mut self.layers {
            for buf in [k, v] {
                let fresh = Tensor::<4>::zeros([s, h, grown, d], (&self.device, self.dtype));
                *buf = Some(match buf.take() {
                    Some(old) => fresh.slice_assign([0..s, 0..h, 0..old_capacity, 0..d], old),
                    None => fresh,
                });
            }
        }
        self.capacity = grown;
    }

    /// Writes `k`, `v` `[live, heads, 1, head_dim]` of layer `layer`, row `r` at position
    /// `len(r)`, in place; returns views of the live rows `[live, heads, capacity, head_dim]`
    /// and the mask `[live, 1, 1, capacity]` that is `true` past each row's new length.
    pub(crate) fn write(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4, Bool>) {
        let (s, h, c, d) = (self.slots(), self.heads, self.capacity, self.head_dim);
        let n = self.live;
        if self.step.is_none() {
            self.reserve_step();
        }
        let Some((index, mask)) = self.step.clone() else { unreachable!("prepared above") };
        let (k_buf, v_buf) = &mut self.layers[layer];
        let mut out = Vec::with_capacity(2);
        for (buf, new) in [(k_buf, k), (v_buf, v)] {
            // Moved out of the slot (not cloned): `select_assign` then writes in place.
            let flat = buf
                .take()
                .map(|b| b.reshape([s * h * c, d]))
                .unwrap_or_else(|| Tensor::<2>::zeros([s * h * c, d], (&self.device, self.dtype)));
            let new = new.reshape([n * h, d]).cast(self.dtype);
            let written = flat.select_assign(0, index.clone(), new, IndexingUpdateOp::Assign).reshape([s, h, c, d]);
            out.push(if n == s { written.clone() } else { written.clone().narrow(0, 0, n) });
            *buf = Some(written);
        }
        let v = out.pop().unwrap_or_else(|| unreachable!("two buffers written"));
        let k = out.pop().unwrap_or_else(|| unreachable!("two buffers written"));
        (k, v, mask)
    }

    /// Advances every live row by the position just written (the step's rows and mask expire).
    pub(crate) fn advance_live(&mut self) {
        self.step = None;
        for len in &mut self.lens[..self.live] {
            *len += 1;
        }
    }
}

/// A token chosen for a sequence, and whether the sequence ended with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampled {
    pub sequence: u64,
    /// `None` only when the sequence had no token budget at all.
    pub token: Option<u32>,
    pub finish: Option<FinishReason>,
}

#[derive(Debug, Clone)]
struct Sequence {
    id: u64,
    cfg: GenerationConfig,
    history: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    budget: usize,
    last_guard_step: Option<usize>,
    /// The token to feed at the next step.
    next: u32,
}

impl Sequence {
    fn bans(&self) -> Vec<u32> {
        match &self.cfg.repeat_guard {
            Some(guard) => guard.banned(&self.history, self.prompt_len),
            None => Vec::new(),
        }
    }

    /// Records `token` (chosen with `bans`); the finish reason if the sequence is done.
    fn push(&mut self, token: u32, banned_any: bool) -> Option<FinishReason> {
        if banned_any {
            self.last_guard_step = Some(self.generated);
        }
        self.generated += 1;
        self.history.push(token);
        self.next = token;
        if token == self.cfg.eos_token_id {
            Some(FinishReason::Stop)
        } else if self.generated >= self.budget {
            Some(length_or_repetition(&self.cfg, self.generated, self.last_guard_step))
        } else {
            None
        }
    }
}

/// Sequences decoded together in the slots of a [`SlotCache`]; `sequences[r]` is the sequence
/// in row `r`.
#[derive(Debug, Clone)]
pub struct Batcher {
    cache: SlotCache,
    sequences: Vec<Sequence>,
    next_id: u64,
}

impl Batcher {
    /// A batch of at most `slots` sequences, the cache growing by `chunk` positions.
    pub fn new(decoder: &Decoder, slots: usize, chunk: usize) -> Self {
        Self { cache: SlotCache::new(decoder, slots.max(1), chunk), sequences: Vec::new(), next_id: 1 }
    }

    pub fn slots(&self) -> usize {
        self.cache.slots()
    }

    /// Sequences being decoded.
    pub fn live(&self) -> usize {
        self.sequences.len()
    }

    pub fn has_free_slot(&self) -> bool {
        self.live() < self.slots()
    }

    pub fn cache(&self) -> &SlotCache {
        &self.cache
    }

    /// Prefills a new sequence (alone) and chooses its first token. Checks as
    /// [`generate`](crate::generate) does. A sequence that ends with its first token (or has no
    /// budget) takes no slot; otherwise it holds one until it finishes or is cancelled.
    /// `Err` also when no slot is free.
    pub fn admit(
        &mut self,
        decoder: &Decoder,
        prompt_embeds: Tensor<3>,
        prompt_ids: &[u32],
        cfg: &GenerationConfig,
    ) -> Result<Sampled, DecoderError> {
        if !self.has_free_slot() {
            return Err(DecoderError::Generation("no free slot in the batch".into()));
        }
        let dcfg = decoder.config();
        let (prompt_len, budget) = check_prompt(decoder, &prompt_embeds, prompt_ids, cfg)?;
        let id = self.next_id;
        self.next_id += 1;
        let mut seq = Sequence {
            id,
            cfg: cfg.clone(),
            history: prompt_ids.to_vec(),
            prompt_len,
            generated: 0,
            budget,
            last_guard_step: None,
            next: 0,
        };
        if budget == 0 {
            let finish = length_or_repetition(cfg, 0, None);
            return Ok(Sampled { sequence: id, token: None, finish: Some(finish) });
        }
        let mut cache = KvCache::new(dcfg.num_hidden_layers, self.cache.chunk);
        let hidden = decoder.forward(prompt_embeds, &mut cache);
        let logits = decoder.logits(hidden.narrow(1, prompt_len - 1, 1)).reshape([1, dcfg.vocab_size]);
        let bans = seq.bans();
        let token = crate::greedy_token(logits, &bans);
        let finish = seq.push(token, !bans.is_empty());
        if finish.is_none() {
            let row = self.cache.insert(&cache);
            debug_assert_eq!(row, Some(self.sequences.len()));
            self.sequences.push(seq);
        }
        Ok(Sampled { sequence: id, token: Some(token), finish })
    }

    /// One batched decode step: every live sequence gets its next token. Finished sequences
    /// free their rows. Reads back one tensor of `live` ids.
    pub fn step(&mut self, decoder: &Decoder) -> Vec<Sampled> {
        let n = self.live();
        if n == 0 {
            return Vec::new();
        }
        let tokens: Vec<u32> = self.sequences.iter().map(|s| s.next).collect();
        let hidden = decoder.forward_slots(&tokens, &mut self.cache);
        let vocab = decoder.config().vocab_size;
        let logits = decoder.logits(hidden).reshape([n, vocab]);
        let bans: Vec<Vec<u32>> = self.sequences.iter().map(Sequence::bans).collect();
        let chosen = greedy_tokens(logits, &bans);
        let mut out = Vec::with_capacity(n);
        let mut finished = Vec::new();
        for (row, token) in chosen.into_iter().enumerate() {
            let seq = &mut self.sequences[row];
            let finish = seq.push(token, !bans[row].is_empty());
            out.push(Sampled { sequence: seq.id, token: Some(token), finish });
            if finish.is_some() {
                finished.push(row);
            }
        }
        // From the highest row down, so that the rows still to remove do not move.
        for row in finished.into_iter().rev() {
            self.remove_row(row);
        }
        out
    }

    /// Stops sequence `sequence` and frees its row; `false` if it is not live.
    pub fn cancel(&mut self, sequence: u64) -> bool {
        match self.sequences.iter().position(|s| s.id == sequence) {
            Some(row) => {
                self.remove_row(row);
                true
            }
            None => false,
        }
    }

    /// Frees `row`; the last sequence moves into it (cache and bookkeeping alike).
    fn remove_row(&mut self, row: usize) {
        self.sequences.swap_remove(row);
        self.cache.remove(row);
    }
}

/// Argmax per row of `logits` `[rows, vocab]` after setting row `r`'s `bans[r]` to `-inf`;
/// ties go to the lowest id (as [`greedy_token`](crate::greedy_token)). The `rows` ids are the
/// only values read back.
pub fn greedy_tokens(logits: Tensor<2>, bans: &[Vec<u32>]) -> Vec<u32> {
    let logits = logits.cast(DType::F32);
    let [rows, vocab] = logits.dims();
    let flat: Vec<i64> = bans
        .iter()
        .enumerate()
        .flat_map(|(r, ids)| ids.iter().map(move |&id| (r * vocab) as i64 + id as i64))
        .collect();
    let logits = if flat.is_empty() {
        logits
    } else {
        let device = logits.device();
        let n = flat.len();
        let index = Tensor::<1, Int>::from_data(TensorData::new(flat, [n]), &device);
        let fill = Tensor::<1>::full([n], f32::NEG_INFINITY, (&device, DType::F32));
        logits.reshape([rows * vocab]).select_assign(0, index, fill, IndexingUpdateOp::Assign).reshape([rows, vocab])
    };
    logits.argmax(1).into_data().iter::<i64>().map(|id| id as u32).collect()
}
