#!/usr/bin/env python3
"""Plain PyTorch DeepSeek-OCR inference: the speed (and parity) reference for dsocr.

Written from /work/shared/docs/deepseek-ocr-spec.md (section numbers below refer to it); no
upstream or `transformers` model code is used. Only torch, safetensors, numpy and Pillow.

Two modes:
  --check FIXTURE_DIR  run every case of tests/fixtures/reference-tiny on CPU in float32 and
                       compare every golden tensor (vision 1e-4, hidden/logits 1e-3, ids exact).
  --bench MODEL_DIR    time load / vision / prefill / decode / page stream (bf16 on CUDA by
                       default) and print a markdown table plus a JSON file.

The decoder runs eagerly, the way the Hugging Face remote code does (one Python loop over the
routed experts per MoE layer, one host sync per layer, no CUDA graphs, no fused kernels); it is
a reference for "plain PyTorch" speed, not an optimised engine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors.torch import load_file

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_FIXTURE = SCRIPT_DIR.parent / "tests" / "fixtures" / "reference-tiny"
REAL_IMAGE_TOKEN_ID = 128815  # "<image>" in the real tokenizer (spec §4.1)
BOS_ID, EOS_ID = 0, 1


# ---------------------------------------------------------------------------------------------
# §1 Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class SamConfig:
    width: int = 768
    layers: int = 12
    heads: int = 12
    global_attn_indexes: tuple = (2, 5, 8, 11)
    downsample_channels: tuple = (512, 1024)
    out_chans: int = 256
    window_size: int = 14
    patch_size: int = 16
    pos_grid: int = 64  # pos_embed is [1, 64, 64, width] (1024 / 16)
    mlp_ratio: int = 4
    eps: float = 1e-6


@dataclass
class ClipConfig:
    width: int = 1024
    layers: int = 24
    heads: int = 16
    pos_grid: int = 16  # 224 / 14; the table has 1 + 16*16 rows
    mlp_ratio: int = 4
    eps: float = 1e-5


@dataclass
class LanguageConfig:
    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848
    moe_intermediate_size: int = 896
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    num_experts_per_tok: int = 6
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace and i % self.moe_layer_freq == 0


@dataclass
class ModelConfig:
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    lm: LanguageConfig = field(default_factory=LanguageConfig)
    projector_in: int = 2048
    projector_out: int = 1280

    @staticmethod
    def from_json(path: Path) -> "ModelConfig":
        raw = json.loads(Path(path).read_text())
        lang = dict(raw.get("language_config") or {})
        lang.update({k: v for k, v in raw.items() if not isinstance(v, dict)})  # top level wins
        lm_fields = LanguageConfig.__dataclass_fields__
        lm = LanguageConfig(**{k: v for k, v in lang.items() if k in lm_fields and v is not None})
        widths = (raw.get("vision_config") or {}).get("width") or {}
        s = widths.get("sam_vit_b") or {}
        sam = SamConfig(
            width=s.get("width", 768),
            layers=s.get("layers", 12),
            heads=s.get("heads", 12),
            global_attn_indexes=tuple(s.get("global_attn_indexes", (2, 5, 8, 11))),
            downsample_channels=tuple(s.get("downsample_channels", (512, 1024))),
            out_chans=s.get("out_chans", 256),
            window_size=s.get("window_size", 14),
        )
        c = widths.get("clip-l-14-224") or {}
        clip = ClipConfig(
            width=c.get("width", 1024),
            layers=c.get("layers", 24),
            heads=c.get("heads", 16),
            pos_grid=c.get("image_size", 224) // c.get("patch_size", 14),
        )
        p = raw.get("projector_config") or {}
        return ModelConfig(sam, clip, lm, p.get("input_dim", 2048), p.get("n_embed", lm.hidden_size))


# ---------------------------------------------------------------------------------------------
# §5.6 Interpolation kernels (PyTorch's own, computed in float32 and cast back)
# ---------------------------------------------------------------------------------------------


def resize_grid_bicubic_aa(grid_nchw: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize of a [1, C, h, w] position grid to size×size, in float32."""
    out = F.interpolate(grid_nchw.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.to(grid_nchw.dtype)


def resize_table_linear(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linear (align_corners=False) resize of a [L, C] table along L, in float32."""
    t = table.float().t().unsqueeze(0)  # [1, C, L]
    out = F.interpolate(t, size=length, mode="linear", align_corners=False)
    return out[0].t().to(table.dtype)


# ---------------------------------------------------------------------------------------------
# §5.1 SAM-B (ViTDet image encoder)
# ---------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an NCHW map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        v = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(v + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class SamPatchEmbed(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size, bias=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).permute(0, 2, 3, 1)  # [B, g, g, C], channels last


def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """R[i, j] = rel_pos'[i - j + size - 1], rel_pos' linearly resized to 2*size-1 rows if needed."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = resize_table_linear(rel_pos, max_dist)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    rel = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[rel.long()]  # [q_size, k_size, head_dim]


class SamAttention(nn.Module):
    """Multi-head attention with decomposed relative-position bias (unscaled q, per head)."""

    def __init__(self, cfg: SamConfig, table_len: int):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.width // cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=True)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=True)
        self.rel_pos_h = nn.Parameter(torch.zeros(table_len, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(table_len, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [b, heads, h*w, hd]
        rh = rel_pos_table(h, h, self.rel_pos_h)  # [h, h, hd]
        rw = rel_pos_table(w, w, self.rel_pos_w)  # [w, w, hd]
        rq = q.reshape(b, self.heads, h, w, self.head_dim)
        rel_h = torch.einsum("bnyxc,ykc->bnyxk", rq, rh)  # [b, n, h, w, kh]
        rel_w = torch.einsum("bnyxc,xkc->bnyxk", rq, rw)  # [b, n, h, w, kw]
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(b, h, w, c)
        return self.proj(out)


class SamMlp(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.lin1 = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width)
        self.lin2 = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))  # exact erf GELU


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad [B, H, W, C] on bottom/right to multiples of ws, split into [B*nW, ws, ws, C]."""
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(x: torch.Tensor, ws: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Merge windows back into [B, Hp, Wp, C] and crop to [B, H, W, C]."""
    hp, wp = padded
    h, w = size
    b = x.shape[0] // ((hp // ws) * (wp // ws))
    x = x.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


class SamBlock(nn.Module):
    def __init__(self, cfg: SamConfig, is_global: bool):
        super().__init__()
        self.window = 0 if is_global else cfg.window_size
        table_len = 2 * cfg.pos_grid - 1 if is_global else 2 * cfg.window_size - 1
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = SamAttention(cfg, table_len)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = SamMlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        y = self.norm1(x)
        if self.window:
            size = (y.shape[1], y.shape[2])
            y, padded = window_partition(y, self.window)  # pad AFTER norm1: pad tokens are zeros
            y = self.attn(y)
            y = window_unpartition(y, self.window, padded, size)
        else:
            y = self.attn(y)
        x = shortcut + y
        return x + self.mlp(self.norm2(x))


class SamEncoder(nn.Module):
    """pixels [B, 3, L, L] -> [B, downsample_channels[-1], L/64, L/64]."""

    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = SamPatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid, cfg.pos_grid, cfg.width))
        self.blocks = nn.ModuleList(SamBlock(cfg, i in cfg.global_attn_indexes) for i in range(cfg.layers))
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.width, cfg.out_chans, 1, bias=False),
            LayerNorm2d(cfg.out_chans, cfg.eps),
            nn.Conv2d(cfg.out_chans, cfg.out_chans, 3, padding=1, bias=False),
            LayerNorm2d(cfg.out_chans, cfg.eps),
        )
        c2, c3 = cfg.downsample_channels
        self.net_2 = nn.Conv2d(cfg.out_chans, c2, 3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1, bias=False)

    def abs_pos(self, g: int) -> torch.Tensor:
        pos = self.pos_embed
        if g != pos.shape[1]:
            pos = resize_grid_bicubic_aa(pos.permute(0, 3, 1, 2), g).permute(0, 2, 3, 1)
        return pos

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)
        x = x + self.abs_pos(x.shape[1])
        for block in self.blocks:
            x = block(x)
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))  # no activation or norm in between


