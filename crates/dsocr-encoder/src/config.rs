//! Sizes of the two vision towers.
//!
//! Upstream builds both towers from constants hard-coded in `deepencoder.py`; the HF
//! `config.json` repeats them under `vision_config.width.{sam_vit_b, "clip-l-14-224"}`. Small test
//! checkpoints (the reference-tiny fixture) only differ in those keys, so we read them from there
//! and fall back to the real model's values for every key the file leaves out.
//!
//! `vision_config.mlp_ratio` (3.7362) and `vision_config.image_size` in the real file do NOT
//! describe the architecture and are ignored (spec §1.2, pitfall 22): both MLPs are 4× wide.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EncoderError;

/// SAM-B image encoder (ViTDet) with the DeepSeek-OCR neck and 2-step compressor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamConfig {
    /// Token width (768).
    pub width: usize,
    /// Number of transformer blocks (12).
    pub layers: usize,
    pub heads: usize,
    /// Blocks that attend over the whole grid; all others use windows.
    pub global_attn_indexes: Vec<usize>,
    /// Neck output channels (256).
    pub out_chans: usize,
    /// Output channels of `net_2` and `net_3` (512, 1024); the last is the SAM feature width.
    pub downsample_channels: [usize; 2],
    /// Side of the attention windows, in tokens (14).
    pub window_size: usize,
    /// Patch-embedding kernel and stride (16).
    pub patch_size: usize,
    /// Side of the stored absolute-position grid (64 = 1024 / 16), also the grid the global
    /// blocks' relative-position tables were trained for (2·64−1 rows).
    pub pos_grid: usize,
    /// MLP hidden width = `mlp_ratio × width`.
    pub mlp_ratio: usize,
}

impl Default for SamConfig {
    fn default() -> Self {
        Self {
            width: 768,
            layers: 12,
            heads: 12,
            global_attn_indexes: vec![2, 5, 8, 11],
            out_chans: 256,
            downsample_channels: [512, 1024],
            window_size: 14,
            patch_size: 16,
            pos_grid: 64,
            mlp_ratio: 4,
        }
    }
}

impl SamConfig {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    pub fn mlp_dim(&self) -> usize {
        self.width * self.mlp_ratio
    }

    /// Channels of the SAM output fed to CLIP (`downsample_channels[1]`).
    pub fn output_channels(&self) -> usize {
        self.downsample_channels[1]
    }

    pub fn is_global(&self, block: usize) -> bool {
        self.global_attn_indexes.contains(&block)
    }
}

/// CLIP-L/14 body (its patch conv is not used: SAM features are its patch tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// Token width (1024); must equal the SAM output channels.
    pub width: usize,
    /// Number of transformer layers (24).
    pub layers: usize,
    pub heads: usize,
    /// Image side the position table was trained for (224).
    pub image_size: usize,
    /// Patch side (14): the stored position table has (224/14)² + 1 = 257 rows.
    pub patch_size: usize,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self { width: 1024, layers: 24, heads: 16, image_size: 224, patch_size: 14 }
    }
}

impl ClipConfig {
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// MLP hidden width: always 4 × width (the config's `mlp_ratio` 3.7362 is not used).
    pub fn mlp_dim(&self) -> usize {
        4 * self.width
    }

    /// Side of the stored position grid (16).
    pub fn pos_grid(&self) -> usize {
        self.image_size / self.patch_size
    }
}

/// Both towers of the DeepEncoder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub sam: SamConfig,
    pub clip: ClipConfig,
}

