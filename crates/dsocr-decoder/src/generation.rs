//! Greedy generation with the KV cache, EOS stop, length cap and the repeat guards of spec §7.
//!
//! Per step exactly one value crosses from the device to the host: the sampled token id. Bans
//! go the other way as a short list of ids written to `-inf` on the device.

use std::ops::ControlFlow;

use burn::prelude::*;
use burn::tensor::{DType, IndexingUpdateOp};

use crate::kv_cache::DEFAULT_CHUNK;
use crate::step::{StepMode, StepReport, Stepper, GRAPH_CHUNK};
use crate::{Decoder, DecoderError};

/// Default `max_new_tokens` of the low-level [`GenerationConfig`] (the request-level defaults of
/// dsocr are `dsocr::OcrOptions::official()`).
pub const DEFAULT_MAX_NEW_TOKENS: usize = 8192;

/// Number of prompt positions whose logits a trace keeps (the golden `prefill_logits_tail`).
pub const TRACE_PREFILL_TAIL: usize = 8;

/// A no-repeat n-gram rule: ids it bans get `-inf` before the argmax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepeatGuard {
    /// transformers `no_repeat_ngram_size = n` (the HF `infer` path, n = 20 / 35): over the
    /// WHOLE sequence, prompt included, no window, no whitelist. With `s` the sequence so far
    /// (length `L`), bans `s[i + n − 1]` for every `0 ≤ i ≤ L − n` with
    /// `s[i .. i + n − 1] == s[L − n + 1 .. L]`.
    Whole { n: usize },
    /// The official vLLM rule (`NoRepeatNGramLogitsProcessor`, n = 30 / window 90 for images,
    /// 20 / 50 for PDFs): over the GENERATED ids `g` only (length `L`), nothing while `L < n`,
    /// else bans `g[i + n − 1]` for every `max(0, L − window) ≤ i ≤ L − n` with
    /// `g[i .. i + n − 1] == g[L − n + 1 .. L]`, except the whitelisted ids.
    Window { n: usize, window: usize, whitelist: Vec<u32> },
}

impl RepeatGuard {
    pub fn validate(&self) -> Result<(), DecoderError> {
        match self {
            RepeatGuard::Whole { n } | RepeatGuard::Window { n, .. } if *n == 0 => {
                Err(DecoderError::Generation("the repeat guard's n-gram size must be positive".into()))
            }
            RepeatGuard::Window { window: 0, .. } => {
                Err(DecoderError::Generation("the repeat guard's window must be positive".into()))
            }
            _ => Ok(()),
        }
    }

    /// Ids banned for the next token, sorted and without duplicates. `history` is the prompt
    /// followed by the generated ids; the first `prompt_len` of them are the prompt.
    pub fn banned(&self, history: &[u32], prompt_len: usize) -> Vec<u32> {
        let mut banned = match self {
            RepeatGuard::Whole { n } => ngram_bans(history, *n, 0),
            RepeatGuard::Window { n, window, whitelist } => {
                let generated = &history[prompt_len.min(history.len())..];
                let mut ids = windowed_bans(generated, *n, *window);
                ids.retain(|id| !whitelist.contains(id));
                ids
            }
        };
        banned.sort_unstable();
        banned.dedup();
        banned
    }

    /// How many final steps [`FinishReason::Repetition`] looks back: the window for
    /// [`Window`](RepeatGuard::Window), `n` for [`Whole`](RepeatGuard::Whole).
    pub fn lookback(&self) -> usize {
        match self {
            RepeatGuard::Whole { n } => *n,
            RepeatGuard::Window { window, .. } => *window,
        }
    }
}

/// transformers' `_calc_banned_ngram_tokens` on `seq[from..]` (n-grams starting at `i ≥ from`).
fn ngram_bans(seq: &[u32], n: usize, from: usize) -> Vec<u32> {
    let len = seq.len();
    if len < n {
        // `cur_len + 1 < n` bans nothing, and at `len == n − 1` no complete n-gram exists yet.
        return Vec::new();
    }
    let prefix = &seq[len + 1 - n..];
    (from..=len - n).filter(|&i| seq[i..i + n - 1] == *prefix).map(|i| seq[i + n - 1]).collect()
}

