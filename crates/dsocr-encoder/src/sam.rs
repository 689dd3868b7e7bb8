//! SAM-B image encoder (ViTDet) with DeepSeek-OCR's neck and 2-step compressor (spec §5.1).
//!
//! `pixels [B,3,L,L] → patch conv → + abs pos → blocks (windowed / global attention with
//! decomposed relative positions) → neck → net_2 → net_3 → [B, 1024, L/64, L/64]`.
//! The token stream is kept channels-last `[B, g, g, C]` as upstream; so are the convolutions
//! (matrix products over unfolded patches, [`Conv2d`]); only the output is NCHW.
//!
//! Position tables depend only on the grid side, so they are resized on the host once at load
//! time for each grid the encoder is prepared for (see [`crate::DeepEncoder::load_for_sides`]).

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::activation::gelu;
use burn::tensor::ops::PadMode;
use burn::tensor::{DType, Slice};
use dsocr_nn::{attention, gemm, long_attention, long_attention_available, LayerNorm, Linear};
use dsocr_weights::backend::is_host_device;
use dsocr_weights::VarBuilder;

use crate::interpolate::{resize_bicubic_aa, resize_linear};
use crate::{EncoderError, SamConfig};

/// Most elements of one attention group's score matrix on the CPU backends
/// (`SamAttention::forward`): 32 Mi f32 values, 128 MiB.
pub const HOST_SCORE_ELEMENTS: usize = 32 << 20;

/// LayerNorm eps of every SAM norm (blocks and neck).
const LN_EPS: f64 = 1e-6;