# ---------------------------------------------------------------------------------------------
# §5.2 CLIP-L/14 body fed with SAM features
# ---------------------------------------------------------------------------------------------


class ClipEmbeddings(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.pos_grid = cfg.pos_grid
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.patch_embedding = nn.Conv2d(3, cfg.width, 14, stride=14, bias=False)  # stored, never used
        self.position_embedding = nn.Embedding(1 + cfg.pos_grid**2, cfg.width)

    def abs_pos(self, q: int) -> torch.Tensor:
        table = self.position_embedding.weight  # [1 + 16*16, W]
        if q == self.pos_grid:
            return table
        cls, grid = table[:1], table[1:]
        grid = grid.reshape(1, self.pos_grid, self.pos_grid, -1).permute(0, 3, 1, 2)
        grid = resize_grid_bicubic_aa(grid, q).permute(0, 2, 3, 1).reshape(q * q, -1)
        return torch.cat([cls, grid], dim=0)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        b, _, q, _ = sam_features.shape
        tokens = sam_features.flatten(2).transpose(1, 2)  # [B, q*q, W], row-major
        cls = self.class_embedding.to(tokens.dtype).expand(b, 1, -1)
        x = torch.cat([cls, tokens], dim=1)
        return x + self.abs_pos(q)[None]


class ClipAttention(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.width // cfg.heads
        self.qkv_proj = nn.Linear(cfg.width, 3 * cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv_proj(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # bidirectional, scale 1/sqrt(hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ClipMlp(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class ClipLayer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.self_attn = ClipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = ClipMlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTransformer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipLayer(cfg) for _ in range(cfg.layers))


class ClipBody(nn.Module):
    """SAM features [B, W, q, q] -> [B, 1 + q*q, W] (class token first, no post-LN)."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.embeddings = ClipEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.transformer = ClipTransformer(cfg)

    def forward(self, sam_features: torch.Tensor) -> torch.Tensor:
        x = self.pre_layrnorm(self.embeddings(sam_features))
        for layer in self.transformer.layers:
            x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------
# §5.3 Fusion and projector, §5.4 layout
# ---------------------------------------------------------------------------------------------


class Projector(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.layers = nn.Linear(d_in, d_out)

    def forward(self, clip_out: torch.Tensor, sam_out: torch.Tensor) -> torch.Tensor:
        feat = torch.cat([clip_out[:, 1:], sam_out.flatten(2).transpose(1, 2)], dim=-1)  # [CLIP | SAM]
        return self.layers(feat)


def layout_image_tokens(
    global_feat: torch.Tensor,
    tile_feat: torch.Tensor | None,
    grid: tuple[int, int],
    newline: torch.Tensor,
    separator: torch.Tensor,
) -> torch.Tensor:
    """[stitched tiles + newline per row] + [global + newline per row] + separator -> [N, D]."""
    d = global_feat.shape[-1]
    qb = math.isqrt(global_feat.shape[1])
    g = global_feat[0].reshape(qb, qb, d)
    g = torch.cat([g, newline.expand(qb, 1, d)], dim=1).reshape(-1, d)
    parts = [g, separator.reshape(1, d)]
    if tile_feat is not None:
        cols, rows = grid
        qt = math.isqrt(tile_feat.shape[1])
        t = tile_feat.reshape(rows, cols, qt, qt, d).permute(0, 2, 1, 3, 4).reshape(rows * qt, cols * qt, d)
        t = torch.cat([t, newline.expand(rows * qt, 1, d)], dim=1).reshape(-1, d)
        parts.insert(0, t)
    return torch.cat(parts, dim=0)


# ---------------------------------------------------------------------------------------------
# §6 Language decoder
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)  # normalised value cast back BEFORE the weight multiply


class Rope:
    """NeoX rotate-half RoPE over the full head_dim; cos/sin in float32, cast to the activation dtype."""

    def __init__(self, head_dim: int, theta: float, max_len: int, device: torch.device):
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float().to(device) / head_dim))
        pos = torch.arange(max_len, device=device).float()
        ang = pos[:, None] * inv_freq[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()  # [max_len, head_dim] float32

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat([-b, a], dim=-1)

    def apply(self, x: torch.Tensor, start: int) -> torch.Tensor:
        t = x.shape[-2]
        cos = self.cos[start : start + t].to(x.dtype)
        sin = self.sin[start : start + t].to(x.dtype)
        return x * cos + self.rotate_half(x) * sin


class KVCache:
    """Preallocated post-RoPE K and V for every layer: [layers, B, heads, max_len, head_dim]."""

    def __init__(self, cfg: LanguageConfig, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} > {self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Plain MHA (use_mla false), no biases, RoPE on q and k, SDPA."""

    def __init__(self, cfg: LanguageConfig, layer_idx: int):
        super().__init__()
        if cfg.num_key_value_heads != cfg.num_attention_heads:
            raise ValueError("this reference implements plain MHA only (num_key_value_heads == num_attention_heads)")
        self.layer_idx = layer_idx
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, start: int, rope: Rope, cache: KVCache) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q, k = rope.apply(q, start), rope.apply(k, start)
        k_all, v_all = cache.update(self.layer_idx, start, k, v)
        if t == 1:
            out = F.scaled_dot_product_attention(q, k_all, v_all)
        elif start == 0:
            out = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=True)
        else:  # chunk after cached tokens: causal with an offset
            mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (dense layer 0, every expert, the shared experts)."""

    def __init__(self, d: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, width, bias=False)
        self.up_proj = nn.Linear(d, width, bias=False)
        self.down_proj = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))


class MoE(nn.Module):
    """Softmax router (fp32), greedy top-k without renormalisation, HF-style loop over experts."""

    def __init__(self, cfg: LanguageConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.norm_topk = cfg.norm_topk_prob
        self.scale = cfg.routed_scaling_factor
        self.gate = Router(cfg)
        self.experts = nn.ModuleList(Mlp(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts))
        self.shared_experts = Mlp(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])
        probs = F.linear(xf, self.gate.weight).float().softmax(dim=-1)
        weights, experts = torch.topk(probs, self.top_k, dim=-1, sorted=False)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights * self.scale
        # group the (token, slot) assignments by expert; one host sync per layer, like HF
        n_tok = xf.shape[0]
        flat = experts.reshape(-1)  # [T*k] expert of each (token, slot)
        order = flat.argsort()
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        grouped = xf.index_select(0, order // self.top_k)  # token rows, grouped by expert
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            outs.append(self.experts[e](grouped[start : start + n]))
            start += n
        y = torch.empty_like(grouped)
        y[order] = torch.cat(outs)  # back to (token, slot) order
        routed = (y.view(n_tok, self.top_k, -1).float() * weights[..., None]).sum(dim=1)  # fp32 combine
        y = routed.to(x.dtype) + self.shared_experts(xf)
        return y.reshape(shape)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LanguageConfig, i: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, i)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(i) else Mlp(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, start: int, rope: Rope, cache: KVCache) -> torch.Tensor:
        h = x + self.self_attn(self.input_layernorm(x), start, rope, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


# ---------------------------------------------------------------------------------------------
# The whole model (tensor names = checkpoint names, §2)
# ---------------------------------------------------------------------------------------------


class OcrInner(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        lm = cfg.lm
        self.sam_model = SamEncoder(cfg.sam)
        self.vision_model = ClipBody(cfg.clip)
        self.projector = Projector(cfg.projector_in, cfg.projector_out)
        self.image_newline = nn.Parameter(torch.zeros(cfg.projector_out))
        self.view_seperator = nn.Parameter(torch.zeros(cfg.projector_out))
        self.embed_tokens = nn.Embedding(lm.vocab_size, lm.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(lm, i) for i in range(lm.num_hidden_layers))
        self.norm = RMSNorm(lm.hidden_size, lm.rms_norm_eps)


@dataclass
class VisionOutput:
    sam_global: torch.Tensor
    clip_global: torch.Tensor
    sam_tiles: torch.Tensor | None
    clip_tiles: torch.Tensor | None
    embeds: torch.Tensor  # [N, hidden], the image-token sequence of §5.4


class DeepseekOCR(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.model = OcrInner(cfg)
        self.lm_head = nn.Linear(cfg.lm.hidden_size, cfg.lm.vocab_size, bias=False)
        self.rope: Rope | None = None

    # §5 DeepEncoder --------------------------------------------------------------------------
    def encode_views(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, 3, L, L] -> (SAM [B, C, q, q], CLIP [B, 1+q², W], projected [B, q², hidden])."""
        sam = self.model.sam_model(pixels)
        clip = self.model.vision_model(sam)
        return sam, clip, self.model.projector(clip, sam)

    def encode_image(self, global_px: torch.Tensor, tiles_px: torch.Tensor | None, grid: tuple[int, int]) -> VisionOutput:
        sam_t = clip_t = feat_t = None
        if tiles_px is not None:
            sam_t, clip_t, feat_t = self.encode_views(tiles_px)  # tiles batched, before the global view
        sam_g, clip_g, feat_g = self.encode_views(global_px)
        m = self.model
        embeds = layout_image_tokens(feat_g, feat_t, grid, m.image_newline, m.view_seperator)
        return VisionOutput(sam_g, clip_g, sam_t, clip_t, embeds)

    # §6.1 inputs -------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, image_token_id: int, vision_embeds: torch.Tensor | None) -> torch.Tensor:
        x = self.model.embed_tokens(ids)  # [1, T, hidden]
        if vision_embeds is not None:
            mask = ids == image_token_id
            n = int(mask.sum())
            if n != vision_embeds.shape[0]:
                raise ValueError(f"{n} image tokens in the prompt but {vision_embeds.shape[0]} vision embeddings")
            x = x.masked_scatter(mask[..., None], vision_embeds.to(x.dtype))
        return x

    # §6.2 decoder stack ----------------------------------------------------------------------
    def ensure_rope(self, length: int, device: torch.device) -> Rope:
        if self.rope is None or self.rope.cos.shape[0] < length or self.rope.cos.device != device:
            n = max(length, self.cfg.lm.max_position_embeddings)
            self.rope = Rope(self.cfg.lm.head_dim, self.cfg.lm.rope_theta, n, device)
        return self.rope

    def decode(self, x: torch.Tensor, start: int, cache: KVCache, hidden_states: list | None = None) -> torch.Tensor:
        """Run all decoder layers on [B, T, hidden] at positions start.., return the final RMSNorm output."""
        rope = self.ensure_rope(start + x.shape[1], x.device)
        if hidden_states is not None:
            hidden_states.append(x)
        for layer in self.model.layers:
            x = layer(x, start, rope, cache)
            if hidden_states is not None:
                hidden_states.append(x)
        x = self.model.norm(x)
        if hidden_states is not None:  # like HF output_hidden_states: the last entry is the normed one
            hidden_states[-1] = x
        return x

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(h).float()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_state_dict(model_dir: Path, device: torch.device, dtype: torch.dtype) -> dict:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = {}
    for f in files:
        part = load_file(str(model_dir / f), device=str(device))
        for k, v in part.items():
            sd[k] = v if v.dtype == dtype else v.to(dtype)
    return sd


def random_state_dict(model: DeepseekOCR, device: torch.device, dtype: torch.dtype, seed: int = 1234) -> dict:
    """Random weights with the checkpoint's names and shapes, made on the device (no file needed):
    norm weights 1, norm biases 0, everything else uniform(±1/sqrt(fan_in))."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, meta in model.state_dict().items():
        t = torch.empty(meta.shape, dtype=dtype, device=device)
        is_norm = "norm" in name or ".neck.1." in name or ".neck.3." in name
        if is_norm:
            t.fill_(0.0 if name.endswith(".bias") else 1.0)
        else:
            fan_in = meta[0].numel() if meta.dim() > 1 else meta.numel()
            bound = 1.0 / math.sqrt(fan_in)
            t.uniform_(-bound, bound, generator=gen)
        sd[name] = t
    return sd


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype, random_weights: bool = False) -> DeepseekOCR:
    cfg = ModelConfig.from_json(model_dir / "config.json")
    with torch.device("meta"):
        model = DeepseekOCR(cfg)
    sd = random_state_dict(model, device, dtype) if random_weights else read_state_dict(model_dir, device, dtype)
    model.load_state_dict(sd, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# §3 Image preprocessing (Pillow itself, as upstream), §3.6 normalisation
# ---------------------------------------------------------------------------------------------

MODES = {  # mode: (base_size, tile_size, crop_mode)
    "tiny": (512, 512, False),
    "small": (640, 640, False),
    "base": (1024, 1024, False),
    "large": (1280, 1280, False),
    "gundam": (1024, 640, True),
}
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255)
TILE = 640


def load_rgb(path: Path) -> Image.Image:
    img = Image.open(path)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - upstream falls back to the raw image
        pass
    return img.convert("RGB")


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """(cols, rows) with min_num <= cols*rows <= max_num, ordered by cols*rows (set order within)."""
    grids = {(c, r) for n in range(min_num, max_num + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if min_num <= c * r <= max_num}
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(w: int, h: int, max_crops: int) -> tuple[int, int]:
    if w <= TILE and h <= TILE:
        return (1, 1)
    aspect = w / h
    best, best_diff = (1, 1), float("inf")
    for c, r in candidate_grids(2, max_crops):
        d = abs(aspect - c / r)
        if d < best_diff:
            best, best_diff = (c, r), d
        elif d == best_diff and w * h > 0.5 * TILE * TILE * c * r:
            best = (c, r)
    return best


@dataclass
class Prepared:
    global_view: Image.Image
    tiles: list  # PIL images, row-major
    grid: tuple[int, int]  # (cols, rows)


def preprocess(img: Image.Image, mode: str, max_crops: int = 9) -> Prepared:
    base, size, crop = MODES[mode]
    grid, tiles = (1, 1), []
    if crop:
        grid = choose_grid(img.width, img.height, max_crops)
        if grid != (1, 1):
            cols, rows = grid
            resized = img.resize((TILE * cols, TILE * rows), Image.Resampling.BICUBIC)
            tiles = [resized.crop(((i % cols) * TILE, (i // cols) * TILE, (i % cols + 1) * TILE, (i // cols + 1) * TILE))
                     for i in range(cols * rows)]
    elif size <= 640:
        img = img.resize((size, size), Image.Resampling.BICUBIC)  # stretch (aspect not kept)
    global_view = ImageOps.pad(img, (base, base), method=Image.Resampling.BICUBIC, color=PAD_COLOR)
    return Prepared(global_view, tiles, grid)


def normalize(images: list, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """8-bit RGB images -> [B, 3, H, W], ((u/255) - 0.5) / 0.5 in float32, then cast."""
    arrays = [np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images]
    u = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
    x = u.div(255.0).sub(0.5).div(0.5)
    return x.to(device=device, dtype=dtype)


def load_pixels(paths: list[Path], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return normalize([Image.open(p) for p in paths], device, dtype)


def pixels_of(prepared: Prepared, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    global_px = normalize([prepared.global_view], device, dtype)
    tiles_px = normalize(prepared.tiles, device, dtype) if prepared.tiles else None
    return global_px, tiles_px


def added_token_ids(tokenizer_json: Path) -> dict[str, int]:
    if not tokenizer_json.exists():
        return {}
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in tok.get("added_tokens", [])}


# ---------------------------------------------------------------------------------------------
# §7 Generation
# ---------------------------------------------------------------------------------------------


def banned_whole_sequence(seq: list[int], n: int) -> list[int]:
    """transformers' no_repeat_ngram_size over prompt + generated ids (no window, no whitelist)."""
    cur = len(seq)
    if cur + 1 < n:
        return []
    prefix = seq[cur - (n - 1) :]
    return [seq[i + n - 1] for i in range(cur - n + 1) if seq[i : i + n - 1] == prefix]


def banned_windowed(gen: list[int], n: int, window: int, whitelist: set[int]) -> list[int]:
    """The official vLLM-path rule: generated ids only, last `window` tokens, whitelist never banned."""
    cur = len(gen)
    if cur < n:
        return []
    prefix = gen[cur - (n - 1) :]
    lo = max(0, cur - window)
    return [gen[i + n - 1] for i in range(lo, cur - n + 1) if gen[i : i + n - 1] == prefix and gen[i + n - 1] not in whitelist]


@dataclass
class RepeatGuard:
    kind: str  # "whole" | "window"
    n: int
    window: int = 0
    whitelist: frozenset = frozenset()

    def banned(self, prompt: list[int], gen: list[int]) -> list[int]:
        if self.kind == "whole":
            return banned_whole_sequence(prompt + gen, self.n)
        return banned_windowed(gen, self.n, self.window, self.whitelist)


@dataclass
class GenerationResult:
    ids: list[int]
    prefill_logits: torch.Tensor  # logits of the requested tail of prompt positions
    decode_logits: list  # raw logits after feeding each generated token
    hidden_states: list | None


@torch.inference_mode()
def generate(
    model: DeepseekOCR,
    prompt_ids: list[int],
    image_token_id: int,
    vision_embeds: torch.Tensor | None,
    max_new_tokens: int,
    *,
    forced: bool = False,
    guard: RepeatGuard | None = None,
    cache: KVCache | None = None,
    logits_tail: int = 1,
    keep_decode_logits: int = 0,
    keep_hidden: bool = False,
) -> GenerationResult:
    """Greedy decoding with a KV cache; `forced` ignores EOS and always makes max_new_tokens tokens."""
    device = model.lm_head.weight.device
    dtype = model.lm_head.weight.dtype
    ids = torch.tensor([prompt_ids], device=device)
    if cache is None:
        cache = KVCache(model.cfg.lm, 1, len(prompt_ids) + max_new_tokens, dtype, device)
    hidden = [] if keep_hidden else None
    x = model.embed(ids, image_token_id, vision_embeds)
    h = model.decode(x, 0, cache, hidden)
    prefill_logits = model.logits(h[0, -logits_tail:])
    logits = prefill_logits[-1]
    gen: list[int] = []
    kept: list = []
    pos = len(prompt_ids)
    for step in range(max_new_tokens):
        if guard is not None:
            banned = guard.banned(prompt_ids, gen)
            if banned:
                logits = logits.clone()
                logits[banned] = float("-inf")
        tok = int(logits.argmax())  # first index on ties
        gen.append(tok)
        if (tok == EOS_ID and not forced) or step == max_new_tokens - 1:
            break
        x = model.model.embed_tokens(torch.tensor([[tok]], device=device))
        logits = model.logits(model.decode(x, pos, cache)[0, -1])
        pos += 1
        if len(kept) < keep_decode_logits:
            kept.append(logits)
    return GenerationResult(gen, prefill_logits, kept, hidden)


# ---------------------------------------------------------------------------------------------
# --check: parity against the tiny fixture
# ---------------------------------------------------------------------------------------------


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shape {tuple(a.shape)} != golden {tuple(b.shape)}")
    return float((a.float().cpu() - b.float()).abs().max()) if a.numel() else 0.0


def check_preprocess(case: dict, fixture: Path, pre: Path, rows: list) -> None:
    """Pillow preprocessing of images/<image>.png against the fixture's PNGs (byte-exact, grid)."""
    prepared = preprocess(load_rgb(fixture / "images" / f"{case['image']}.png"), case["mode"])
    ours = [prepared.global_view] + prepared.tiles
    want = [pre / "global.png"] + [pre / f"tile_{i}.png" for i in range(case.get("num_tiles", 0))]
    same = len(ours) == len(want) and all(
        np.array_equal(np.asarray(a), np.asarray(Image.open(b).convert("RGB"))) for a, b in zip(ours, want))
    same = same and list(prepared.grid) == list(case.get("grid", [1, 1]))
    rows.append((case["name"], f"preprocess ({len(want)} PNGs, grid)", "byte-exact" if same else "differs",
                 "exact", "ok" if same else "FAIL"))


def run_check(fixture: Path, device: torch.device) -> int:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = torch.float32
    model = load_model(fixture, device, dtype)
    golden = load_file(str(fixture / "golden.safetensors"))
    cases = json.loads((fixture / "cases.json").read_text())
    image_token_id = cases["image_token_id"]
    added = added_token_ids(fixture / "tokenizer.json")
    rows, failures = [], 0

    def compare(case: str, what: str, ours: torch.Tensor, tol: float) -> None:
        nonlocal failures
        key = f"{case}.{what}"
        if key not in golden:
            return
        try:
            d = max_abs_diff(ours, golden[key])
            ok = d <= tol
            text = f"{d:.3e}"
        except ValueError as e:
            ok, text = False, str(e)
        failures += not ok
        rows.append((case, what, text, f"{tol:g}", "ok" if ok else "FAIL"))

    with torch.inference_mode():
        for case in cases["cases"]:
            name = case["name"]
            vision = None
            if case.get("image"):
                pre = fixture / "preprocess" / name
                check_preprocess(case, fixture, pre, rows)
                global_px = load_pixels([pre / "global.png"], device, dtype)
                n_tiles = case.get("num_tiles", 0)
                tiles_px = load_pixels([pre / f"tile_{i}.png" for i in range(n_tiles)], device, dtype) if n_tiles else None
                vision = model.encode_image(global_px, tiles_px, tuple(case.get("grid", (1, 1))))
                compare(name, "sam.global", vision.sam_global, 1e-4)
                compare(name, "clip.global", vision.clip_global, 1e-4)
                if tiles_px is not None:
                    compare(name, "sam.tiles", vision.sam_tiles, 1e-4)
                    compare(name, "clip.tiles", vision.clip_tiles, 1e-4)
                compare(name, "vision_embeds", vision.embeds, 1e-4)
            guard = None
            if case.get("ngram"):
                g = case["ngram"]
                wl = frozenset(added[s] for s in g.get("whitelist", []))
                guard = RepeatGuard(g["kind"], g["n"], g.get("window", 0), wl)
            prompt = golden[f"{name}.input_ids"].tolist()
            k_dec = golden[f"{name}.decode_logits"].shape[0] if f"{name}.decode_logits" in golden else 0
            res = generate(
                model, prompt, image_token_id, vision.embeds if vision else None, case["max_new_tokens"],
                guard=guard, logits_tail=min(8, len(prompt)), keep_decode_logits=k_dec, keep_hidden=True,
            )
            hidden_last = torch.stack([h[0, -1] for h in res.hidden_states])
            compare(name, "prefill_hidden_last", hidden_last, 1e-3)
            compare(name, "prefill_logits_tail", res.prefill_logits, 1e-3)
            if k_dec:
                compare(name, "decode_logits", torch.stack(res.decode_logits), 1e-3)
            want = golden[f"{name}.generated_ids"].tolist()
            ok = res.ids == want
            failures += not ok
            rows.append((name, "generated_ids", "exact" if ok else f"{res.ids} != {want}", "exact", "ok" if ok else "FAIL"))

    print(f"parity check on {device}, float32, TF32 off, torch {torch.__version__}\n")
    print("| case | tensor | max abs diff | tol | result |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    failures = sum(r[-1] != "ok" for r in rows)
    print(f"\n{len(rows) - failures}/{len(rows)} comparisons passed")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# --bench: timings (same stages and definitions as `dsocr bench`, crates/dsocr-cli/src/bench.rs)
# ---------------------------------------------------------------------------------------------


class Clock:
    """Wall clock that waits for the device before every reading."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


@dataclass
class Timing:
    cold_s: float
    runs_s: list

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s) if self.runs_s else self.cold_s

    def as_dict(self) -> dict:
        return {"cold_s": self.cold_s, "median_s": self.median_s, "runs_s": self.runs_s}


def timed(clock: Clock, fn, repeat: int) -> tuple[Timing, object]:
    """One cold run, then `repeat` warm runs; fn returns (seconds, result)."""
    cold, out = fn()
    runs = []
    for _ in range(repeat):
        t, out = fn()
        runs.append(t)
    return Timing(cold, runs), out


REAL_TOKENIZER_IDS = SCRIPT_DIR.parent / "tests" / "fixtures" / "tokenizer-real" / "expected_ids.json"


def bench_prompt(fixture: Path, image_token_id: int, n_image_tokens: int, vocab: int) -> list[int]:
    """BOS + N image tokens + the text ids of the document prompt "<image>\\n<|grounding|>Convert the
    document to markdown." as the checkpoint's tokenizer encodes it: the real DeepSeek-OCR tokenizer
    for a full-size vocabulary (the random checkpoint ships it; ids from the Python `tokenizers`
    package, tests/fixtures/tokenizer-real/expected_ids.json), the fixture tokenizer otherwise."""
    if vocab > image_token_id and REAL_TOKENIZER_IDS.exists():
        text = json.loads(REAL_TOKENIZER_IDS.read_text())["prompts"]["markdown"]["after_image"]
        return [BOS_ID] + [image_token_id] * n_image_tokens + text
    text = [201, 448, 407, 265, 439, 390, 423, 16]
    golden = fixture / "golden.safetensors"
    if golden.exists():
        ids = load_file(str(golden))["gundam_page.input_ids"].tolist()
        text = ids[1 + ids.count(ids[1]) :]  # after BOS and the run of image tokens
    return [BOS_ID] + [image_token_id] * n_image_tokens + [t % vocab for t in text]


def percentile(values: list, q: float) -> float:
    v = sorted(values)
    return v[min(len(v), max(1, math.ceil(q * len(v)))) - 1]


@torch.inference_mode()
def run_bench(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "f32": torch.float32}[args.dtype]
    model_dir, fixture, image_path = Path(args.bench), Path(args.fixture), Path(args.image)
    clock = Clock(device)
    cuda = device.type == "cuda"
    R = args.repeat
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    res: dict = {
        "implementation": "pytorch-eager (bench/torch_reference.py)",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).replace("torch.", ""),
        "model_dir": str(model_dir),
        "weights": "random, made on the device" if args.random_weights else "model.safetensors",
        "image": str(image_path),
        "repeat": R,
    }

    # model load: the first load is the cold one; `--load-repeat` more loads give the warm median
    loads = []
    model = None
    for i in range(1 + args.load_repeat):
        model = None
        if cuda:
            torch.cuda.empty_cache()
        log(f"load {i + 1}")
        t0 = clock.now()
        model = load_model(model_dir, device, dtype, args.random_weights)
        loads.append(clock.now() - t0)
    res["load"] = Timing(loads[0], loads[1:]).as_dict()
    res["parameters"] = sum(p.numel() for p in model.parameters())
    res["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    cfg = model.cfg
    added = added_token_ids(model_dir / "tokenizer.json")
    image_token_id = added.get("<image>", REAL_IMAGE_TOKEN_ID)
    if image_token_id >= cfg.lm.vocab_size:
        image_token_id = cfg.lm.vocab_size - 1
    whitelist = frozenset(added[t] for t in ("<td>", "</td>") if t in added)
    image = load_rgb(image_path)

    # vision: Pillow preprocessing + normalisation/upload + DeepEncoder + projector + layout
    def vision(mode: str):
        t0 = clock.now()
        prepared = preprocess(image, mode, args.max_crops)
        t_prep = time.perf_counter() - t0
        global_px, tiles_px = pixels_of(prepared, device, dtype)
        out = model.encode_image(global_px, tiles_px, prepared.grid)
        return clock.now() - t0, (t_prep, prepared, out)

    def vision_stage(mode: str) -> tuple[dict, VisionOutput]:
        log(f"vision {mode}: 1 cold + {R} warm")
        preps = []

        def once():
            t, (t_prep, prepared, out) = vision(mode)
            preps.append(t_prep)
            return t, (prepared, out)

        timing, (prepared, out) = timed(clock, once, R)
        return {"mode": mode, "tiles": len(prepared.tiles), "grid": list(prepared.grid),
                "image_tokens": int(out.embeds.shape[0]), "total": timing.as_dict(),
                "preprocess": Timing(preps[0], preps[1:]).as_dict()}, out

    gundam_out = None
    if not args.skip_vision:
        res["vision_gundam"], gundam_out = vision_stage("gundam")
    if not args.skip_base:
        res["vision_base"], _ = vision_stage("base")
    if gundam_out is None:
        gundam_out = vision("gundam")[1][2]
    vision_embeds = gundam_out.embeds
    prompt = bench_prompt(fixture, image_token_id, vision_embeds.shape[0], cfg.lm.vocab_size)
    L = len(prompt)
    ids = torch.tensor([prompt], device=device)
    cache = KVCache(cfg.lm, 1, L + max(args.decode_tokens, args.page_tokens) + 1, dtype, device)

    # prefill: prompt embedding + image scatter, forward over the prompt, lm_head of the last
    # position, argmax read back (vision excluded)
    def prefill() -> tuple[float, int]:
        t0 = clock.now()
        x = model.embed(ids, image_token_id, vision_embeds)
        tok = int(model.logits(model.decode(x, 0, cache)[0, -1]).argmax())
        return time.perf_counter() - t0, tok

    if not args.skip_prefill:
        log(f"prefill {L} tokens: 1 cold + {R} warm")
        timing, _ = timed(clock, prefill, max(R, 1))
        res["prefill"] = {"prompt_tokens": L, "time": timing.as_dict(), "tokens_per_s": L / timing.median_s}

    # decode: N forced tokens at batch 1 (the first comes out of the prefill); rate = (N-1) / time
    # from the first token to the last, like dsocr's stamps
    N = args.decode_tokens
    if not args.skip_decode and N >= 2:
        def decode_once():
            _, tok = prefill()
            stamps = [time.perf_counter()]
            for j in range(N - 1):
                x = model.model.embed_tokens(torch.tensor([[tok]], device=device))
                tok = int(model.logits(model.decode(x, L + j, cache)[0, -1]).argmax())  # .item() syncs
                stamps.append(time.perf_counter())
            return stamps

        log(f"decode {N} tokens: 1 cold + {R} warm")
        rate = lambda st: (len(st) - 1) / (st[-1] - st[0])  # noqa: E731
        cold = decode_once()
        rates, steps = [], []
        for _ in range(R):
            st = decode_once()
            rates.append(rate(st))
            steps += [(b - a) * 1e3 for a, b in zip(st, st[1:])]
        steps = steps or [(b - a) * 1e3 for a, b in zip(cold, cold[1:])]
        res["decode"] = {"prompt_tokens": L, "tokens": N, "cold_tokens_per_s": rate(cold),
                         "tokens_per_s": statistics.median(rates) if rates else rate(cold), "runs_tokens_per_s": rates,
                         "step_ms_median": statistics.median(steps), "step_ms_p90": percentile(steps, 0.9)}

    # page stream: per page read the PNG, Gundam preprocessing, vision, prefill, T forced tokens with
    # the official vLLM image repeat guard (n 30, window 90, whitelist <td> </td>); batch 1
    T = args.page_tokens
    if not args.skip_pages and args.pages > 0:
        guard = RepeatGuard("window", 30, 90, whitelist)

        def page():
            prepared = preprocess(load_rgb(image_path), "gundam", args.max_crops)
            global_px, tiles_px = pixels_of(prepared, device, dtype)
            out = model.encode_image(global_px, tiles_px, prepared.grid)
            page_prompt = prompt[:1] + [image_token_id] * out.embeds.shape[0] + prompt[1 + vision_embeds.shape[0] :]
            n = len(generate(model, page_prompt, image_token_id, out.embeds, T, forced=True, guard=guard, cache=cache).ids)
            if n != T:
                raise RuntimeError(f"a page produced {n} tokens instead of {T}")

        log(f"pages: 1 cold page + {R} warm streams of {args.pages} pages × {T} tokens")
        t0 = clock.now()
        page()
        cold = clock.now() - t0
        rates = []
        for _ in range(R):
            t0 = clock.now()
            for _ in range(args.pages):
                page()
            rates.append(args.pages / (clock.now() - t0))
        res["pages"] = {"pages": args.pages, "page_tokens": T, "cold_first_page_s": cold,
                        "pages_per_s": statistics.median(rates) if rates else 1 / cold, "runs_pages_per_s": rates}

    res["memory"] = {
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "device_allocated_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "device_reserved_peak_bytes": torch.cuda.max_memory_reserved() if cuda else None,
    }
    print(markdown(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0


def markdown(r: dict) -> str:
    gib = lambda b: "n/a" if b is None else f"{b / 2**30:.2f} GiB"  # noqa: E731
    ms = lambda t: f"{t['median_s'] * 1e3:.1f} ms (cold {t['cold_s'] * 1e3:.1f})"  # noqa: E731
    lines = [f"PyTorch reference: {r['device']}, {r['dtype']}, torch {r['torch']}, weights: {r['weights']}",
             f"median of {r['repeat']} warm runs after one cold run", "",
             "| measurement | PyTorch (eager) |", "|---|---|"]
    load = r["load"]
    what = "model init (random weights on the device)" if r["weights"].startswith("random") else "model load"
    lines.append(f"| {what} | {load['median_s']:.2f} s (cold {load['cold_s']:.2f} s) |")
    for key, label in (("vision_gundam", "vision, Gundam page"), ("vision_base", "vision, Base page")):
        if key in r:
            v = r[key]
            lines.append(f"| {label} ({v['tiles']} tiles, {v['image_tokens']} tokens; preprocessing incl.) | "
                         f"{ms(v['total'])}; preprocessing {v['preprocess']['median_s'] * 1e3:.1f} ms |")
    if "prefill" in r:
        p = r["prefill"]
        lines.append(f"| prefill, {p['prompt_tokens']} tokens (vision excl.) | {ms(p['time'])}, {p['tokens_per_s']:.0f} tok/s |")
    if "decode" in r:
        d = r["decode"]
        lines.append(f"| decode, batch 1, {d['tokens']} forced tokens | {d['tokens_per_s']:.1f} tok/s "
                     f"(step median {d['step_ms_median']:.2f} ms, p90 {d['step_ms_p90']:.2f} ms) |")
    if "pages" in r:
        p = r["pages"]
        lines.append(f"| page stream, {p['pages']} pages × {p['page_tokens']} tokens (all stages) | "
                     f"{p['pages_per_s']:.3f} pages/s (cold first page {p['cold_first_page_s']:.2f} s) |")
    m = r["memory"]
    lines.append(f"| weights | {gib(r['weights_bytes'])} ({r['parameters'] / 1e9:.3f} B params) |")
    lines.append(f"| peak device memory, allocated / reserved | {gib(m['device_allocated_peak_bytes'])} / {gib(m['device_reserved_peak_bytes'])} |")
    lines.append(f"| peak host RSS | {gib(m['peak_rss_bytes'])} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", metavar="FIXTURE_DIR", help="parity check against the tiny fixture (CPU, float32)")
    mode.add_argument("--bench", metavar="MODEL_DIR", help="benchmark a model folder (config.json + model.safetensors)")
    p.add_argument("--device", help="cpu or cuda (default: cpu for --check, cuda if available for --bench)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "bf16", "float32", "f32"])
    p.add_argument("--image", default=str(DEFAULT_FIXTURE / "images" / "page.png"),
                   help="page image (default: the fixture page, 1280x800: Gundam 3x2 = 6 tiles)")
    p.add_argument("--max-crops", type=int, default=9, help="largest Gundam tile grid (9 = HF, 6 = vLLM)")
    p.add_argument("--decode-tokens", type=int, default=1000, help="forced tokens at batch 1 (EOS ignored)")
    p.add_argument("--pages", type=int, default=4, help="pages per timed stream")
    p.add_argument("--page-tokens", type=int, default=128, help="forced tokens per page in the stream")
    p.add_argument("--repeat", type=int, default=3, help="warm runs per stage (median), after one cold run")
    p.add_argument("--load-repeat", type=int, default=1, help="warm model loads after the cold one")
    p.add_argument("--fixture", default=str(DEFAULT_FIXTURE), help="fixture folder (golden prompt ids)")
    p.add_argument("--random-weights", action="store_true",
                   help="random weights made on the device from MODEL_DIR/config.json (the load stage then times that)")
    for stage in ("vision", "base", "prefill", "decode", "pages"):
        p.add_argument(f"--skip-{stage}", action="store_true", help=f"skip the {stage} stage")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check:
        return run_check(Path(args.check), torch.device(args.device or "cpu"))
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