/// The official vLLM processor on the generated ids.
fn windowed_bans(generated: &[u32], n: usize, window: usize) -> Vec<u32> {
    let len = generated.len();
    if len < n {
        return Vec::new();
    }
    if n == 1 {
        // Upstream takes the prefix as `input_ids[-(n - 1):]`, which for n = 1 is `[-0:]`, the
        // whole list: it never equals an empty (n−1)-gram, so n = 1 bans nothing. Kept as is.
        return Vec::new();
    }
    ngram_bans(generated, n, len.saturating_sub(window))
}

/// Why generation stopped: the one finish reason of dsocr (the JSON output, the CLI and the
/// server use this type; its serde and [`as_str`](Self::as_str) names are `stop`, `length`,
/// `repetition`, `cancelled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The EOS token was generated (it is the last id of [`Generation::ids`]).
    Stop,
    /// `max_new_tokens`, or the context limit (`prompt + generated ≤ max_position_embeddings`),
    /// was reached without EOS, and [`Repetition`](FinishReason::Repetition) does not apply.
    Length,
    /// The length limit was reached without EOS AND a repeat guard is configured AND the guard
    /// banned at least one id (after its whitelist) at one of the last `guard.lookback()`
    /// steps (`window` for the windowed rule, `n` for the whole-sequence rule), i.e. the model
    /// was still trying to repeat an n-gram when it ran out of tokens. This is the page the
    /// official PDF script drops (`SKIP_REPEAT`).
    Repetition,
    /// The token callback returned [`ControlFlow::Break`].
    Cancelled,
}

impl FinishReason {
    /// The machine name: `stop`, `length`, `repetition`, `cancelled` (as in the JSON output).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Repetition => "repetition",
            FinishReason::Cancelled => "cancelled",
        }
    }

    /// The reason in words, for messages to a person.
    pub fn describe(self) -> &'static str {
        match self {
            FinishReason::Stop => "end of text",
            FinishReason::Length => "token limit reached",
            FinishReason::Repetition => {
                "repetition loop (token limit reached while the repeat guard was banning repeats)"
            }
            FinishReason::Cancelled => "cancelled",
        }
    }

    /// Whether the model ended the text itself (EOS).
    pub fn is_complete(self) -> bool {
        self == FinishReason::Stop
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`generate`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationConfig {
    /// At most this many new tokens (further capped so that prompt + generated ≤
    /// `max_position_embeddings`).
    pub max_new_tokens: usize,
    /// Generation stops after this token (DeepSeek-OCR: 1). An id outside the vocabulary never
    /// stops it.
    pub eos_token_id: u32,
    pub repeat_guard: Option<RepeatGuard>,
    /// Also return a [`GenerationTrace`] (for parity checks).
    pub trace: Option<TraceConfig>,
    /// How the decode steps run (default: as replayed graphs where the device supports it).
    pub step: StepMode,
    /// Positions the K/V buffers grow by; `None`: [`DEFAULT_CHUNK`] for eager steps,
    /// [`GRAPH_CHUNK`] for graphs (each growth records the step again).
    pub kv_chunk: Option<usize>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: DEFAULT_MAX_NEW_TOKENS,
            eos_token_id: 1,
            repeat_guard: None,
            trace: None,
            step: StepMode::default(),
            kv_chunk: None,
        }
    }
}

/// Which intermediate values a traced generation keeps (on the device; nothing extra is read
/// back during generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceConfig {
    /// Logits of this many final prompt positions (the golden `prefill_logits_tail` has 8).
    pub prefill_logits_tail: usize,
    /// Logits of this many first decode steps (the golden `decode_logits`).
    pub decode_logits_steps: usize,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self { prefill_logits_tail: TRACE_PREFILL_TAIL, decode_logits_steps: 0 }
    }
}