/// A 2-D convolution (square kernel, dilation 1, one group) computed channels-last as one
/// matrix product over the unfolded input patches (im2col).
///
/// The stored PyTorch weight `[out, in, k, k]` is reordered once at load time to
/// `[k·k·in, out]` (rows ordered `(ky, kx, c)`, the order [`Conv2d::unfold`] lays the patches
/// out in). A `k × k` stride-`k` convolution without padding (SAM's patch embedding) unfolds
/// with a reshape alone; a 1×1 convolution needs no unfolding at all.
///
/// Accuracy: in f16/bf16 the product accumulates in f32 and rounds its output once (CubeCL's
/// matmul picks an f32 accumulator for half-precision outputs, flex converts to f32), which is
/// what cuDNN does under HF's autocast; CubeCL's direct convolution would accumulate in the
/// half type. In f32 on CUDA the product runs as TF32, like PyTorch's default for cuDNN
/// convolutions.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `[kernel·kernel·in, out]`, rows ordered `(ky, kx, c)`.
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        vb: &VarBuilder,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self, EncoderError> {
        let weight = vb.get("weight", [out_ch, in_ch, kernel, kernel])?;
        let weight = weight.permute([2, 3, 1, 0]).reshape([kernel * kernel * in_ch, out_ch]);
        let bias = if bias { Some(vb.get("bias", [out_ch])?) } else { None };
        Ok(Self { weight, bias, kernel, stride, padding })
    }

    /// Channels-last `[B, H, W, in] → [B, H', W', out]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, _] = x.dims();
        let (ho, wo) = (self.output_side(h), self.output_side(w));
        let patches = self.unfold(x);
        let y = gemm(patches, self.weight.clone());
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        let out = self.weight.dims()[1];
        y.reshape([b, ho, wo, out])
    }

    /// Channels-last `[B, H, W, C]` → the patches `[B·H'·W', k·k·C]`, each row ordered
    /// `(ky, kx, c)`; the zero padding is part of the input as in PyTorch.
    pub fn unfold(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, h, w, c] = x.dims();
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (ho, wo) = (self.output_side(h), self.output_side(w));
        if k == 1 && s == 1 && p == 0 {
            return x.reshape([b * h * w, c]);
        }
        if k == s && p == 0 && h % k == 0 && w % k == 0 {
            // Non-overlapping patches: [B, H'/k·k, W'/k·k, C] → [B, H', W', ky, kx, C].
            return x.reshape([b, ho, k, wo, k, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b * ho * wo, k * k * c]);
        }
        let x = if p > 0 { x.pad([(p, p), (p, p), (0, 0)], PadMode::Constant(0.0)) } else { x };
        let mut taps = Vec::with_capacity(k * k);
        for ky in 0..k {
            for kx in 0..k {
                // Every s-th row from ky and column from kx: the inputs tap (ky, kx) reads.
                let rows = Slice::new(ky as isize, Some((ky + s * (ho - 1) + 1) as isize), s as isize);
                let cols = Slice::new(kx as isize, Some((kx + s * (wo - 1) + 1) as isize), s as isize);
                taps.push(x.clone().slice([Slice::full(), rows, cols, Slice::full()]));
            }
        }
        Tensor::cat(taps, 3).reshape([b * ho * wo, k * k * c])
    }

    /// Output side for an input side.
    pub fn output_side(&self, input: usize) -> usize {
        (input + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// LayerNorm over the channels of every pixel (SAM's `LayerNorm2d`), on a channels-last map.
#[derive(Debug, Clone)]
pub struct LayerNorm2d {
    pub norm: LayerNorm,
}

impl LayerNorm2d {
    pub fn load(vb: &VarBuilder, channels: usize) -> Result<Self, EncoderError> {
        Ok(Self { norm: LayerNorm::load(vb, channels, LN_EPS)? })
    }

    /// `[B, H, W, C] → [B, H, W, C]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.norm.forward(x)
    }
}

/// Relative-position lookups `R[y, ky, c] = table'[y − ky + S − 1, c]` for one S×S token grid,
/// stored transposed for the batched matmuls of [`SamAttention::rel_pos_bias`].
#[derive(Debug, Clone)]
struct RelPos {
    /// `[S (query row), head_dim, S (key row)]`.
    rh_t: Tensor<3>,
    /// `[S (query column), head_dim, S (key column)]`.
    rw_t: Tensor<3>,
    /// The key half of the folded bias ([`fold_width`]): `[S², width − head_dim]`, key
    /// `(ky, kx)` holding a one at `ky` and at `S + kx`, zeros after. Made on first use (only
    /// the flash path needs it).
    key_fold: std::sync::OnceLock<Tensor<2>>,
}

/// Width of the folded product for `head_dim` and an `S × S` grid: the smallest power of 4 that
/// holds `head_dim + 2S` columns, so that its scale `1/√width` is a power of two.
fn fold_width(head_dim: usize, size: usize) -> usize {
    let mut width = 1;
    while width < head_dim + 2 * size {
        width *= 4;
    }
    width
}

/// The one-hot key columns of the fold for an `S × S` grid (see [`RelPos::key_fold`]).
fn key_fold(head_dim: usize, size: usize, device: &Device, dtype: DType) -> Tensor<2> {
    let cols = fold_width(head_dim, size) - head_dim;
    let mut out = vec![0f32; size * size * cols];
    for ky in 0..size {
        for kx in 0..size {
            let row = &mut out[(ky * size + kx) * cols..][..cols];
            row[ky] = 1.0;
            row[size + kx] = 1.0;
        }
    }
    Tensor::from_data(TensorData::new(out, [size * size, cols]).convert_dtype(dtype), (device, dtype))
}

impl RelPos {
    /// `table`: the stored `[rows, head_dim]` table, resized linearly to `2S − 1` rows when its
    /// length differs (upstream `get_rel_pos`, computed in f32 then cast to the weight dtype).
    fn lookup_transposed(vb: &VarBuilder, table: &[f32], rows: usize, head_dim: usize, size: usize) -> Tensor<3> {
        let needed = 2 * size - 1;
        let resized;
        let table = if rows == needed {
            table
        } else {
            resized = resize_linear(table, rows, head_dim, needed);
            &resized
        };
        let mut out = vec![0f32; size * head_dim * size];
        for q in 0..size {
            for k in 0..size {
                let row = &table[(q + size - 1 - k) * head_dim..][..head_dim];
                for (c, &v) in row.iter().enumerate() {
                    out[(q * head_dim + c) * size + k] = v;
                }
            }
        }
        vb.from_host(out, [size, head_dim, size])
    }
}

/// Multi-head attention over an `Sh × Sw` token grid with decomposed relative positions.
#[derive(Debug, Clone)]
pub struct SamAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    head_dim: usize,
    /// Lookups per grid side (one entry, the window side, for windowed blocks).
    rel_pos: BTreeMap<usize, RelPos>,
}