impl EncoderConfig {
    /// Reads the vision sizes from a parsed HF `config.json` (the whole file, not
    /// `vision_config`). Keys that are absent take the real model's values.
    pub fn from_hf_config(config: &Value) -> Result<Self, EncoderError> {
        let widths = config.get("vision_config").and_then(|v| v.get("width"));
        let sam_json = widths.and_then(|w| w.get("sam_vit_b"));
        let clip_json = widths.and_then(|w| w.get("clip-l-14-224"));

        let d = SamConfig::default();
        let sam = SamConfig {
            width: usize_key(sam_json, "sam_vit_b", "width", d.width)?,
            layers: usize_key(sam_json, "sam_vit_b", "layers", d.layers)?,
            heads: usize_key(sam_json, "sam_vit_b", "heads", d.heads)?,
            global_attn_indexes: usize_list_key(sam_json, "sam_vit_b", "global_attn_indexes", &d.global_attn_indexes)?,
            out_chans: usize_key(sam_json, "sam_vit_b", "out_chans", d.out_chans)?,
            downsample_channels: {
                let list = usize_list_key(sam_json, "sam_vit_b", "downsample_channels", &d.downsample_channels)?;
                <[usize; 2]>::try_from(list.as_slice()).map_err(|_| {
                    EncoderError::Config(format!(
                        "vision_config.width.sam_vit_b.downsample_channels must have 2 entries, found {}",
                        list.len()
                    ))
                })?
            },
            window_size: usize_key(sam_json, "sam_vit_b", "window_size", d.window_size)?,
            ..d
        };

        let d = ClipConfig::default();
        let clip = ClipConfig {
            width: usize_key(clip_json, "clip-l-14-224", "width", d.width)?,
            layers: usize_key(clip_json, "clip-l-14-224", "layers", d.layers)?,
            heads: usize_key(clip_json, "clip-l-14-224", "heads", d.heads)?,
            image_size: usize_key(clip_json, "clip-l-14-224", "image_size", d.image_size)?,
            patch_size: usize_key(clip_json, "clip-l-14-224", "patch_size", d.patch_size)?,
        };

        let cfg = Self { sam, clip };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses an HF `config.json` file, see [`EncoderConfig::from_hf_config`].
    pub fn from_hf_config_file(path: impl AsRef<Path>) -> Result<Self, EncoderError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| EncoderError::Io { path: path.to_path_buf(), source })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| EncoderError::Config(format!("{} is not valid JSON: {e}", path.display())))?;
        Self::from_hf_config(&json)
    }

    /// Checks that the sizes fit together (head splits, SAM output = CLIP width, ...).
    pub fn validate(&self) -> Result<(), EncoderError> {
        let bad = |msg: String| Err(EncoderError::Config(msg));
        let (s, c) = (&self.sam, &self.clip);
        if s.width == 0 || s.heads == 0 || s.width % s.heads != 0 {
            return bad(format!("SAM width {} is not divisible into {} heads", s.width, s.heads));
        }
        if c.width == 0 || c.heads == 0 || c.width % c.heads != 0 {
            return bad(format!("CLIP width {} is not divisible into {} heads", c.width, c.heads));
        }
        if let Some(&i) = s.global_attn_indexes.iter().find(|&&i| i >= s.layers) {
            return bad(format!("SAM global attention index {i} is not below the {} layers", s.layers));
        }
        if s.window_size == 0 || s.patch_size == 0 || s.pos_grid == 0 || s.mlp_ratio == 0 || s.out_chans == 0 {
            return bad("SAM window_size, patch_size, pos_grid, mlp_ratio and out_chans must be positive".into());
        }
        if s.downsample_channels.contains(&0) {
            return bad("SAM downsample_channels must be positive".into());
        }
        if s.output_channels() != c.width {
            return bad(format!(
                "the SAM output has {} channels but CLIP takes {}-wide tokens",
                s.output_channels(),
                c.width
            ));
        }
        if c.patch_size == 0 || c.image_size % c.patch_size != 0 || c.image_size == 0 {
            return bad(format!("CLIP image_size {} is not a multiple of patch_size {}", c.image_size, c.patch_size));
        }
        Ok(())
    }

    /// Channels of [`crate::EncoderOutput::features`]: CLIP width + SAM output channels.
    pub fn feature_dim(&self) -> usize {
        self.clip.width + self.sam.output_channels()
    }
}