/// Intermediate values of a traced generation, as device tensors in f32.
#[derive(Debug, Clone)]
pub struct GenerationTrace {
    /// `[num_layers + 1, hidden]` at the last prompt position (see [`Decoder::forward_traced`]).
    pub prefill_hidden_last: Tensor<2>,
    /// `[rows, vocab]`: logits of the last `rows = max(1, min(prefill_logits_tail, prompt_len))`
    /// prompt positions.
    pub prefill_logits_tail: Tensor<2>,
    /// `[steps, vocab]`, row j: the logits after feeding generated token j, for the first
    /// `min(decode_logits_steps, decode steps run)` steps; `None` when that is 0.
    pub decode_logits: Option<Tensor<2>>,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated ids (EOS included when it was produced), prompt excluded.
    pub ids: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_len: usize,
    /// Index (into `ids`) of the last step at which the repeat guard banned something.
    pub last_guard_step: Option<usize>,
    pub trace: Option<GenerationTrace>,
    /// How the decode steps ran (graph or eager, recordings).
    pub steps: StepReport,
}

/// Greedy decoding: prefill `prompt_embeds` `[1, L, d]` (whose ids are `prompt_ids`, used by
/// the repeat guard), then one token at a time through the KV cache.
///
/// `on_token` is called with every generated id as soon as it is chosen, EOS included;
/// returning [`ControlFlow::Break`] stops generation ([`FinishReason::Cancelled`]).
pub fn generate<F>(
    decoder: &Decoder,
    prompt_embeds: Tensor<3>,
    prompt_ids: &[u32],
    cfg: &GenerationConfig,
    mut on_token: F,
) -> Result<Generation, DecoderError>
where
    F: FnMut(u32) -> ControlFlow<()>,
{
    let dcfg = decoder.config();
    let (prompt_len, budget) = check_prompt(decoder, &prompt_embeds, prompt_ids, cfg)?;
    let vocab = dcfg.vocab_size;

    // Prefill.
    let graph = cfg.step.uses_graph(decoder);
    let chunk = cfg.kv_chunk.unwrap_or(if graph { GRAPH_CHUNK } else { DEFAULT_CHUNK });
    let mut cache = decoder.new_cache_with_chunk(chunk);
    let mut trace = None;
    let mut logits = match cfg.trace {
        Some(tc) => {
            let (hidden, hidden_trace) = decoder.forward_traced(prompt_embeds, &mut cache);
            let rows = tc.prefill_logits_tail.clamp(1, prompt_len);
            let tail = decoder.logits(hidden.narrow(1, prompt_len - rows, rows)); // [1, rows, vocab]
            trace = Some(GenerationTrace {
                prefill_hidden_last: hidden_trace,
                prefill_logits_tail: tail.clone().reshape([rows, vocab]),
                decode_logits: None,
            });
            tail.narrow(1, rows - 1, 1)
        }
        None => {
            let hidden = decoder.forward(prompt_embeds, &mut cache);
            decoder.logits(hidden.narrow(1, prompt_len - 1, 1))
        }
    };
    let trace_steps = cfg.trace.map_or(0, |tc| tc.decode_logits_steps);
    let mut decode_rows: Vec<Tensor<2>> = Vec::new();

    let mut stepper = Stepper::new(decoder, cache, graph);
    // The argmax of `logits` when the last step computed it on the device.
    let mut argmax: Option<Tensor<1, Int>> = None;
    let mut history = prompt_ids.to_vec();
    let mut ids = Vec::new();
    let mut last_guard_step = None;
    let finish = loop {
        if ids.len() >= budget {
            // Only reached when the budget is 0.
            break length_or_repetition(cfg, ids.len(), last_guard_step);
        }
        let banned = match &cfg.repeat_guard {
            Some(guard) => guard.banned(&history, prompt_len),
            None => Vec::new(),
        };
        if !banned.is_empty() {
            last_guard_step = Some(ids.len());
        }
        let token = match argmax.take() {
            Some(id) if banned.is_empty() => id.into_scalar::<i64>() as u32,
            _ => greedy_token(logits.clone().reshape([1, vocab]), &banned),
        };
        ids.push(token);
        history.push(token);
        let flow = on_token(token);
        if token == cfg.eos_token_id {
            break FinishReason::Stop;
        }
        if flow.is_break() {
            break FinishReason::Cancelled;
        }
        if ids.len() >= budget {
            // The last token is never fed back: its logits would not be used.
            break length_or_repetition(cfg, ids.len(), last_guard_step);
        }
        let out = stepper.step(token, prompt_len + ids.len() - 1);
        if decode_rows.len() < trace_steps {
            // A copy: in graph mode the logits buffer is the graph's, rewritten by the next step.
            decode_rows.push(out.logits.clone().add_scalar(0.0));
        }
        logits = out.logits.unsqueeze::<3>();
        argmax = Some(out.token);
    };
    if let Some(trace) = trace.as_mut() {
        if !decode_rows.is_empty() {
            trace.decode_logits = Some(Tensor::cat(decode_rows, 0));
        }
    }
    Ok(Generation { ids, finish, prompt_len, last_guard_step, trace, steps: stepper.report() })
}