impl SamAttention {
    /// `table_rows`: rows of the stored `rel_pos_{h,w}` tables; `sides`: the grid sides this
    /// attention will run on.
    pub fn load(vb: &VarBuilder, cfg: &SamConfig, table_rows: usize, sides: &[usize]) -> Result<Self, EncoderError> {
        let (dim, head_dim) = (cfg.width, cfg.head_dim());
        let rel_h = vb.get_host_f32("rel_pos_h", &[table_rows, head_dim])?;
        let rel_w = vb.get_host_f32("rel_pos_w", &[table_rows, head_dim])?;
        let rel_pos = sides
            .iter()
            .map(|&s| {
                let rh_t = RelPos::lookup_transposed(vb, &rel_h, table_rows, head_dim, s);
                let rw_t = RelPos::lookup_transposed(vb, &rel_w, table_rows, head_dim, s);
                (s, RelPos { rh_t, rw_t, key_fold: std::sync::OnceLock::new() })
            })
            .collect();
        Ok(Self {
            qkv: Linear::load(&vb.pp("qkv"), dim, 3 * dim, true)?,
            proj: Linear::load(&vb.pp("proj"), dim, dim, true)?,
            heads: cfg.heads,
            head_dim,
            rel_pos,
        })
    }

    /// `[B, Sh, Sw, C] → [B, Sh, Sw, C]`; B counts windows in windowed blocks.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>, EncoderError> {
        let [b, h, w, c] = x.dims();
        let n = h * w;
        // qkv outputs laid out [3][heads][head_dim].
        let qkv = self.qkv.forward(x).reshape([b, n, 3, self.heads, self.head_dim]).permute([2, 0, 3, 1, 4]);
        let [q, k, v]: [Tensor<4>; 3] =
            std::array::from_fn(|i| qkv.clone().narrow(0, i, 1).reshape([b, self.heads, n, self.head_dim]));

