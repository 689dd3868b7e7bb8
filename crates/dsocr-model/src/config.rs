//! The HF `config.json` of DeepSeek-OCR, split into the configs of the three blocks.

use std::path::Path;

use dsocr_decoder::DecoderConfig;
use dsocr_encoder::EncoderConfig;
use dsocr_projector::ProjectorConfig;

use crate::ModelError;

/// Everything the model reads from `config.json`:
/// - the language keys at the top level (the HF path reads those; `language_config` repeats them),
/// - the vision sizes under `vision_config.width.sam_vit_b` / `["clip-l-14-224"]`
///   (defaults equal the real model; `vision_config.mlp_ratio` is not the architecture),
/// - `projector_config`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub encoder: EncoderConfig,
    pub projector: ProjectorConfig,
    pub decoder: DecoderConfig,
}

impl Default for ModelConfig {
    /// The real DeepSeek-OCR.
    fn default() -> Self {
        Self {
            encoder: EncoderConfig::default(),
            projector: ProjectorConfig::default(),
            decoder: DecoderConfig::default(),
        }
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Config { path: path.to_path_buf(), message: format!("not valid JSON: {e}") })?;
        Self::from_json(&json).map_err(|message| ModelError::Config { path: path.to_path_buf(), message })
    }

    pub fn from_json(json: &serde_json::Value) -> Result<Self, String> {
        let encoder = EncoderConfig::from_hf_config(json).map_err(|e| e.to_string())?;
        let projector = match json.get("projector_config") {
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| format!("projector_config: {e}"))?,
            None => ProjectorConfig::default(),
        };
        let decoder: DecoderConfig = serde_json::from_value(json.clone()).map_err(|e| format!("language keys: {e}"))?;
        decoder.validate().map_err(|e| e.to_string())?;
        let config = Self { encoder, projector, decoder };
        config.check()?;
        Ok(config)
    }

    /// Cross-block consistency: the fused vision width feeds the projector, whose output is the
    /// language model's width.
    fn check(&self) -> Result<(), String> {
        let fused = self.encoder.feature_dim();
        if self.projector.input_dim != fused {
            return Err(format!(
                "projector_config.input_dim is {} but CLIP width + SAM output channels = {fused}",
                self.projector.input_dim
            ));
        }
        if self.projector.n_embed != self.decoder.hidden_size {
            return Err(format!(
                "projector_config.n_embed is {} but hidden_size is {}",
                self.projector.n_embed, self.decoder.hidden_size
            ));
        }
        Ok(())
    }
}
