use burn::prelude::*;
use dsocr_nn::Linear;
use dsocr_weights::{VarBuilder, WeightError};
use serde::Deserialize;

use crate::layout::{layout_tokens, TileGrid};

/// `projector_config` of the HF `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProjectorConfig {
    /// Width of the fused `[CLIP | SAM]` features (2048 in the real model).
    pub input_dim: usize,
    /// Language-model width (1280 in the real model).
    pub n_embed: usize,
    #[serde(default = "default_projector_type")]
    pub projector_type: String,
}

fn default_projector_type() -> String {
    "linear".to_string()
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self { input_dim: 2048, n_embed: 1280, projector_type: default_projector_type() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error("projector_type `{0}` is not supported (DeepSeek-OCR uses `linear`)")]
    UnsupportedType(String),
    #[error("vision features have shape {found:?}, expected {expected}")]
    Shape { found: Vec<usize>, expected: String },
}

/// Linear projector plus the two learned layout vectors.
#[derive(Debug, Clone)]
pub struct Projector {
    pub linear: Linear,
    /// `model.image_newline`, `[n_embed]`: ends every row of a token grid.
    pub image_newline: Tensor<1>,
    /// `model.view_seperator` (sic), `[n_embed]`: closes the image.
    pub view_separator: Tensor<1>,
}

impl Projector {
    /// Loads `model.projector.layers.*`, `model.image_newline`, `model.view_seperator`
    /// from a builder at the checkpoint root.
    pub fn load(vb: &VarBuilder, cfg: &ProjectorConfig) -> Result<Self, ProjectorError> {
        if cfg.projector_type != "linear" {
            return Err(ProjectorError::UnsupportedType(cfg.projector_type.clone()));
        }
        let vb = vb.pp("model");
        Ok(Self {
            linear: Linear::load(&vb.pp("projector").pp("layers"), cfg.input_dim, cfg.n_embed, true)?,
            image_newline: vb.get("image_newline", [cfg.n_embed])?,
            view_separator: vb.get("view_seperator", [cfg.n_embed])?,
        })
    }

    /// `[B, q², input_dim]` → `[B, q², n_embed]`.
    pub fn forward(&self, features: Tensor<3>) -> Tensor<3> {
        self.linear.forward(features)
    }

    /// Projects the global view (and tiles, if any) and lays them out as the `[N, n_embed]`
    /// sequence written into the prompt's image positions.
    pub fn embed_image(
        &self,
        global_features: Tensor<3>,
        tiles: Option<(Tensor<3>, TileGrid)>,
    ) -> Result<Tensor<2>, ProjectorError> {
        let [b, _, width] = global_features.dims();
        if b != 1 || width != self.linear.in_dim() {
            return Err(ProjectorError::Shape {
                found: global_features.dims().to_vec(),
                expected: format!("[1, q², {}]", self.linear.in_dim()),
            });
        }
        let global = self.forward(global_features);
        let tiles = match tiles {
            Some((features, grid)) => {
                let [p, _, w] = features.dims();
                if p != grid.cols * grid.rows || w != self.linear.in_dim() {
                    return Err(ProjectorError::Shape {
                        found: features.dims().to_vec(),
                        expected: format!("[{}, q², {}]", grid.cols * grid.rows, self.linear.in_dim()),
                    });
                }
                Some((self.forward(features), grid))
            }
            None => None,
        };
        layout_tokens(global, tiles, &self.image_newline, &self.view_separator)
    }
}