        // softmax(q·kᵀ / sqrt(head_dim) + bias) · v; default scale = 1/sqrt(head_dim).
        let y = if long_attention_available(&q) {
            // The bias folded into one product, for the flash kernel.
            let (q, k) = self.fold_rel_pos(q, k, h, w)?;
            long_attention(q, k, v)
        } else {
            // Heads are independent: on the CPU backends they run in groups whose bias and
            // scores stay under HOST_SCORE_ELEMENTS (the global view's 4,096 tokens make
            // [12, 4096, 4096] of each: 805 MB in f32, several copies of which were the peak
            // of a page's memory).
            let per_group = if is_host_device(&q.device()) {
                (HOST_SCORE_ELEMENTS / (b * n * n).max(1)).clamp(1, self.heads)
            } else {
                self.heads
            };
            let mut groups = Vec::with_capacity(self.heads.div_ceil(per_group));
            for first in (0..self.heads).step_by(per_group) {
                let count = per_group.min(self.heads - first);
                let [q, k, v] = [&q, &k, &v].map(|t| t.clone().narrow(1, first, count));
                let bias = self.rel_pos_bias(&q, h, w)?;
                groups.push(attention(q, k, v, Some(bias), None, false));
            }
            if groups.len() == 1 {
                groups.remove(0)
            } else {
                Tensor::cat(groups, 1)
            }
        };
        // Heads concatenated as head * head_dim + d.
        let y = y.swap_dims(1, 2).reshape([b, h, w, c]);
        Ok(self.proj.forward(y))
    }

    /// The additive logits bias `[B, heads, Sh·Sw, Sh·Sw]` from the UNSCALED queries:
    /// `bias[(y,x), (ky,kx)] = q(y,x)·Rh[y,ky] + q(y,x)·Rw[x,kx]` (tables shared by all heads).
    fn rel_pos_bias(&self, q: &Tensor<4>, h: usize, w: usize) -> Result<Tensor<4>, EncoderError> {
        let [b, heads, n, _] = q.dims();
        let (rel_h, rel_w) = rel_pos_terms(self.rel_pos_for(h, w)?, q, h, w);
        let bias = rel_h.reshape([b * heads, n, h, 1]) + rel_w.reshape([b * heads, n, 1, w]);
        Ok(bias.reshape([b, heads, n, n]))
    }

    /// Folds the bias into the product: returns `q' = [q·√(D/d), rel_h·√D, rel_w·√D, 0]` and
    /// `k' = [k, onehot(ky), onehot(kx), 0]`, `D` = [`fold_width`] columns, so that
    /// `q'·k' / √D = q·k / √d + rel_h[ky] + rel_w[kx]`: plain scaled attention over `(q', k', v)`
    /// is SAM's biased attention. For the real model (`d` = 64, D = 256) both factors are powers
    /// of two (2 and 16), so in half precision the fold rounds nothing.
    fn fold_rel_pos(
        &self,
        q: Tensor<4>,
        k: Tensor<4>,
        h: usize,
        w: usize,
    ) -> Result<(Tensor<4>, Tensor<4>), EncoderError> {
        let rel = self.rel_pos_for(h, w)?;
        let (rel_h, rel_w) = rel_pos_terms(rel, &q, h, w);
        let [b, heads, n, d] = q.dims();
        let width = fold_width(d, h);
        let (q_factor, bias_factor) = (((width as f64) / d as f64).sqrt(), (width as f64).sqrt());
        let pad = width - d - h - w;
        let mut q_parts = vec![q.clone() * q_factor, rel_h * bias_factor, rel_w * bias_factor];
        if pad > 0 {
            q_parts.push(Tensor::zeros([b, heads, n, pad], (&q.device(), q.dtype())));
        }
        let key_fold = rel.key_fold.get_or_init(|| key_fold(d, h, &q.device(), q.dtype()));
        let keys = key_fold.clone().reshape([1, 1, n, width - d]).expand([b, heads, n, width - d]);
        Ok((Tensor::cat(q_parts, 3), Tensor::cat(vec![k, keys], 3)))
    }

    fn rel_pos_for(&self, h: usize, w: usize) -> Result<&RelPos, EncoderError> {
        if h != w {
            return Err(EncoderError::Pixels(format!("SAM attention needs a square token grid, got {h}x{w}")));
        }
        self.rel_pos.get(&h).ok_or_else(|| {
            EncoderError::Pixels(format!(
                "no relative-position tables for a {h}x{w} token grid (prepared for sides {:?})",
                self.rel_pos.keys().collect::<Vec<_>>()
            ))
        })
    }
}

/// The two terms of the bias, `rel_h[(y,x), ky] = q(y,x)·Rh[y,ky]` `[B, heads, n, Sh]` and
/// `rel_w[(y,x), kx] = q(y,x)·Rw[x,kx]` `[B, heads, n, Sw]`, for a square grid.
fn rel_pos_terms(rel: &RelPos, q: &Tensor<4>, h: usize, w: usize) -> (Tensor<4>, Tensor<4>) {
    let [b, heads, n, d] = q.dims();
    let bh = b * heads;
    let q = q.clone().reshape([bh, h, w, d]);
    // rel_h[bh, y, x, ky] = Σ_c q[bh, y, x, c] · Rh[y, ky, c]: one matmul per query row y.
    let rel_h = q
        .clone()
        .permute([1, 0, 2, 3])
        .reshape([h, bh * w, d])
        .matmul(rel.rh_t.clone())
        .reshape([h, bh, w, h])
        .permute([1, 0, 2, 3]);
    // rel_w[bh, y, x, kx] = Σ_c q[bh, y, x, c] · Rw[x, kx, c]: one matmul per query column x.
    let rel_w = q
        .permute([2, 0, 1, 3])
        .reshape([w, bh * h, d])
        .matmul(rel.rw_t.clone())
        .reshape([w, bh, h, w])
        .permute([1, 2, 0, 3]);
    (rel_h.reshape([b, heads, n, h]), rel_w.reshape([b, heads, n, w]))
}

