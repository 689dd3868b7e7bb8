//! DeepSeek-OCR's vision encoder ("DeepEncoder") on Burn: a SAM-B ViTDet image encoder whose
//! compressed output feeds the body of a CLIP-L/14 transformer (spec §5).
//!
//! ```text
//! pixels [B,3,L,L] ─ SAM ─> sam [B,C,q,q] ─ CLIP ─> clip [B,1+q²,W]
//! features [B,q²,W+C] = concat(clip[:,1:], sam flattened row-major)   (CLIP first)
//! ```
//! with `q = L/64` (8, 10, 16, 20 for the 512, 640, 1024, 1280 views) and, in the real model,
//! `C = W = 1024`. `features` is what the DeepSeek-OCR projector consumes.
//!
//! The crate stands alone: [`EncoderConfig`] (defaults = the real model, or read from the HF
//! `config.json`), loading from the original checkpoint names through
//! [`dsocr_weights::VarBuilder`], and a `forward` on normalised pixels.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use burn::tensor::DType;
//! use dsocr_encoder::{pixels_from_chw, DeepEncoder, EncoderConfig};
//! use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = "models/DeepSeek-OCR"; // config.json + model-00001-of-000001.safetensors
//! let device = Backend::Cpu.device(Precision::F32)?;
//! let cfg = EncoderConfig::from_hf_config_file(format!("{dir}/config.json"))?;
//! let vb = VarBuilder::new(Arc::new(SafetensorsFiles::open(dir)?), &device, DType::F32);
//! let encoder = DeepEncoder::load(&vb, &cfg)?; // reads model.sam_model.* and model.vision_model.*
//!
//! // One 1024×1024 RGB view, CHW, normalised as (u/255 − 0.5)/0.5.
//! let pixels = pixels_from_chw(vec![0.0; 3 * 1024 * 1024], 1, 1024, &device, DType::F32)?;
//! let out = encoder.forward(pixels)?;
//! assert_eq!(out.sam.dims(), [1, 1024, 16, 16]);
//! assert_eq!(out.clip.dims(), [1, 257, 1024]);
//! assert_eq!(out.features.dims(), [1, 256, 2048]);
//! # Ok(())
//! # }
//! ```
//!
//! # Precision
//!
//! Every tensor is created in the [`VarBuilder`]'s dtype (position tables are resized on the
//! host in f32 and cast to it once at load time); pixels in another dtype are cast to it at the
//! start of [`DeepEncoder::forward`]. In f32 the outputs match the PyTorch float32 reference to
//! about 1e-5. In f16/bf16 the matmuls, convolutions and residual streams run in that dtype
//! (like the vLLM path, spec §6.8), while LayerNorm and the attention softmax compute in f32
//! and cast back ([`dsocr_nn::LayerNorm`], [`dsocr_nn::attention`]), as HF's
//! autocast does. Unlike HF's autocast run, the CLIP residual stream is not kept in f32
//! (tried on 2026-12-04: docs/parity.md, "CLIP's residual stream in f32").

mod clip;
mod config;
mod error;
pub mod interpolate;
mod sam;

use burn::prelude::*;
use burn::tensor::DType;
use dsocr_weights::VarBuilder;

pub use clip::{Clip, ClipAttention, ClipLayer, ClipMlp};
pub use config::{ClipConfig, EncoderConfig, SamConfig};
pub use dsocr_weights;
pub use error::EncoderError;
pub use sam::{Conv2d, LayerNorm2d, Sam, SamAttention, SamBlock, SamMlp};

/// The view sides DeepSeek-OCR uses: tiny 512, small / Gundam tiles 640, base / Gundam global
/// 1024, large 1280.
pub const VIEW_SIDES: [usize; 4] = [512, 640, 1024, 1280];

/// What the encoder produces for a batch of views.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// SAM output (after neck, net_2, net_3), NCHW `[B, C, q, q]`.
    pub sam: Tensor<4>,
    /// CLIP output, class token first: `[B, 1+q², W]`.
    pub clip: Tensor<3>,
    /// Projector input `[B, q², W+C]`: `concat(clip[:, 1:], sam flattened row-major)`, CLIP
    /// channels first.
    pub features: Tensor<3>,
}

