//! Loading DeepSeek-OCR from a model folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::Device;
use dsocr_decoder::{Decoder, ExpertDispatch, Quant, WeightFormat};
use dsocr_encoder::DeepEncoder;
use dsocr_input::PromptTokenizer;
use dsocr_projector::Projector;
use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder};

use crate::quantized_checkpoint::stored_quant;
use crate::{ModelConfig, ModelError};

/// The three files of a model folder (the layout of the `deepseek-ai/DeepSeek-OCR` repo).
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
}

impl ModelFiles {
    /// Checks that `dir` holds `config.json`, `tokenizer.json` and safetensors weights.
    pub fn in_dir(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            });
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::MissingFile { dir: dir.to_path_buf(), file: "config.json" });
        }
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(ModelError::MissingFile { dir: dir.to_path_buf(), file: "tokenizer.json" });
        }
        Ok(Self { dir: dir.to_path_buf(), config, tokenizer })
    }
}

/// How to load a model: where it runs and in which precision, how the MoE experts are
/// dispatched. Non-exhaustive so that later choices (weight quantization) fit in without
/// breaking callers: build one with [`LoadOptions::new`] and set the public fields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LoadOptions {
    pub backend: Backend,
    pub precision: Precision,
    /// Expert path of the MoE layers ([`ExpertDispatch::Auto`]: by backend).
    pub expert_dispatch: ExpertDispatch,
    /// Weight-only quantization of the decoder's projections and experts (`--quant`): host
    /// matrices on the CPU backends, device matrices dequantized in the matrix-vector kernels
    /// on the GPU ones. The vision tower, embedding, norms and router keep `precision`.
    pub quant: Option<Quant>,
    /// Whether [`quant`](Self::quant) also applies to the lm_head ([`QUANTIZE_LM_HEAD`]).
    pub quantize_lm_head: bool,
    /// A bf16 decoder on the CPU backends copies its weights into huge-page memory
    /// (`--copy-weights`: decode ~18 % faster at full size, ~5.5 GB more resident memory, ~15 s
    /// of load) instead of multiplying the memory-mapped checkpoint in place
    /// ([`WeightFormat::Bf16`]; docs/performance.md).
    pub copy_weights: bool,
}

/// The activation dtype of the decoder when its weights are host bf16 or quantized (the CPU
/// backends): the CPU kernels convert the weights in registers and sum in f32, and flex runs
/// f32 attention, norms and the KV cache without the per-op conversions bf16 tensors cost it
/// (docs/performance.md, "Quantized weights and bf16 on the CPU"). More accurate than bf16
/// arithmetic, too.
pub const CPU_BF16_DECODER_DTYPE: burn::tensor::DType = burn::tensor::DType::F32;

/// Whether a quantized decoder quantizes its lm_head too, by default (docs/parity.md,
/// "Quantized weights": what it costs in greedy agreement and logits).
pub const QUANTIZE_LM_HEAD: bool = true;

impl LoadOptions {
    /// `backend` in `precision`, experts dispatched by backend.
    pub fn new(backend: Backend, precision: Precision) -> Self {
        Self {
            backend,
            precision,
            expert_dispatch: ExpertDispatch::Auto,
            quant: None,
            quantize_lm_head: QUANTIZE_LM_HEAD,
            copy_weights: false,
        }
    }

    /// `backend` in its fast precision (bf16 on CUDA, f16 on WGPU, f32 on the CPU).
    pub fn fast(backend: Backend) -> Self {
        Self::new(backend, backend.fast_precision())
    }
}

/// DeepSeek-OCR: DeepEncoder → projector → MoE decoder, plus its tokenizer, on one device.
pub struct DeepseekOcr {
    pub config: ModelConfig,
    pub encoder: DeepEncoder,
    pub projector: Projector,
    pub decoder: Decoder,
    pub tokenizer: PromptTokenizer,
    pub device: Device,
    pub backend: Backend,
    pub precision: Precision,
    /// The decoder's weight quantization, if any ([`LoadOptions::quant`]).
    pub quant: Option<Quant>,
    /// Wall time of [`DeepseekOcr::load`].
    pub load_time: Duration,
}

impl DeepseekOcr {
    /// Loads a model folder (`config.json`, `model.safetensors` or a sharded index,
    /// `tokenizer.json`) as `options` say. Weights are memory-mapped; each tensor is converted
    /// (if needed) and uploaded on its own, so no second full copy is held.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, ModelError> {
        let start = Instant::now();
        let (backend, precision) = (options.backend, options.precision);
        let files = ModelFiles::in_dir(dir)?;
        let config = ModelConfig::from_file(&files.config)?;
        let tokenizer = PromptTokenizer::from_file(&files.tokenizer)?
            .with_fallback_ids(Some(config.decoder.bos_token_id), Some(config.decoder.eos_token_id));
        let weights = Arc::new(SafetensorsFiles::open(dir)?);
        // A quantized checkpoint (`dsocr quantize`) brings its own format.
        let (quant, quantize_lm_head) = match (stored_quant(&weights)?, options.quant) {
            (None, asked) => (asked, options.quantize_lm_head),
            (Some((stored, lm_head)), None) => (Some(stored), lm_head),
            (Some((stored, lm_head)), Some(asked)) if asked == stored => (Some(stored), lm_head),
            (Some((stored, _)), Some(asked)) => {
                return Err(ModelError::Input(format!(
                    "{} holds {stored} weights (dsocr quantize); they cannot be loaded as {asked}: \
                     leave --quant out, or quantize the float model",
                    dir.display()
                )))
            }
        };
        let device = backend.device(precision)?;
        let vb = VarBuilder::new(weights, &device, precision.dtype());
        let encoder = DeepEncoder::load(&vb, &config.encoder)?;
        let projector = Projector::load(&vb, &config.projector)?;
        // On the CPU backends a bf16 decoder keeps its projections, experts and lm_head as bf16
        // in host memory and computes in f32 (CPU_BF16_DECODER_DTYPE), like a quantized one.
        let host_bf16 = !backend.is_gpu() && precision == Precision::Bf16;
        let float = if host_bf16 { WeightFormat::Bf16 { mapped: !options.copy_weights } } else { WeightFormat::Float };
        let layers = quant.map_or(float, WeightFormat::Quantized);
        let lm_head = if quantize_lm_head { layers } else { float };
        // A GPU decoder with quantized weights keeps `precision` for its activations.
        let host_weights = host_bf16 || (quant.is_some() && !backend.is_gpu());
        let decoder_vb = if host_weights { vb.with_dtype(CPU_BF16_DECODER_DTYPE) } else { vb.clone() };
        let mut decoder = Decoder::load_as(&decoder_vb, &config.decoder, layers, lm_head)?;
        decoder.set_expert_dispatch(options.expert_dispatch);
        Ok(Self {
            config,
            encoder,
            projector,
            decoder,
            tokenizer,
            device,
            backend,
            precision,
            quant,
            load_time: start.elapsed(),
        })
    }
}