/// `Lin2(GELU_erf(Lin1(x)))`.
#[derive(Debug, Clone)]
pub struct SamMlp {
    lin1: Linear,
    lin2: Linear,
}

impl SamMlp {
    pub fn load(vb: &VarBuilder, dim: usize, hidden: usize) -> Result<Self, EncoderError> {
        Ok(Self {
            lin1: Linear::load(&vb.pp("lin1"), dim, hidden, true)?,
            lin2: Linear::load(&vb.pp("lin2"), hidden, dim, true)?,
        })
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.lin2.forward(gelu(self.lin1.forward(x)))
    }
}

/// One pre-norm ViTDet block; `window_size == 0` means global attention.
#[derive(Debug, Clone)]
pub struct SamBlock {
    norm1: LayerNorm,
    attn: SamAttention,
    norm2: LayerNorm,
    mlp: SamMlp,
    window_size: usize,
}

impl SamBlock {
    pub fn load(vb: &VarBuilder, cfg: &SamConfig, index: usize, grids: &[usize]) -> Result<Self, EncoderError> {
        let (window_size, table_rows, sides) = if cfg.is_global(index) {
            (0, 2 * cfg.pos_grid - 1, grids.to_vec())
        } else {
            (cfg.window_size, 2 * cfg.window_size - 1, vec![cfg.window_size])
        };
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), cfg.width, LN_EPS)?,
            attn: SamAttention::load(&vb.pp("attn"), cfg, table_rows, &sides)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), cfg.width, LN_EPS)?,
            mlp: SamMlp::load(&vb.pp("mlp"), cfg.width, cfg.mlp_dim())?,
            window_size,
        })
    }

    /// `[B, g, g, C] → [B, g, g, C]`.
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<4>, EncoderError> {
        let shortcut = x.clone();
        let y = self.norm1.forward(x);
        let y = if self.window_size > 0 {
            let [_, h, w, _] = y.dims();
            let (windows, padded) = window_partition(y, self.window_size);
            window_unpartition(self.attn.forward(windows)?, self.window_size, padded, [h, w])
        } else {
            self.attn.forward(y)?
        };
        let x = shortcut + y;
        Ok(x.clone() + self.mlp.forward(self.norm2.forward(x)))
    }
}

/// Zero-pads `[B, H, W, C]` on the bottom/right to multiples of `ws` (the pad tokens are later
/// attended to without a mask, as upstream) and cuts it into `[B·nH·nW, ws, ws, C]` windows.
/// Returns the windows and the padded `[Hp, Wp]`.
fn window_partition(x: Tensor<4>, ws: usize) -> (Tensor<4>, [usize; 2]) {
    let [b, h, w, c] = x.dims();
    let (pad_h, pad_w) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
    let x = if pad_h > 0 || pad_w > 0 { x.pad([(0, pad_h), (0, pad_w), (0, 0)], PadMode::Constant(0.0)) } else { x };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x.reshape([b, hp / ws, ws, wp / ws, ws, c]).permute([0, 1, 3, 2, 4, 5]).reshape([
        b * (hp / ws) * (wp / ws),
        ws,
        ws,
        c,
    ]);
    (windows, [hp, wp])
}

/// Inverse of [`window_partition`]: merges the windows and crops back to `[B, H, W, C]`.
fn window_unpartition(windows: Tensor<4>, ws: usize, [hp, wp]: [usize; 2], [h, w]: [usize; 2]) -> Tensor<4> {
    let [nw, _, _, c] = windows.dims();
    let b = nw / ((hp / ws) * (wp / ws));
    let x = windows.reshape([b, hp / ws, wp / ws, ws, ws, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, hp, wp, c]);
    if hp == h && wp == w {
        x
    } else {
        x.slice([0..b, 0..h, 0..w, 0..c])
    }
}

