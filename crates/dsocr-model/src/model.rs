//! Loading DeepSeek-OCR from a model folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::prelude::Device;
use dsocr_decoder::Decoder;
use dsocr_encoder::DeepEncoder;
use dsocr_projector::Projector;
use dsocr_prompt::PromptTokenizer;
use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder};

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
    /// Wall time of [`DeepseekOcr::load`].
    pub load_time: Duration,
}

impl DeepseekOcr {
    /// Loads a model folder (`config.json`, `model.safetensors` or a sharded index,
    /// `tokenizer.json`) onto `backend` in `precision`. Weights are memory-mapped; each tensor
    /// is converted (if needed) and uploaded on its own, so no second full copy is held.
    pub fn load(dir: &Path, backend: Backend, precision: Precision) -> Result<Self, ModelError> {
        let start = Instant::now();
        let files = ModelFiles::in_dir(dir)?;
        let config = ModelConfig::from_file(&files.config)?;
        let tokenizer = PromptTokenizer::from_file(&files.tokenizer)?
            .with_fallback_ids(Some(config.decoder.bos_token_id), Some(config.decoder.eos_token_id));
        let device = backend.device(precision)?;
        let weights = Arc::new(SafetensorsFiles::open(dir)?);
        let vb = VarBuilder::new(weights, &device, precision.dtype());
        let encoder = DeepEncoder::load(&vb, &config.encoder)?;
        let projector = Projector::load(&vb, &config.projector)?;
        let decoder = Decoder::load(&vb, &config.decoder)?;
        Ok(Self {
            config,
            encoder,
            projector,
            decoder,
            tokenizer,
            device,
            backend,
            precision,
            load_time: start.elapsed(),
        })
    }
}