/// Checks a prompt for generation (`[1, L, d]` embeddings of the `L` ids, within the context,
/// ids in the vocabulary, a valid guard); returns `L` and the token budget (`max_new_tokens`
/// capped by the context).
pub(crate) fn check_prompt(
    decoder: &Decoder,
    prompt_embeds: &Tensor<3>,
    prompt_ids: &[u32],
    cfg: &GenerationConfig,
) -> Result<(usize, usize), DecoderError> {
    let dcfg = decoder.config();
    let [batch, prompt_len, width] = prompt_embeds.dims();
    if batch != 1 || prompt_len != prompt_ids.len() || width != dcfg.hidden_size {
        return Err(DecoderError::Shape(format!(
            "prompt embeddings are {:?}, expected [1, {}, {}]",
            [batch, prompt_len, width],
            prompt_ids.len(),
            dcfg.hidden_size
        )));
    }
    if prompt_len == 0 {
        return Err(DecoderError::Generation("the prompt is empty".into()));
    }
    if prompt_len > dcfg.max_position_embeddings {
        return Err(DecoderError::Generation(format!(
            "the prompt has {prompt_len} tokens, more than max_position_embeddings {}",
            dcfg.max_position_embeddings
        )));
    }
    decoder.check_ids(prompt_ids)?;
    if let Some(guard) = &cfg.repeat_guard {
        guard.validate()?;
    }
    Ok((prompt_len, cfg.max_new_tokens.min(dcfg.max_position_embeddings - prompt_len)))
}

pub(crate) fn length_or_repetition(
    cfg: &GenerationConfig,
    generated: usize,
    last_guard_step: Option<usize>,
) -> FinishReason {
    match (&cfg.repeat_guard, last_guard_step) {
        (Some(guard), Some(step)) if step >= generated.saturating_sub(guard.lookback()) => FinishReason::Repetition,
        _ => FinishReason::Length,
    }
}