/// The SAM tower: pixels `[B, 3, L, L]` → features `[B, downsample_channels[1], q, q]`.
#[derive(Debug, Clone)]
pub struct Sam {
    patch_embed: Conv2d,
    /// Absolute positions per token-grid side g: `[1, g, g, width]`.
    pos_embed: BTreeMap<usize, Tensor<4>>,
    blocks: Vec<SamBlock>,
    neck_conv1: Conv2d,
    neck_norm1: LayerNorm2d,
    neck_conv2: Conv2d,
    neck_norm2: LayerNorm2d,
    net_2: Conv2d,
    net_3: Conv2d,
    cfg: SamConfig,
}

impl Sam {
    /// Loads `<vb>.*` (e.g. `model.sam_model.*`) and prepares the position tables for the
    /// token-grid sides `grids` (view side / patch size).
    pub fn load(vb: &VarBuilder, cfg: &SamConfig, grids: &[usize]) -> Result<Self, EncoderError> {
        let (w, pg) = (cfg.width, cfg.pos_grid);
        let pos_shape = [1, pg, pg, w];
        let host_pos =
            if grids.iter().any(|&g| g != pg) { vb.get_host_f32("pos_embed", &pos_shape)? } else { Vec::new() };
        let mut pos_embed = BTreeMap::new();
        for &g in grids {
            let table = if g == pg {
                vb.get("pos_embed", pos_shape)?
            } else {
                // Antialiased bicubic in f32, cast back to the weight dtype.
                vb.from_host(resize_bicubic_aa(&host_pos, pg, pg, w, g, g), [1, g, g, w])
            };
            pos_embed.insert(g, table);
        }
        let blocks = (0..cfg.layers)
            .map(|i| SamBlock::load(&vb.pp("blocks").pp(i), cfg, i, grids))
            .collect::<Result<Vec<_>, _>>()?;
        let [down1, down2] = cfg.downsample_channels;
        Ok(Self {
            patch_embed: Conv2d::load(&vb.pp("patch_embed").pp("proj"), 3, w, cfg.patch_size, cfg.patch_size, 0, true)?,
            pos_embed,
            blocks,
            neck_conv1: Conv2d::load(&vb.pp("neck").pp(0), w, cfg.out_chans, 1, 1, 0, false)?,
            neck_norm1: LayerNorm2d::load(&vb.pp("neck").pp(1), cfg.out_chans)?,
            neck_conv2: Conv2d::load(&vb.pp("neck").pp(2), cfg.out_chans, cfg.out_chans, 3, 1, 1, false)?,
            neck_norm2: LayerNorm2d::load(&vb.pp("neck").pp(3), cfg.out_chans)?,
            net_2: Conv2d::load(&vb.pp("net_2"), cfg.out_chans, down1, 3, 2, 1, false)?,
            net_3: Conv2d::load(&vb.pp("net_3"), down1, down2, 3, 2, 1, false)?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &SamConfig {
        &self.cfg
    }

    /// The token-grid sides g this tower was prepared for.
    pub fn grids(&self) -> Vec<usize> {
        self.pos_embed.keys().copied().collect()
    }

    /// Side q of the output map for a token grid g (two stride-2 convolutions).
    pub fn output_side(&self, grid: usize) -> usize {
        self.net_3.output_side(self.net_2.output_side(grid))
    }

    /// `[B, 3, L, L]` (normalised, in the weight dtype) → `[B, downsample_channels[1], q, q]`.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<Tensor<4>, EncoderError> {
        let [_, _, height, width] = pixels.dims();
        let g = height / self.cfg.patch_size;
        let pos = match self.pos_embed.get(&g) {
            Some(pos) if height == width && height % self.cfg.patch_size == 0 => pos.clone(),
            _ => {
                return Err(EncoderError::UnsupportedView {
                    height,
                    width,
                    supported: self.pos_embed.keys().map(|g| g * self.cfg.patch_size).collect(),
                })
            }
        };

        let x = self.patch_embed.forward(pixels.permute([0, 2, 3, 1])); // [B, g, g, C]
        let mut x = x + pos;
        for block in &self.blocks {
            x = block.forward(x)?;
        }

        // The neck and the compressor stay channels-last; the result is returned NCHW.
        let x = self.neck_norm1.forward(self.neck_conv1.forward(x));
        let x = self.neck_norm2.forward(self.neck_conv2.forward(x));
        // Compressor: two stride-2 convolutions, no activation or norm.
        Ok(self.net_3.forward(self.net_2.forward(x)).permute([0, 3, 1, 2]))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use burn::tensor::DType;
    use dsocr_weights::{Backend, Precision, SafetensorsFiles};

    use super::*;
    use crate::EncoderConfig;

    fn max_diff(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a.cast(DType::F32) - b.cast(DType::F32)).abs().max().into_scalar()
    }

    /// The fold of the relative-position bias into one product (the flash kernel's input) is
    /// SAM's biased attention: checked with the fixture's global-attention tables (head dim 24,
    /// a 32 × 32 grid, fold width 256) through the plain attention on the CPU. In f32 it equals
    /// the materialised bias; in bf16 both round differently, so each is measured against the
    /// f32 result of the same (rounded) inputs, and the fold may be at most twice as far off
    /// (the fixture's head dim of 24 makes its query factor √(256/24), which rounds; the real
    /// model's factors, 2 and 16, do not).
    #[test]
    fn folded_bias_equals_the_materialised_bias() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny");
        let device = Backend::Cpu.device(Precision::F32).expect("cpu");
        let cfg = EncoderConfig::from_hf_config_file(dir.join("config.json")).expect("config");
        let files = Arc::new(SafetensorsFiles::open(&dir).expect("checkpoint"));
        let block = cfg.sam.global_attn_indexes[0];
        let side = 32;
        let load = |dtype: DType| {
            let vb = VarBuilder::new(files.clone(), &device, dtype);
            let vb = vb.pp("model.sam_model.blocks").pp(block).pp("attn");
            SamAttention::load(&vb, &cfg.sam, 2 * cfg.sam.pos_grid - 1, &[side]).expect("attention")
        };
        let (exact, half) = (load(DType::F32), load(DType::BF16));
        let (heads, d, n) = (exact.heads, exact.head_dim, side * side);
        assert_eq!(fold_width(d, side), 256);
        // Deterministic inputs in [-2, 2), representable in bf16, so both runs see the same values.
        let input = |seed: usize| {
            let len = 2 * heads * n * d;
            let values: Vec<f32> =
                (0..len).map(|j| ((j * 7919 + seed * 104_729) % 1009) as f32 / 252.25 - 2.0).collect();
            Tensor::<4>::from_data(TensorData::new(values, [2, heads, n, d]), &device)
                .cast(DType::BF16)
                .cast(DType::F32)
        };
        let (q, k, v) = (input(1), input(2), input(3));
        let bias = exact.rel_pos_bias(&q, side, side).expect("bias");
        let want = attention(q.clone(), k.clone(), v.clone(), Some(bias), None, false);
        let (qf, kf) = exact.fold_rel_pos(q.clone(), k.clone(), side, side).expect("fold");
        assert_eq!(qf.dims(), [2, heads, n, 256]);
        let folded = attention(qf, kf, v.clone(), None, None, false);
        let diff = max_diff(folded, want.clone());
        assert!(diff < 1e-4, "f32: folded attention differs by {diff}");
        // The bias matters at this size: without it the result is far off.
        let plain = attention(q.clone(), k.clone(), v.clone(), None, None, false);
        assert!(max_diff(plain, want.clone()) > 1e-1, "the bias changed nothing");

        let [qh, kh, vh] = [&q, &k, &v].map(|t| t.clone().cast(DType::BF16));
        let bias = half.rel_pos_bias(&qh, side, side).expect("bias");
        let materialised =
            max_diff(attention(qh.clone(), kh.clone(), vh.clone(), Some(bias), None, false), want.clone());
        let (qf, kf) = half.fold_rel_pos(qh, kh, side, side).expect("fold");
        let folded = max_diff(attention(qf, kf, vh, None, None, false), want);
        assert!(folded <= 2.0 * materialised, "bf16: folded {folded} against materialised {materialised}");
    }
}