/// DeepEncoder = SAM-B + CLIP-L body.
#[derive(Debug, Clone)]
pub struct DeepEncoder {
    pub sam: Sam,
    pub clip: Clip,
    cfg: EncoderConfig,
    view_sides: Vec<usize>,
    dtype: DType,
}

impl DeepEncoder {
    /// Loads the encoder for the four DeepSeek-OCR view sides ([`VIEW_SIDES`]).
    ///
    /// `vb` points at the checkpoint root: the towers are read from `model.sam_model.*` and
    /// `model.vision_model.*` (the unused `embeddings.patch_embedding` is not required).
    pub fn load(vb: &VarBuilder, cfg: &EncoderConfig) -> Result<Self, EncoderError> {
        Self::load_for_sides(vb, cfg, &VIEW_SIDES)
    }

    /// Like [`DeepEncoder::load`], preparing the position tables for the given square view
    /// sides instead (each a positive multiple of the SAM patch size).
    pub fn load_for_sides(vb: &VarBuilder, cfg: &EncoderConfig, sides: &[usize]) -> Result<Self, EncoderError> {
        cfg.validate()?;
        let patch = cfg.sam.patch_size;
        if let Some(&side) = sides.iter().find(|&&s| s == 0 || s % patch != 0) {
            return Err(EncoderError::Config(format!(
                "view side {side} is not a positive multiple of the patch size {patch}"
            )));
        }
        let mut view_sides = sides.to_vec();
        view_sides.sort_unstable();
        view_sides.dedup();
        let grids: Vec<usize> = view_sides.iter().map(|s| s / patch).collect();
        let sam = Sam::load(&vb.pp("model.sam_model"), &cfg.sam, &grids)?;
        let clip_grids: Vec<usize> = grids.iter().map(|&g| sam.output_side(g)).collect();
        let clip = Clip::load(&vb.pp("model.vision_model"), &cfg.clip, &clip_grids)?;
        Ok(Self { sam, clip, cfg: cfg.clone(), view_sides, dtype: vb.dtype() })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The square view sides this encoder was prepared for.
    pub fn view_sides(&self) -> &[usize] {
        &self.view_sides
    }

    /// The float dtype the encoder computes in (the `VarBuilder`'s).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Encodes a batch of views: `pixels [B, 3, L, L]`, normalised as `(u/255 − 0.5)/0.5`,
    /// with L one of [`DeepEncoder::view_sides`]. All views of a batch share L (batch the tiles
    /// together, the global view separately).
    pub fn forward(&self, pixels: Tensor<4>) -> Result<EncoderOutput, EncoderError> {
        let [_, channels, height, width] = pixels.dims();
        if channels != 3 {
            return Err(EncoderError::Pixels(format!("expected 3 colour channels (NCHW), got {channels}")));
        }
        if height != width || !self.view_sides.contains(&height) {
            return Err(EncoderError::UnsupportedView { height, width, supported: self.view_sides.clone() });
        }
        let pixels = if pixels.dtype() == self.dtype { pixels } else { pixels.cast(self.dtype) };

        let sam = self.sam.forward(pixels)?;
        let clip = self.clip.forward(sam.clone())?;

        let [b, _, q, _] = sam.dims();
        let sam_tokens = sam.clone().flatten::<3>(2, 3).swap_dims(1, 2); // [B, q², C]
        let clip_tokens = clip.clone().narrow(1, 1, q * q); // drop the class token
        let features = Tensor::cat(vec![clip_tokens, sam_tokens], 2);
        debug_assert_eq!(features.dims(), [b, q * q, self.cfg.feature_dim()]);
        Ok(EncoderOutput { sam, clip, features })
    }
}

/// Builds the pixel tensor `[batch, 3, side, side]` from CHW-ordered values (views one after
/// another), created in `dtype` on `device`.
pub fn pixels_from_chw(
    values: Vec<f32>,
    batch: usize,
    side: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor<4>, EncoderError> {
    let expected = batch * 3 * side * side;
    if values.len() != expected {
        return Err(EncoderError::Pixels(format!(
            "{} values for {batch} view(s) of 3x{side}x{side}, expected {expected}",
            values.len()
        )));
    }
    let data = TensorData::new(values, [batch, 3, side, side]).convert_dtype(dtype);
    Ok(Tensor::from_data(data, (device, dtype)))
}