/// Argmax over `logits` `[1, vocab]` after setting the `banned` ids to `-inf`; ties go to the
/// lowest id (Burn's documented `argmax` contract: "Non-NaN ties also return the lowest
/// coordinate", which flex and the CubeCL reduce kernels implement; tested here on flex).
/// The returned id is the only value read back to the host.
pub fn greedy_token(logits: Tensor<2>, banned: &[u32]) -> u32 {
    let logits = logits.cast(DType::F32);
    let logits = if banned.is_empty() {
        logits
    } else {
        let device = logits.device();
        let n = banned.len();
        let ids = Tensor::<1, Int>::from_data(
            TensorData::new(banned.iter().map(|&id| id as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let rows = logits.dims()[0];
        let fill = Tensor::<2>::full([rows, n], f32::NEG_INFINITY, (&device, DType::F32));
        logits.select_assign(1, ids, fill, IndexingUpdateOp::Assign)
    };
    argmax_ids(logits).into_scalar::<i64>() as u32
}

/// Argmax of each row of `logits` `[rows, vocab]` as ids `[rows]` on the device, lowest id on
/// ties (see [`greedy_token`]).
pub fn argmax_ids(logits: Tensor<2>) -> Tensor<1, Int> {
    let [rows, vocab] = logits.dims();
    match argmax_split(vocab) {
        // One long row is reduced by few GPU threads (3.6 ms for the 129,280 logits on the
        // H100, docs/performance.md); split, every block's maximum is found in parallel.
        Some(width) if !dsocr_weights::backend::is_host_device(&logits.device()) => argmax_two_stage(logits, width),
        _ => logits.argmax(1).reshape([rows]),
    }
}

/// Argmax of each `[vocab]` row as `[vocab / width, width]`: the maximum of every block, then
/// the best block. Both stages keep the lowest index on ties, so the result is the lowest id
/// among equal maxima, as a one-stage argmax.
fn argmax_two_stage(logits: Tensor<2>, width: usize) -> Tensor<1, Int> {
    let [rows, vocab] = logits.dims();
    let blocks = vocab / width;
    let (maxima, columns) = logits.reshape([rows, blocks, width]).max_dim_with_indices(2); // [rows, blocks, 1]
    let block = maxima.reshape([rows, blocks]).argmax(1); // [rows, 1]
    let column = columns.reshape([rows, blocks]).gather(1, block.clone());
    (block * width as i64 + column).reshape([rows])
}

/// The row width of the two-stage argmax: the divisor of `vocab` closest to its square root
/// from above, if the split gives at least 16 rows (129,280 → 320 rows of 404).
fn argmax_split(vocab: usize) -> Option<usize> {
    let root = (vocab as f64).sqrt().ceil() as usize;
    (root..=vocab / 16).find(|w| vocab.is_multiple_of(*w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsocr_weights::{Backend, Precision};

    fn whole(n: usize, seq: &[u32]) -> Vec<u32> {
        RepeatGuard::Whole { n }.banned(seq, 0)
    }

    #[test]
    fn whole_sequence_rule() {
        // n = 3, sequence a b c a b → prefix (a, b) occurred at 0 followed by c → ban c.
        assert_eq!(whole(3, &[1, 2, 3, 1, 2]), vec![3]);
        // Several earlier occurrences → every follower banned.
        assert_eq!(whole(3, &[1, 2, 3, 1, 2, 4, 1, 2]), vec![3, 4]);
        // No complete n-gram yet.
        assert_eq!(whole(3, &[1, 2]), Vec::<u32>::new());
        assert_eq!(whole(3, &[1]), Vec::<u32>::new());
        // The prompt counts: prompt [7, 8, 9], generated [7, 8] → ban 9.
        assert_eq!(RepeatGuard::Whole { n: 3 }.banned(&[7, 8, 9, 7, 8], 3), vec![9]);
        // n = 1 bans every id seen so far (transformers' behaviour).
        assert_eq!(whole(1, &[5, 3, 5]), vec![3, 5]);
        // n = 2: a a → prefix (a) followed by a → ban a.
        assert_eq!(whole(2, &[4, 4]), vec![4]);
    }

    #[test]
    fn windowed_rule_scope_whitelist_and_boundary() {
        let guard = |n, window, whitelist: Vec<u32>| RepeatGuard::Window { n, window, whitelist };
        // Only generated ids count: the same history with the repeat inside the prompt bans nothing.
        let history = [1, 2, 3, 1, 2];
        assert_eq!(guard(3, 100, vec![]).banned(&history, 0), vec![3]);
        assert_eq!(guard(3, 100, vec![]).banned(&history, 3), Vec::<u32>::new());
        // Whitelisted ids are never banned.
        assert_eq!(guard(3, 100, vec![3]).banned(&history, 0), Vec::<u32>::new());
        let g = [1, 2, 3, 1, 2, 4, 1, 2];
        assert_eq!(guard(3, 100, vec![4]).banned(&g, 0), vec![3]);
        // Window boundary: L = 8, prefix (1, 2); n-gram starts i in max(0, L − window)..=L − n = 5.
        // Matches at i = 0 (1, 2, 3) and i = 3 (1, 2, 4).
        assert_eq!(guard(3, 8, vec![]).banned(&g, 0), vec![3, 4]);
        assert_eq!(guard(3, 6, vec![]).banned(&g, 0), vec![4]);
        assert_eq!(guard(3, 5, vec![]).banned(&g, 0), vec![4]);
        assert_eq!(guard(3, 4, vec![]).banned(&g, 0), Vec::<u32>::new());
        assert_eq!(guard(3, 3, vec![]).banned(&g, 0), Vec::<u32>::new());
        // Fewer than n generated ids: nothing (even if the prompt would match).
        assert_eq!(guard(3, 10, vec![]).banned(&[1, 2, 3, 1, 2], 3), Vec::<u32>::new());
        // n = 1: upstream's `[-0:]` prefix quirk → never bans.
        assert_eq!(guard(1, 10, vec![]).banned(&[5, 5, 5], 0), Vec::<u32>::new());
        assert!(guard(0, 10, vec![]).validate().is_err());
        assert!(guard(3, 0, vec![]).validate().is_err());
    }

    #[test]
    fn argmax_ties_take_lowest_id_and_bans_apply() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        // Small rows (scalar path) and a vocabulary-sized row (SIMD path).
        for vocab in [7usize, 512, 129280] {
            let mut v = vec![0.0f32; vocab];
            let (a, b, c) = (vocab / 3, vocab / 2, vocab - 1);
            v[a] = 5.0;
            v[b] = 5.0;
            v[c] = 5.0;
            let logits = Tensor::<2>::from_data(TensorData::new(v, [1, vocab]), &device);
            assert_eq!(greedy_token(logits.clone(), &[]) as usize, a, "vocab {vocab}");
            assert_eq!(greedy_token(logits.clone(), &[a as u32]) as usize, b, "vocab {vocab}");
            assert_eq!(greedy_token(logits, &[a as u32, b as u32]) as usize, c, "vocab {vocab}");
        }
    }

    /// The two-stage argmax used on GPUs picks the same id as a plain argmax, ties included.
    #[test]
    fn two_stage_argmax_keeps_the_lowest_id() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        assert_eq!(argmax_split(129_280), Some(404));
        assert_eq!(argmax_split(1_000), Some(40));
        assert_eq!(argmax_split(7), None);
        let vocab = 1_000;
        let values: Vec<f32> = (0..vocab).map(|i| ((i * 7919) % 1_000) as f32 / 1_000.0).collect();
        for (peaks, want) in [(vec![3usize], 3usize), (vec![977, 45], 45), (vec![40, 39], 39), (vec![999, 960], 960)] {
            let mut v = values.clone();
            for &p in &peaks {
                v[p] = 5.0; // equal maxima in different blocks and inside one block
            }
            let logits = Tensor::<2>::from_data(TensorData::new(v, [1, vocab]), &device);
            assert_eq!(argmax_two_stage(logits.clone(), 40).into_scalar::<i64>() as usize, want, "peaks {peaks:?}");
            assert_eq!(greedy_token(logits, &[]) as usize, want);
        }
        // Several rows at once (a batched step), each with its own peaks.
        let cases = [(vec![3usize], 3usize), (vec![977, 45], 45), (vec![40, 39], 39), (vec![999, 960], 960)];
        let mut all = Vec::new();
        for (peaks, _) in &cases {
            let mut v = values.clone();
            for &p in peaks {
                v[p] = 5.0;
            }
            all.extend(v);
        }
        let logits = Tensor::<2>::from_data(TensorData::new(all, [cases.len(), vocab]), &device);
        let got: Vec<usize> = argmax_two_stage(logits, 40).into_data().iter::<i64>().map(|i| i as usize).collect();
        assert_eq!(got, cases.iter().map(|(_, want)| *want).collect::<Vec<_>>());
    }

    #[test]
    fn repetition_is_length_with_recent_guard_activity() {
        let cfg = |guard| GenerationConfig { repeat_guard: guard, ..GenerationConfig::default() };
        let window = Some(RepeatGuard::Window { n: 3, window: 8, whitelist: vec![] });
        assert_eq!(length_or_repetition(&cfg(window.clone()), 24, Some(16)), FinishReason::Repetition);
        assert_eq!(length_or_repetition(&cfg(window.clone()), 24, Some(15)), FinishReason::Length);
        assert_eq!(length_or_repetition(&cfg(window), 24, None), FinishReason::Length);
        assert_eq!(
            length_or_repetition(&cfg(Some(RepeatGuard::Whole { n: 3 })), 24, Some(21)),
            FinishReason::Repetition
        );
        assert_eq!(length_or_repetition(&cfg(Some(RepeatGuard::Whole { n: 3 })), 24, Some(20)), FinishReason::Length);
        assert_eq!(length_or_repetition(&cfg(None), 24, Some(23)), FinishReason::Length);
    }
}
