//! The DeepSeek-OCR language decoder ("DeepSeek3B-MoE-A570M", a DeepSeek-V2-style MoE with
//! plain multi-head attention), its KV cache and greedy generation (spec §6, §7).
//!
//! ```ignore
//! let cfg = DecoderConfig::from_hf_config_file(dir.join("config.json"))?;
//! let decoder = Decoder::load(&vb, &cfg)?;                 // vb at the checkpoint root
//! let embeds = decoder.embed_with_image(&ids, image_token_id, vision_rows)?;
//! let out = generate(&decoder, embeds, &ids, &GenerationConfig::default(), |id| {
//!     print!("{}", tokenizer.decode(id));
//!     ControlFlow::Continue(())
//! })?;
//! ```

mod attention;
mod batch;
mod config;
mod error;
mod generation;
mod kv_cache;
mod layer;
mod mlp;
mod model;
mod moe;
mod rms_norm;
mod rope;
pub mod step;

pub use attention::Attention;
pub use batch::{graph_rows, greedy_tokens, Batcher, Prompt, Sampled, SlotCache, SlotStepInputs};
pub use config::DecoderConfig;
pub use error::DecoderError;
pub use generation::{
    argmax_ids, generate, greedy_token, FinishReason, Generation, GenerationConfig, GenerationTrace, RepeatGuard,
    TraceConfig, DEFAULT_MAX_NEW_TOKENS, TRACE_PREFILL_TAIL,
};
pub use kv_cache::{KvCache, DEFAULT_CHUNK};
pub use layer::{DecoderLayer, FeedForward};
pub use mlp::Mlp;
pub use model::Decoder;
pub use moe::{ExpertDispatch, Moe};
pub use rms_norm::RmsNorm;
pub use rope::Rope;

/// Weight formats and quantization of the decoder's matrices (`Decoder::load_as`).
pub use dsocr_nn::{Quant, WeightFormat};
pub use step::{StepInputs, StepMode, StepOutput, StepReport, GRAPH_CHUNK};
