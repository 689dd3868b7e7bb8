//! Batched decoding of several sequences at once (continuous batching).
//!
//! [`SlotCache`]: per layer one K and one V buffer `[slots, heads, capacity, head_dim]` and a
//! length per slot; capacity grows in chunks (as [`KvCache`]) and a finished sequence's slot is
//! reused without reallocation. The live sequences always occupy the first rows: when one
//! finishes, the last one's rows are moved into its place, so a step computes exactly the live
//! rows (a view of the first `live` rows, no copy) and never a free one. [`Batcher`] runs
//! sequences in those slots: new sequences are prefilled (equal prompt lengths as one batch,
//! through a [`KvCache`], then copied into the next free rows, [`Batcher::admit_batch`]), and every
//! [`Batcher::step`] feeds each live sequence its last token in ONE batched forward
//! `[live, 1, d]` with per-row RoPE positions and per-row length masks. Sampling,
//! repeat guard and finish reason are per sequence and follow [`generate`](crate::generate)
//! exactly; a step reads back one small tensor of `slots` token ids, nothing else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::{capture, DType, Graph, IndexingUpdateOp};
use dsocr_nn::{overwrite_blocks, Blocks};

use crate::generation::{check_prompt, length_or_repetition, GenerationConfig};
use crate::kv_cache::KvCache;
use crate::step::{StepMode, StepOutput, StepReport, GRAPH_CHUNK};
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
    /// Inserts and moves write into the existing buffers ([`dsocr_nn::overwrite_blocks`]), so a
    /// recorded decode graph keeps seeing them (set by [`Batcher`] in graph mode).
    in_place: bool,
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
            in_place: false,
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
        self.insert_row(cache, 0)
    }

    /// [`insert`](Self::insert) of row `batch_row` of a cache prefilled for several sequences
    /// of one prompt length.
    pub fn insert_row(&mut self, cache: &KvCache, batch_row: usize) -> Option<usize> {
        if self.live == self.slots() {
            return None;
        }
        self.step = None;
        let row = self.live;
        let len = cache.len();
        self.grow(len.max(1));
        let (h, d) = (self.heads, self.head_dim);
        let c = self.capacity;
        for (layer, (k_buf, v_buf)) in self.layers.iter_mut().enumerate() {
            let Some((k, v)) = cache.layer_buffers(layer) else { continue };
            for (buf, new) in [(k_buf, k), (v_buf, v)] {
                let Some(old) = buf.take() else { continue };
                *buf = Some(if self.in_place {
                    // Head by head: `len · d` values from the prefill buffer's rows of its own
                    // capacity into this row's.
                    let src_capacity = new.dims()[2];
                    let blocks = Blocks {
                        count: h,
                        len: len * d,
                        dst_offset: row * h * c * d,
                        dst_stride: c * d,
                        src_offset: batch_row * h * src_capacity * d,
                        src_stride: src_capacity * d,
                    };
                    overwrite_blocks(old, new.clone(), blocks)
                } else {
                    let r = batch_row;
                    let new = new.clone().slice([r..r + 1, 0..h, 0..len, 0..d]).cast(self.dtype);
                    old.slice_assign([row..row + 1, 0..h, 0..len, 0..d], new)
                });
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
        let region = h * c * d;
        for (k_buf, v_buf) in &mut self.layers {
            for buf in [k_buf, v_buf] {
                let Some(old) = buf.take() else { continue };
                *buf = Some(if self.in_place {
                    // Through a scratch copy: a kernel must not read and write one buffer.
                    let one = |dst_offset, src_offset| Blocks {
                        count: 1,
                        len: region,
                        dst_offset,
                        dst_stride: 0,
                        src_offset,
                        src_stride: 0,
                    };
                    let scratch = Tensor::<1>::empty([region], (&self.device, self.dtype));
                    let scratch = overwrite_blocks(scratch, old.clone(), one(0, last * region));
                    overwrite_blocks(old, scratch, one(row * region, 0))
                } else {
                    let moved = old.clone().slice([last..last + 1, 0..h, 0..c, 0..d]);
                    old.slice_assign([row..row + 1, 0..h, 0..c, 0..d], moved)
                });
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
    pub(crate) fn grow(&mut self, need: usize) {
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
        if self.step.is_none() {
            self.reserve_step();
        }
        let Some((index, mask)) = self.step.clone() else { unreachable!("prepared above") };
        let (k, v) = self.write_rows(layer, k, v, &index);
        (k, v, mask)
    }

    /// Writes `k`, `v` `[rows, heads, 1, head_dim]` of layer `layer` at the flat buffer rows
    /// `index` `[rows · heads]` (in place) and returns views of the first `rows` slots
    /// `[rows, heads, capacity, head_dim]`: a graph step's write, the index computed on the
    /// device from its positions ([`SlotStepInputs`]). The buffers must exist (a sequence was
    /// inserted).
    pub(crate) fn write_rows(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
        index: &Tensor<1, Int>,
    ) -> (Tensor<4>, Tensor<4>) {
        let (s, h, c, d) = (self.slots(), self.heads, self.capacity, self.head_dim);
        let rows = k.dims()[0];
        let (k_buf, v_buf) = &mut self.layers[layer];
        let mut out = Vec::with_capacity(2);
        for (buf, new) in [(k_buf, k), (v_buf, v)] {
            let flat = buf
                .take()
                .map(|b| b.reshape([s * h * c, d]))
                .unwrap_or_else(|| Tensor::<2>::zeros([s * h * c, d], (&self.device, self.dtype)));
            let new = new.reshape([rows * h, d]).cast(self.dtype);
            let written = flat.select_assign(0, index.clone(), new, IndexingUpdateOp::Assign).reshape([s, h, c, d]);
            out.push(if rows == s { written.clone() } else { written.clone().narrow(0, 0, rows) });
            *buf = Some(written);
        }
        let v = out.pop().unwrap_or_else(|| unreachable!("two buffers written"));
        let k = out.pop().unwrap_or_else(|| unreachable!("two buffers written"));
        (k, v)
    }

    /// Advances every live row by the position just written (the step's rows and mask expire).
    pub(crate) fn advance_live(&mut self) {
        self.step = None;
        for len in &mut self.lens[..self.live] {
            *len += 1;
        }
    }
}

/// A sequence to admit ([`Batcher::admit_batch`]): its prompt embeddings `[1, len, d]`, ids and
/// generation settings.
pub struct Prompt<'a> {
    pub embeds: Tensor<3>,
    pub ids: &'a [u32],
    pub cfg: &'a GenerationConfig,
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
///
/// On the GPU backends its steps are captured as graphs and replayed ([`SlotStepper`]), as the
/// single-sequence steps are ([`crate::step`]).
pub struct Batcher {
    cache: Rc<RefCell<SlotCache>>,
    sequences: Vec<Sequence>,
    next_id: u64,
    graphs: Option<SlotStepper>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("slots", &self.slots())
            .field("live", &self.live())
            .field("graph", &self.graphs.is_some())
            .finish()
    }
}

impl Batcher {
    /// A batch of at most `slots` sequences, the cache growing by `chunk` positions (by at
    /// least [`GRAPH_CHUNK`] where the steps are recorded as graphs, [`StepMode::Auto`]).
    pub fn new(decoder: &Decoder, slots: usize, chunk: usize) -> Self {
        Self::with_mode(decoder, slots, chunk, StepMode::Auto)
    }

    /// [`new`](Self::new) with the steps run as `mode` says.
    pub fn with_mode(decoder: &Decoder, slots: usize, chunk: usize, mode: StepMode) -> Self {
        let graph = mode.graphs_possible(decoder);
        let chunk = if graph { chunk.max(GRAPH_CHUNK) } else { chunk };
        let mut cache = SlotCache::new(decoder, slots.max(1), chunk);
        cache.in_place = graph;
        let graphs = graph.then(|| SlotStepper::new(decoder));
        Self { cache: Rc::new(RefCell::new(cache)), sequences: Vec::new(), next_id: 1, graphs }
    }

    pub fn slots(&self) -> usize {
        self.cache.borrow().slots()
    }

    /// Bytes of the K/V buffers.
    pub fn cache_bytes(&self) -> usize {
        self.cache.borrow().bytes()
    }

    /// Allocated positions per slot.
    pub fn cache_capacity(&self) -> usize {
        self.cache.borrow().capacity()
    }

    /// How the steps ran so far: whether as graphs, and the recordings made.
    pub fn step_report(&self) -> StepReport {
        self.graphs.as_ref().map(|g| g.report).unwrap_or_default()
    }

    /// Sequences being decoded.
    pub fn live(&self) -> usize {
        self.sequences.len()
    }

    pub fn has_free_slot(&self) -> bool {
        self.live() < self.slots()
    }

    /// Prefills one new sequence and chooses its first token. Checks as
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
        let mut out = self.admit_batch(decoder, vec![Prompt { embeds: prompt_embeds, ids: prompt_ids, cfg }]);
        out.pop().unwrap_or_else(|| Err(DecoderError::Generation("no prompt admitted".into())))
    }

    /// [`admit`](Self::admit) of several sequences at once: prompts of equal length are
    /// prefilled together, as one batch `[n, len, d]`, and their first tokens read back in one
    /// transfer. The results are in `prompts`' order; a prompt that fails its checks, or finds
    /// no free slot, fails alone.
    pub fn admit_batch(&mut self, decoder: &Decoder, prompts: Vec<Prompt<'_>>) -> Vec<Result<Sampled, DecoderError>> {
        let dcfg = decoder.config();
        let mut results: Vec<Option<Result<Sampled, DecoderError>>> = (0..prompts.len()).map(|_| None).collect();
        let mut free = self.slots() - self.live();
        // Equal prompt lengths, in order of first appearance: (len, [(index, sequence, embeds)]).
        type Group = Vec<(usize, Sequence, Tensor<3>)>;
        let mut groups: Vec<(usize, Group)> = Vec::new();
        for (index, prompt) in prompts.into_iter().enumerate() {
            if free == 0 {
                results[index] = Some(Err(DecoderError::Generation("no free slot in the batch".into())));
                continue;
            }
            let (prompt_len, budget) = match check_prompt(decoder, &prompt.embeds, prompt.ids, prompt.cfg) {
                Ok(checked) => checked,
                Err(e) => {
                    results[index] = Some(Err(e));
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            if budget == 0 {
                let finish = length_or_repetition(prompt.cfg, 0, None);
                results[index] = Some(Ok(Sampled { sequence: id, token: None, finish: Some(finish) }));
                continue;
            }
            free -= 1;
            let seq = Sequence {
                id,
                cfg: prompt.cfg.clone(),
                history: prompt.ids.to_vec(),
                prompt_len,
                generated: 0,
                budget,
                last_guard_step: None,
                next: 0,
            };
            match groups.iter_mut().find(|(len, _)| *len == prompt_len) {
                Some((_, group)) => group.push((index, seq, prompt.embeds)),
                None => groups.push((prompt_len, vec![(index, seq, prompt.embeds)])),
            }
        }
        for (prompt_len, group) in groups {
            let n = group.len();
            let mut cache = KvCache::new(dcfg.num_hidden_layers, self.cache.borrow().chunk);
            let (meta, embeds): (Vec<_>, Vec<_>) = group.into_iter().map(|(i, seq, e)| ((i, seq), e)).unzip();
            let embeds = Tensor::cat(embeds, 0);
            let hidden = decoder.forward(embeds, &mut cache);
            let logits = decoder.logits(hidden.narrow(1, prompt_len - 1, 1)).reshape([n, dcfg.vocab_size]);
            let bans: Vec<Vec<u32>> = meta.iter().map(|(_, seq)| seq.bans()).collect();
            let tokens = greedy_tokens(logits, &bans);
            for (row, ((index, mut seq), token)) in meta.into_iter().zip(tokens).enumerate() {
                let finish = seq.push(token, !bans[row].is_empty());
                let sequence = seq.id;
                if finish.is_none() {
                    let slot = self.cache.borrow_mut().insert_row(&cache, row);
                    debug_assert_eq!(slot, Some(self.sequences.len()));
                    self.sequences.push(seq);
                }
                results[index] = Some(Ok(Sampled { sequence, token: Some(token), finish }));
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(DecoderError::Generation("prompt not admitted".into()))))
            .collect()
    }

    /// One batched decode step: every live sequence gets its next token. Finished sequences
    /// free their rows. Reads back one tensor of `live` ids.
    pub fn step(&mut self, decoder: &Decoder) -> Vec<Sampled> {
        let n = self.live();
        if n == 0 {
            return Vec::new();
        }
        let tokens: Vec<u32> = self.sequences.iter().map(|s| s.next).collect();
        let bans: Vec<Vec<u32>> = self.sequences.iter().map(Sequence::bans).collect();
        let replayed = match self.graphs.as_mut() {
            Some(graphs) => graphs.step(decoder, &self.cache, &tokens),
            None => None,
        };
        let chosen = match replayed {
            // The graph's argmax unless a row has bans: then the bans and the argmax run on a
            // copy of the graph's logits.
            Some(out) if bans.iter().all(Vec::is_empty) => {
                out.token.narrow(0, 0, n).into_data().iter::<i64>().map(|id| id as u32).collect()
            }
            Some(out) => greedy_tokens(out.logits.narrow(0, 0, n), &bans),
            None => {
                let hidden = decoder.forward_slots(&tokens, &mut self.cache.borrow_mut());
                let vocab = decoder.config().vocab_size;
                greedy_tokens(decoder.logits(hidden).reshape([n, vocab]), &bans)
            }
        };
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
        self.cache.borrow_mut().remove(row);
    }
}

/// The device-resident inputs of [`Decoder::forward_slots_step`] for `rows` rows.
#[derive(Debug, Clone)]
pub struct SlotStepInputs {
    /// `[2 · rows]`: the token to feed to each row, then each row's position.
    pub state: Tensor<1, Int>,
    /// `0..capacity` of the K/V buffers (for the attention mask).
    pub positions: Tensor<1, Int>,
    /// `[rows · heads]`: `(r · heads + h) · capacity`, where row `r`'s head `h` starts in the
    /// flattened K/V buffers.
    pub row_starts: Tensor<1, Int>,
}

impl SlotStepInputs {
    /// Uploads `tokens` and `positions` (one per row) for a cache of `heads` K/V heads and
    /// `capacity` positions.
    pub fn new(tokens: &[u32], positions: &[usize], heads: usize, capacity: usize, device: &Device) -> Self {
        let rows = tokens.len();
        let starts: Vec<i64> = (0..rows * heads).map(|r| (r * capacity) as i64).collect();
        Self {
            state: state_values(tokens, positions, device),
            positions: Tensor::<1, Int>::arange(0..capacity as i64, device),
            row_starts: Tensor::<1, Int>::from_data(TensorData::new(starts, [rows * heads]), device),
        }
    }

    pub fn rows(&self) -> usize {
        self.state.dims()[0] / 2
    }
}

fn state_values(tokens: &[u32], positions: &[usize], device: &Device) -> Tensor<1, Int> {
    let values: Vec<i64> = tokens.iter().map(|&t| t as i64).chain(positions.iter().map(|&p| p as i64)).collect();
    let n = values.len();
    Tensor::<1, Int>::from_data(TensorData::new(values, [n]), device)
}

/// The rows a graph step computes for `live` sequences: the first of 1, 2, 3, 4, 6, 8, 12, 16,
/// 24, 32, … (the powers of two and 1.5 times them) that holds them, at most `slots`. The rows
/// past the live ones are free slots, fed token 0 at position 0 (a position every insert
/// overwrites); a recording serves every live count of its bucket.
pub fn graph_rows(live: usize, slots: usize) -> usize {
    let mut rows = 1;
    while rows < live {
        rows = if rows < 2 {
            rows + 1
        } else if rows.is_power_of_two() {
            rows + rows / 2
        } else {
            rows / 3 * 4
        };
    }
    rows.min(slots.max(live))
}

type SlotGraph = Graph<StepOutput, Box<dyn FnMut() -> StepOutput>>;

/// The batched steps of a [`Batcher`] recorded as graphs: one per row bucket ([`graph_rows`])
/// and cache capacity, replayed with the tokens and positions refreshed in place
/// ([`dsocr_nn::overwrite`]). Inserts and moves of sequences write into the same buffers
/// ([`SlotCache`] in place), so the graphs stay valid until the cache grows.
pub(crate) struct SlotStepper {
    /// A clone of the batch's decoder (the weights are shared handles), owned by the graphs'
    /// closures.
    decoder: Rc<Decoder>,
    capacity: usize,
    graphs: HashMap<usize, (Tensor<1, Int>, SlotGraph)>,
    report: StepReport,
}

impl SlotStepper {
    fn new(decoder: &Decoder) -> Self {
        let report = StepReport { graph: true, ..StepReport::default() };
        Self { decoder: Rc::new(decoder.clone()), capacity: 0, graphs: HashMap::new(), report }
    }

    /// Feeds `tokens[r]` to live row `r` at its position and advances the rows; `None` (and
    /// nothing done) when the rows' bucket does not run on the device. The output is the
    /// graph's: `[rows, vocab]` logits and `[rows]` ids, of which the first `tokens.len()` are
    /// the live rows'.
    fn step(&mut self, decoder: &Decoder, cache: &Rc<RefCell<SlotCache>>, tokens: &[u32]) -> Option<StepOutput> {
        let (live, slots) = (tokens.len(), cache.borrow().slots());
        let rows = graph_rows(live, slots);
        if !self.decoder.steps_rows_on_device(rows) {
            // Eager steps write the buffers through Burn's ops: the recordings are dropped.
            self.graphs.clear();
            return None;
        }
        let device = decoder.device();
        let mut positions = cache.borrow().positions();
        {
            let mut cache = cache.borrow_mut();
            cache.grow(positions.iter().max().copied().unwrap_or(0) + 1);
            if cache.capacity() != self.capacity {
                // New buffers: every recording holds the old ones.
                self.graphs.clear();
                self.capacity = cache.capacity();
            }
        }
        let mut tokens = tokens.to_vec();
        tokens.resize(rows, 0);
        positions.resize(rows, 0);
        let written = match self.graphs.get(&rows) {
            Some((state, _)) => Some(dsocr_nn::overwrite(state, state_values(&tokens, &positions, &device))),
            None => {
                self.record(cache, &tokens, &positions);
                None
            }
        };
        let (_, graph) = self.graphs.get_mut(&rows)?;
        // Safety (`Graph::replay`'s contract): every tensor the recorded step touches is alive,
        // owned by its closure (the inputs, the cache through the shared `Rc`, the decoder
        // clone); the state was refreshed above on this thread's stream and the output is read
        // on it; the cache's buffers are the recorded ones (inserts and moves write in place,
        // growth dropped the recordings above).
        let out = unsafe { graph.replay() }.clone();
        drop(written);
        cache.borrow_mut().advance_live();
        Some(out)
    }

    /// Records the step of `tokens.len()` rows over the current buffers. Its runs write the
    /// same K/V at the same positions, so the extra runs change nothing.
    fn record(&mut self, cache: &Rc<RefCell<SlotCache>>, tokens: &[u32], positions: &[usize]) {
        let started = Instant::now();
        let (heads, device) = (self.decoder.config().num_kv_heads(), self.decoder.device());
        let inputs = SlotStepInputs::new(tokens, positions, heads, self.capacity, &device);
        let state = inputs.state.clone();
        let (decoder, cache) = (self.decoder.clone(), cache.clone());
        let mut step: Box<dyn FnMut() -> StepOutput> =
            Box::new(move || decoder.forward_slots_step(&inputs, &mut cache.borrow_mut()));
        // One eager run, read back, before the recording's warm-up (burn#5772, as `Stepper`).
        let first = step();
        let _ = first.token.into_data();
        let graph = capture(&device, step);
        self.report.hardware = graph.is_hardware();
        self.report.captures += 1;
        self.report.capture_time += started.elapsed();
        self.graphs.insert(tokens.len(), (state, graph));
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
    crate::argmax_ids(logits).into_data().iter::<i64>().map(|id| id as u32).collect()
}