fn usize_key(obj: Option<&Value>, section: &str, key: &str, default: usize) -> Result<usize, EncoderError> {
    match obj.and_then(|o| o.get(key)) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => as_usize(v).ok_or_else(|| {
            EncoderError::Config(format!(
                "vision_config.width.{section}.{key} must be a non-negative integer, found {v}"
            ))
        }),
    }
}

fn usize_list_key(
    obj: Option<&Value>,
    section: &str,
    key: &str,
    default: &[usize],
) -> Result<Vec<usize>, EncoderError> {
    match obj.and_then(|o| o.get(key)) {
        None | Some(Value::Null) => Ok(default.to_vec()),
        Some(v) => {
            v.as_array().and_then(|items| items.iter().map(as_usize).collect::<Option<Vec<_>>>()).ok_or_else(|| {
                EncoderError::Config(format!(
                    "vision_config.width.{section}.{key} must be a list of non-negative integers, found {v}"
                ))
            })
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_config_gives_the_real_architecture() {
        // The vision part of the original config.json (spec §1.2): out_chans and window_size
        // are absent, mlp_ratio 3.7362 must not matter.
        let json: Value = serde_json::from_str(
            r#"{"vision_config": {"image_size": 1024, "mlp_ratio": 3.7362, "model_name": "deeplip_b_l",
                "model_type": "vision", "width": {
                  "clip-l-14-224": {"heads": 16, "image_size": 224, "layers": 24, "patch_size": 14, "width": 1024},
                  "sam_vit_b": {"downsample_channels": [512, 1024], "global_attn_indexes": [2, 5, 8, 11],
                                "heads": 12, "layers": 12, "width": 768}}}}"#,
        )
        .unwrap();
        let cfg = EncoderConfig::from_hf_config(&json).unwrap();
        assert_eq!(cfg, EncoderConfig::default());
        assert_eq!(cfg.clip.mlp_dim(), 4096);
        assert_eq!(cfg.sam.mlp_dim(), 3072);
        assert_eq!(cfg.clip.pos_grid(), 16);
        assert_eq!(cfg.feature_dim(), 2048);
    }

    #[test]
    fn missing_vision_config_takes_defaults() {
        let cfg = EncoderConfig::from_hf_config(&serde_json::json!({})).unwrap();
        assert_eq!(cfg, EncoderConfig::default());
    }

    #[test]
    fn tiny_fixture_config() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference-tiny/config.json");
        let cfg = EncoderConfig::from_hf_config_file(path).unwrap();
        assert_eq!(cfg.sam.width, 48);
        assert_eq!(cfg.sam.layers, 4);
        assert_eq!(cfg.sam.heads, 2);
        assert_eq!(cfg.sam.global_attn_indexes, vec![1, 3]);
        assert_eq!(cfg.sam.out_chans, 16);
        assert_eq!(cfg.sam.downsample_channels, [32, 64]);
        assert_eq!(cfg.sam.window_size, 14);
        assert_eq!(cfg.clip, ClipConfig { width: 64, layers: 2, heads: 4, image_size: 224, patch_size: 14 });
    }

    #[test]
    fn bad_values_are_errors() {
        let wrong_type = serde_json::json!({"vision_config": {"width": {"sam_vit_b": {"width": "768"}}}});
        assert!(matches!(EncoderConfig::from_hf_config(&wrong_type), Err(EncoderError::Config(_))));
        let mismatch = serde_json::json!({"vision_config": {"width": {"clip-l-14-224": {"width": 512, "heads": 8}}}});
        assert!(matches!(EncoderConfig::from_hf_config(&mismatch), Err(EncoderError::Config(_))));
        let three = serde_json::json!({"vision_config": {"width": {"sam_vit_b": {"downsample_channels": [1, 2, 3]}}}});
        assert!(matches!(EncoderConfig::from_hf_config(&three), Err(EncoderError::Config(_))));
    }
}
