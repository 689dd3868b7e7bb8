//! CLIP-L/14 body fed with SAM features (spec §5.2).
//!
//! `SAM [B, C, q, q] → row-major tokens [B, q², C] → prepend class embedding → + position table
//! (16×16 grid resized to q×q) → pre_layrnorm → pre-norm layers → [B, 1+q², W]`.
//! The stored `embeddings.patch_embedding` conv is never used (not even loaded), and there is
//! no post-layernorm.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use dsocr_nn::{attention, LayerNorm, Linear};
use dsocr_weights::VarBuilder;

use crate::interpolate::resize_bicubic_aa;
use crate::{ClipConfig, EncoderError};

/// LayerNorm eps of every CLIP norm.
const LN_EPS: f64 = 1e-5;

/// `x · sigmoid(1.702 x)`.
fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.clone() * sigmoid(x * 1.702)
}

/// Full bidirectional multi-head self-attention with a fused qkv projection.
#[derive(Debug, Clone)]
pub struct ClipAttention {
    qkv_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    pub fn load(vb: &VarBuilder, cfg: &ClipConfig) -> Result<Self, EncoderError> {
        let dim = cfg.width;
        Ok(Self {
            qkv_proj: Linear::load(&vb.pp("qkv_proj"), dim, 3 * dim, true)?,
            out_proj: Linear::load(&vb.pp("out_proj"), dim, dim, true)?,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `[B, N, W] → [B, N, W]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, n, w] = x.dims();
        // qkv_proj outputs laid out [3][heads][head_dim].
        let qkv = self.qkv_proj.forward(x).reshape([b, n, 3, self.heads, self.head_dim]).permute([2, 0, 3, 1, 4]);
        let [q, k, v]: [Tensor<4>; 3] =
            std::array::from_fn(|i| qkv.clone().narrow(0, i, 1).reshape([b, self.heads, n, self.head_dim]));
        // Default scale = 1/sqrt(head_dim), no mask.
        let y = attention(q, k, v, None, None, false);
        self.out_proj.forward(y.swap_dims(1, 2).reshape([b, n, w]))
    }
}

/// `fc2(quick_gelu(fc1(x)))`.
#[derive(Debug, Clone)]
pub struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
}

impl ClipMlp {
    pub fn load(vb: &VarBuilder, cfg: &ClipConfig) -> Result<Self, EncoderError> {
        Ok(Self {
            fc1: Linear::load(&vb.pp("fc1"), cfg.width, cfg.mlp_dim(), true)?,
            fc2: Linear::load(&vb.pp("fc2"), cfg.mlp_dim(), cfg.width, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(quick_gelu(self.fc1.forward(x)))
    }
}

/// One pre-norm transformer layer.
#[derive(Debug, Clone)]
pub struct ClipLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    mlp: ClipMlp,
}

impl ClipLayer {
    pub fn load(vb: &VarBuilder, cfg: &ClipConfig) -> Result<Self, EncoderError> {
        Ok(Self {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), cfg.width, LN_EPS)?,
            self_attn: ClipAttention::load(&vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), cfg.width, LN_EPS)?,
            mlp: ClipMlp::load(&vb.pp("mlp"), cfg)?,
        })
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.self_attn.forward(self.layer_norm1.forward(x));
        x.clone() + self.mlp.forward(self.layer_norm2.forward(x))
    }
}

/// The CLIP tower: SAM features `[B, W, q, q]` → `[B, 1+q², W]` (class token first).
#[derive(Debug, Clone)]
pub struct Clip {
    class_embedding: Tensor<1>,
    /// Position table per patch-grid side q: `[1+q², W]`, class row first.
    position_embedding: BTreeMap<usize, Tensor<2>>,
    pre_layrnorm: LayerNorm,
    layers: Vec<ClipLayer>,
    cfg: ClipConfig,
}

impl Clip {
    /// Loads `<vb>.*` (e.g. `model.vision_model.*`) and prepares the position tables for the
    /// patch-grid sides `grids` (the SAM output sides).
    pub fn load(vb: &VarBuilder, cfg: &ClipConfig, grids: &[usize]) -> Result<Self, EncoderError> {
        let (w, pg) = (cfg.width, cfg.pos_grid());
        let emb = vb.pp("embeddings");
        let pos_name = "position_embedding.weight";
        let pos_shape = [1 + pg * pg, w];
        let host_pos =
            if grids.iter().any(|&q| q != pg) { emb.get_host_f32(pos_name, &pos_shape)? } else { Vec::new() };
        let mut position_embedding = BTreeMap::new();
        for &q in grids {
            let table = if q == pg {
                emb.get(pos_name, pos_shape)?
            } else {
                // The class row stays; the pg×pg grid (row-major, channels last) is resized with
                // antialiased bicubic in f32 and cast back to the weight dtype.
                let (cls, grid) = host_pos.split_at(w);
                let mut values = cls.to_vec();
                values.extend(resize_bicubic_aa(grid, pg, pg, w, q, q));
                vb.from_host(values, [1 + q * q, w])
            };
            position_embedding.insert(q, table);
        }
        let layers = (0..cfg.layers)
            .map(|i| ClipLayer::load(&vb.pp("transformer").pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            class_embedding: emb.get("class_embedding", [w])?,
            position_embedding,
            pre_layrnorm: LayerNorm::load(&vb.pp("pre_layrnorm"), w, LN_EPS)?,
            layers,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    /// `[B, W, q, q]` SAM features → `[B, 1+q², W]`.
    pub fn forward(&self, sam: Tensor<4>) -> Result<Tensor<3>, EncoderError> {
        let [b, c, h, w] = sam.dims();
        let pos = match self.position_embedding.get(&h) {
            Some(pos) if h == w && c == self.cfg.width => pos.clone(),
            _ => {
                return Err(EncoderError::Pixels(format!(
                    "CLIP takes [B, {}, q, q] features with q in {:?}, got [{b}, {c}, {h}, {w}]",
                    self.cfg.width,
                    self.position_embedding.keys().collect::<Vec<_>>()
                )))
            }
        };

        let patches = sam.flatten::<3>(2, 3).swap_dims(1, 2); // [B, q², W], row-major
        let cls = self.class_embedding.clone().reshape([1, 1, c]).expand([b, 1, c]);
        let x = Tensor::cat(vec![cls, patches], 1) + pos.unsqueeze::<3>();
        let mut x = self.pre_layrnorm.forward(x);
        for layer in &self.layers {
            x = layer.forward(x);
        }
        Ok(x)
    }
}
