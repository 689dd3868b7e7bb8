//! DeepSeek-V2 mixture of experts (spec §6.5, pitfalls 24–25):
//!
//! ```text
//! p      = softmax_f32(x · Wgᵀ)                 over all n_routed_experts
//! (i, w) = top_k(p)                              greedy, no group limit
//! w      = w / Σw        if norm_topk_prob and k > 1   (DeepSeek-V2 rule: no scaling then)
//!        = w · routed_scaling_factor   otherwise
//! y      = Σ_k w_k · Expert_{i_k}(x)             summed in f32, cast back
//! y      = y + Shared(x)                         one SwiGLU of width n_shared · moe_intermediate
//! ```
//!
//! The routed experts are stored in one of two ways, chosen by the expert path:
//! - **packed** (GPU backends): `gate_up: [E, 2I, d]` (each expert's `gate_proj` rows, then its
//!   `up_proj` rows: the stacked PyTorch `[out, in]` layouts) and `down: [E, d, I]`, so that the
//!   chosen experts can be `select`ed on the device; no weight is transposed on the host;
//! - **separate** (CPU backends): one [`Mlp`] per expert, each weight a zero-copy view of the
//!   memory-mapped checkpoint. Packing would copy all 64 experts of all layers into anonymous
//!   memory (4.5 GiB in bf16) on top of the mapped file.
//!
//! Two ways of running the experts, with the same math:
//! - [`Moe::forward_gathered`] (decode steps): one matrix-vector product per projection
//!   over the chosen experts, read by id from the packed stack on the device
//!   ([`dsocr_nn::gathered_matvec`]: a CubeCL kernel on GPUs, `select` + multiply-sum
//!   otherwise); no host round trip. Needs packed experts. For a batched step of many rows the
//!   grouped kernel reads each expert once for all the rows that chose it, so every step up to
//!   [`GROUPED_MAX_TOKENS`] rows takes this path; without it, only steps of up to
//!   [`GATHER_FACTOR`] slots per expert do, and larger ones the dense product
//!   ([`Moe::forward_dense`], also the prompts' path on GPUs).
//! - [`Moe::forward_grouped`] (prefill): the top-k indices are read to the host ONCE per layer,
//!   tokens are grouped per active expert, and each active expert runs on its rows. Either store.
//!
//! [`ExpertDispatch`] picks between them.

use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{DType, IndexingUpdateOp};
use dsocr_nn::host::{matvec_many, HostMatrix, HOST_MATVEC_MAX_ROWS};
use dsocr_nn::{gathered_matvec, gathered_quant_matvec, gemm, quant_matvec, Linear, QuantMatrix, WeightFormat};
use dsocr_weights::backend::is_host_device;
use dsocr_weights::VarBuilder;

use crate::mlp::Mlp;
use crate::{DecoderConfig, DecoderError};

/// Gathered (on-device) expert weights are used for up to this many times `n_routed_experts`
/// expert slots (`tokens · top_k`): 21 rows of a batched decode step for DeepSeek-OCR's 64
/// experts, top 6.
pub const GATHER_FACTOR: usize = 2;

/// The most tokens the grouped expert kernel takes (the batched decode steps' rows); a prompt
/// beyond it takes [`Moe::forward_dense`], whose tensor-core products win at that size.
pub const GROUPED_MAX_TOKENS: usize = 256;

/// Tokens per call of [`Moe::forward_dense`]: bounds its `[tokens, E·2I]` intermediate (1 GiB
/// in bf16 for DeepSeek-OCR's 64 experts of 2 × 896) when many prompts prefill together.
pub const DENSE_CHUNK: usize = 4096;

/// Which expert path a MoE layer takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpertDispatch {
    /// [`OnDevice`](Self::OnDevice) on GPU backends, [`HostGrouped`](Self::HostGrouped) on the
    /// CPU backends (flex, ndarray), where reading the indices costs microseconds and copying
    /// the chosen experts' weights is the expensive part (measured on flex f32 at the real
    /// sizes: ~30–60 ms vs ~5.5 ms per layer for one token).
    #[default]
    Auto,
    /// [`Moe::forward_gathered`] whenever `tokens · top_k ≤ GATHER_FACTOR · n_routed_experts` (every decode
    /// step), [`Moe::forward_dense`] otherwise (prefill; quantized experts take
    /// [`Moe::forward_grouped`]): no host read at all.
    OnDevice,
    /// Like [`OnDevice`](Self::OnDevice) for small batches, [`Moe::forward_grouped`] for
    /// prompts (the GPU default until 2026-12-04, kept for measurements).
    GatheredGrouped,
    /// Always [`Moe::forward_grouped`] (one host read of the top-k indices per layer and call).
    HostGrouped,
}

impl std::str::FromStr for ExpertDispatch {
    type Err = String;

    /// `auto`, `on-device`, `gathered-grouped` or `host-grouped` (case-insensitive; `gathered`,
    /// `dense` and `grouped` too).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => ExpertDispatch::Auto,
            "on-device" | "ondevice" | "gathered" | "dense" => ExpertDispatch::OnDevice,
            "gathered-grouped" => ExpertDispatch::GatheredGrouped,
            "host-grouped" | "hostgrouped" | "grouped" => ExpertDispatch::HostGrouped,
            other => {
                return Err(format!(
                    "unknown expert dispatch `{other}`: use auto, on-device, gathered-grouped or host-grouped"
                ))
            }
        })
    }
}

impl ExpertDispatch {
    /// Whether small batches gather weights on the device, for tensors living on `device`.
    fn gathers_on(self, device: &Device) -> bool {
        match self {
            ExpertDispatch::OnDevice | ExpertDispatch::GatheredGrouped => true,
            ExpertDispatch::HostGrouped => false,
            ExpertDispatch::Auto => !is_host_device(device),
        }
    }

    /// Whether prompts take the dense product ([`Moe::forward_dense`]) where weights gather.
    fn dense_prompts(self) -> bool {
        !matches!(self, ExpertDispatch::GatheredGrouped)
    }
}

/// The routed experts' weights (module docs).
#[derive(Debug, Clone)]
// One value per MoE layer, never moved in a loop: boxing the packed variant would only add an
// indirection on every step.
#[allow(clippy::large_enum_variant)]
enum Experts {
    Packed {
        /// `[E, 2I, d]`: rows `0..I` are `gate_proj`, rows `I..2I` are `up_proj` of each expert.
        gate_up: Tensor<3>,
        /// `[E, d, I]`: `down_proj` of each expert.
        down: Tensor<3>,
    },
    /// Packed the same way, quantized on a GPU device (`--quant`): stacks of `E · 2I` and
    /// `E · d` rows.
    Quantized {
        gate_up: QuantMatrix,
        down: QuantMatrix,
    },
    Separate(Vec<Mlp>),
}

#[derive(Debug, Clone)]
pub struct Moe {
    /// Router `gate.weight` `[E, d]` (as a Linear to `E` logits).
    router: Linear,
    experts: Experts,
    shared: Option<Mlp>,
    num_experts: usize,
    top_k: usize,
    intermediate: usize,
    norm_topk_prob: bool,
    routed_scaling_factor: f64,
    /// Resolved [`ExpertDispatch`]: gather weights on the device for small batches.
    gather_on_device: bool,
    /// Resolved [`ExpertDispatch`]: with `gather_on_device`, prompts take the dense product.
    dense_prompts: bool,
}

impl Moe {
    /// Loads `<prefix>.gate.weight`, `<prefix>.experts.{e}.{gate,up,down}_proj.weight` and
    /// `<prefix>.shared_experts.*`; the experts are kept as `format` says, the router in the
    /// model's dtype (routing decisions are not quantized).
    pub fn load(vb: &VarBuilder, cfg: &DecoderConfig, format: WeightFormat) -> Result<Self, DecoderError> {
        let (d, i) = (cfg.hidden_size, cfg.moe_intermediate_size);
        let (num_experts, top_k) = match (cfg.n_routed_experts, cfg.num_experts_per_tok) {
            (Some(e), Some(k)) if k >= 1 && k <= e => (e, k),
            _ => {
                return Err(DecoderError::Config(
                    "MoE layer without valid n_routed_experts / num_experts_per_tok".into(),
                ))
            }
        };
        let router = Linear::load(&vb.pp("gate"), d, num_experts, false)?;

        let experts = vb.pp("experts");
        let experts =
            (0..num_experts).map(|e| Mlp::load(&experts.pp(e), d, i, format)).collect::<Result<Vec<_>, _>>()?;
        let gather_on_device = ExpertDispatch::Auto.gathers_on(vb.device());
        let experts = if gather_on_device { pack(&experts) } else { Experts::Separate(experts) };

        let shared = match cfg.shared_intermediate_size() {
            Some(width) => Some(Mlp::load(&vb.pp("shared_experts"), d, width, format)?),
            None => None,
        };
        Ok(Self {
            router,
            experts,
            shared,
            num_experts,
            top_k,
            intermediate: i,
            norm_topk_prob: cfg.norm_topk_prob,
            routed_scaling_factor: cfg.routed_scaling_factor,
            gather_on_device,
            dense_prompts: true,
        })
    }

    /// Chooses the expert path; packs the experts (one copy) if on-device gathering needs it.
    pub fn set_dispatch(&mut self, dispatch: ExpertDispatch) {
        self.gather_on_device = dispatch.gathers_on(&self.router.device());
        self.dense_prompts = dispatch.dense_prompts();
        if let (true, Experts::Separate(experts)) = (self.gather_on_device, &self.experts) {
            self.experts = pack(experts);
        }
    }

    /// Whether a decode step's experts are gathered on the device (no host read of the ids).
    pub fn gathers_on_device(&self) -> bool {
        self.gather_on_device && !matches!(self.experts, Experts::Separate(_))
    }

    /// Whether [`forward`](Self::forward) of `tokens` tokens reads nothing back to the host
    /// (the gathered path, or the dense one for packed float experts), as a captured graph needs.
    pub fn runs_on_device(&self, tokens: usize) -> bool {
        self.gathers_on_device()
            && (tokens * self.top_k <= GATHER_FACTOR * self.num_experts
                || (self.dense_prompts && matches!(self.experts, Experts::Packed { .. })))
    }

    /// `x: [batch, t, d]` → `[batch, t, d]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x = x.reshape([b * t, d]);
        if b * t <= HOST_MATVEC_MAX_ROWS {
            if let Some(y) = self.forward_host(x.clone()) {
                return y.reshape([b, t, d]);
            }
        }
        let (indices, weights) = self.route(x.clone());
        let routed = if self.gathers(&x, b * t) {
            // `gather_on_device` implies packed experts (load / set_dispatch).
            self.forward_gathered(x.clone(), indices, weights)
        } else if self.gather_on_device && self.dense_prompts {
            self.forward_dense(x.clone(), indices, weights)
        } else {
            self.forward_grouped(x.clone(), indices, weights)
        };
        let y = match &self.shared {
            Some(shared) => routed + shared.forward(x),
            None => routed,
        };
        y.reshape([b, t, d])
    }

    /// Whether `tokens` tokens take [`forward_gathered`](Self::forward_gathered): with on-device
    /// gathering, up to [`GATHER_FACTOR`] slots per expert, where the per-slot kernel (or the
    /// reference, which copies the chosen experts with `select`) reads each chosen expert once
    /// per slot; with the grouped kernel ([`dsocr_nn::grouped_available`]: every expert read
    /// once per pass), up to [`GROUPED_MAX_TOKENS`] tokens, every batched decode step. More
    /// tokens (a prompt) take the dense product.
    fn gathers(&self, x: &Tensor<2>, tokens: usize) -> bool {
        if !self.gather_on_device {
            return false;
        }
        if tokens * self.top_k <= GATHER_FACTOR * self.num_experts {
            return true;
        }
        match &self.experts {
            Experts::Packed { gate_up, .. } => tokens <= GROUPED_MAX_TOKENS && dsocr_nn::grouped_available(x, gate_up),
            _ => false,
        }
    }

    /// Router: top-k expert indices `[n, k]` and their f32 weights `[n, k]`.
    ///
    /// The logits come out of the matmul in the activation dtype (HF under autocast gives bf16
    /// logits too, spec §6.8); the softmax runs in f32.
    pub fn route(&self, x: Tensor<2>) -> (Tensor<2, Int>, Tensor<2>) {
        let logits = self.router.forward(x).cast(DType::F32);
        let scores = softmax(logits, 1);
        let (weights, indices) = scores.topk_with_indices(self.top_k, 1);
        let weights = if self.norm_topk_prob && self.top_k > 1 {
            let denominator = weights.clone().sum_dim(1) + 1e-20;
            weights / denominator
        } else {
            weights * self.routed_scaling_factor
        };
        (indices, weights)
    }

    /// All on the device: matrix-vector products over the chosen experts' weights.
    /// `x: [n, d]`, `indices: [n, k]`, `weights: [n, k]` f32 → `[n, d]`.
    ///
    /// The experts must be packed ([`ExpertDispatch::OnDevice`] or a GPU device); with separate
    /// experts this falls back to [`forward_grouped`](Self::forward_grouped).
    pub fn forward_gathered(&self, x: Tensor<2>, indices: Tensor<2, Int>, weights: Tensor<2>) -> Tensor<2> {
        let [n, d] = x.dims();
        let (k, i) = (self.top_k, self.intermediate);
        let dtype = x.dtype();
        // Slot j·k + s is token j's s-th expert; the kernel reads each chosen matrix in place.
        let flat = indices.clone().reshape([n * k]);
        let act = |h: Tensor<2>| silu(h.clone().narrow(1, 0, i)) * h.narrow(1, i, i); // [n·k, I]
        let y = match &self.experts {
            Experts::Packed { gate_up, down } => {
                let h = gathered_matvec(x, gate_up.clone(), flat.clone()); // [n·k, 2I]
                gathered_matvec(act(h), down.clone(), flat) // [n·k, d]
            }
            Experts::Quantized { gate_up, down } => {
                let h = gathered_quant_matvec(x, gate_up, 2 * i, flat.clone());
                gathered_quant_matvec(act(h), down, d, flat)
            }
            Experts::Separate(_) => return self.forward_grouped(x, indices, weights),
        };

        let y = y.reshape([n, k, d]).cast(DType::F32) * weights.unsqueeze_dim::<3>(2);
        y.sum_dim(1).reshape([n, d]).cast(dtype)
    }

    /// A few tokens with host weights (the CPU backends' bf16 and quantized decoder): after
    /// routing, the chosen experts' and the shared expert's gate/up products run in ONE parallel
    /// pass over host memory, SiLU·up in f32, then all down products in a second pass, weighted
    /// and summed in f32 ([`dsocr_nn::host::matvec_many`]). Two fork-joins per layer instead of
    /// a dozen tensor ops per expert. `None` if some weight is not a host matrix.
    /// `x: [n, d]` → `[n, d]`.
    pub fn forward_host(&self, x: Tensor<2>) -> Option<Tensor<2>> {
        let Experts::Separate(experts) = &self.experts else {
            return None;
        };
        fn host(mlp: &Mlp) -> Option<[&HostMatrix; 3]> {
            let [g, u, d] = mlp.projections();
            Some([g.host_matrix()?, u.host_matrix()?, d.host_matrix()?])
        }
        let shared = match &self.shared {
            Some(mlp) => Some(host(mlp)?),
            None => None,
        };
        let [n, d] = x.dims();
        let (device, dtype) = (x.device(), x.dtype());
        let (indices, weights) = self.route(x.clone());
        let chosen: Vec<i64> = indices.into_data().iter::<i64>().collect();
        let weights: Vec<f32> = weights.into_data().iter::<f32>().collect();
        let xs: Vec<f32> = x.cast(DType::F32).into_data().iter::<f32>().collect();

        // One (weights, token) pair per chosen expert of each token, then the shared expert's.
        let mut work: Vec<([&HostMatrix; 3], usize)> = Vec::with_capacity(n * (self.top_k + 1));
        for (slot, &expert) in chosen.iter().enumerate() {
            // top-k over num_experts scores: always in range.
            work.push((host(&experts[expert as usize])?, slot / self.top_k));
        }
        if let Some(shared) = shared {
            work.extend((0..n).map(|r| (shared, r)));
        }
        let token = |r: usize| &xs[r * d..(r + 1) * d];
        let gate_up: Vec<(&HostMatrix, &[f32])> =
            work.iter().flat_map(|([g, u, _], r)| [(*g, token(*r)), (*u, token(*r))]).collect();
        let h = matvec_many(&gate_up, 1);
        let act: Vec<Vec<f32>> = h
            .chunks_exact(2)
            .map(|gu| gu[0].iter().zip(&gu[1]).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect())
            .collect();
        let down: Vec<(&HostMatrix, &[f32])> =
            work.iter().zip(&act).map(|(([_, _, down], _), a)| (*down, a.as_slice())).collect();
        let ys = matvec_many(&down, 1);

        let mut out = vec![0f32; n * d];
        for (j, ((_, r), y)) in work.iter().zip(&ys).enumerate() {
            // Routed slots carry their routing weight; the shared expert's rows weigh 1.
            let w = weights.get(j).copied().unwrap_or(1.0);
            for (o, v) in out[r * d..(r + 1) * d].iter_mut().zip(y) {
                *o += w * v;
            }
        }
        Some(Tensor::<2>::from_data(TensorData::new(out, [n, d]), (&device, DType::F32)).cast(dtype))
    }

    /// Every expert over every token, the routing weights as a mask: three large matrix
    /// products (`x · gate_upᵀ` over all experts at once, then one batched `act · downᵀ`) and an
    /// f32 sum weighted by a dense `[n, E]` routing matrix that is zero where a token did not
    /// choose an expert, in place of a matmul pair per active expert after a host read of the
    /// ids. `E / top_k` times the FLOPs of the sparse products (10.7× for 64 experts, top 6),
    /// which tensor cores absorb for a prompt-sized batch (docs/performance.md, "Prefill").
    /// The products round as the grouped path's do (activation dtype, f32 accumulation; the
    /// weighted sum in f32), so both give the same values up to summation order. Needs packed
    /// float experts (otherwise [`forward_grouped`](Self::forward_grouped)); runs in chunks of
    /// [`DENSE_CHUNK`] tokens. Same inputs and output as [`forward_gathered`](Self::forward_gathered).
    pub fn forward_dense(&self, x: Tensor<2>, indices: Tensor<2, Int>, weights: Tensor<2>) -> Tensor<2> {
        let Experts::Packed { gate_up, down } = &self.experts else {
            return self.forward_grouped(x, indices, weights);
        };
        let [n, d] = x.dims();
        if n > DENSE_CHUNK {
            let outs = (0..n)
                .step_by(DENSE_CHUNK)
                .map(|start| {
                    let len = DENSE_CHUNK.min(n - start);
                    self.forward_dense(
                        x.clone().narrow(0, start, len),
                        indices.clone().narrow(0, start, len),
                        weights.clone().narrow(0, start, len),
                    )
                })
                .collect();
            return Tensor::cat(outs, 0);
        }
        let (e, i) = (self.num_experts, self.intermediate);
        let dtype = x.dtype();
        let h = gemm(x, gate_up.clone().reshape([e * 2 * i, d]).transpose()).reshape([n, e, 2 * i]);
        let act = silu(h.clone().narrow(2, 0, i)) * h.narrow(2, i, i); // [n, E, I]
        let y = act.swap_dims(0, 1).matmul(down.clone().swap_dims(1, 2)); // [E, n, d]
        let routing = Tensor::<2>::zeros([n, e], (&weights.device(), DType::F32)).scatter(
            1,
            indices,
            weights,
            IndexingUpdateOp::Add,
        );
        let y = y.cast(DType::F32) * routing.transpose().unsqueeze_dim::<3>(2); // [E, n, d]
        y.sum_dim(0).reshape([n, d]).cast(dtype)
    }

    /// One host read of the top-k indices, then one matmul pair per active expert on the rows
    /// routed to it. Same inputs and output as [`forward_gathered`](Self::forward_gathered).
    pub fn forward_grouped(&self, x: Tensor<2>, indices: Tensor<2, Int>, weights: Tensor<2>) -> Tensor<2> {
        let [n, d] = x.dims();
        let (k, i) = (self.top_k, self.intermediate);
        let device = x.device();
        let dtype = x.dtype();

        // The single device→host transfer of this layer: n·k expert ids.
        let chosen: Vec<i64> = indices.into_data().iter::<i64>().collect();
        // Per expert: the token rows routed to it and the flat (token·k + slot) weight positions.
        let mut rows: Vec<Vec<i64>> = vec![Vec::new(); self.num_experts];
        let mut slots: Vec<Vec<i64>> = vec![Vec::new(); self.num_experts];
        for (slot, &expert) in chosen.iter().enumerate() {
            let expert = expert as usize; // top-k over num_experts scores: always in range
            rows[expert].push((slot / k) as i64);
            slots[expert].push(slot as i64);
        }

        let weights = weights.reshape([n * k]);
        let mut out = Tensor::<2>::zeros([n, d], (&device, DType::F32));
        for (expert, (rows, slots)) in rows.into_iter().zip(slots).enumerate() {
            if rows.is_empty() {
                continue;
            }
            let m = rows.len();
            let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &device);
            let slots = Tensor::<1, Int>::from_data(TensorData::new(slots, [m]), &device);

            let xe = x.clone().select(0, rows.clone()); // [m, d]
            let ye = match &self.experts {
                Experts::Separate(experts) => experts[expert].forward(xe),
                Experts::Packed { gate_up, down } => {
                    let gate_up = gate_up.clone().narrow(0, expert, 1).reshape([2 * i, d]);
                    let h = xe.matmul(gate_up.transpose()); // [m, 2I]
                    let act = silu(h.clone().narrow(1, 0, i)) * h.narrow(1, i, i);
                    let down = down.clone().narrow(0, expert, 1).reshape([d, i]);
                    act.matmul(down.transpose()) // [m, d]
                }
                Experts::Quantized { gate_up, down } => {
                    let h = quant_matvec(xe, &gate_up.narrow(expert * 2 * i, 2 * i)); // [m, 2I]
                    let act = silu(h.clone().narrow(1, 0, i)) * h.narrow(1, i, i);
                    quant_matvec(act, &down.narrow(expert * d, d)) // [m, d]
                }
            };

            let we = weights.clone().select(0, slots).unsqueeze_dim::<2>(1); // [m, 1]
            out = out.select_assign(0, rows, ye.cast(DType::F32) * we, IndexingUpdateOp::Add);
        }
        out.cast(dtype)
    }
}

/// Packs separate experts into `gate_up: [E, 2I, d]` and `down: [E, d, I]` (one copy):
/// `[g0, u0, g1, u1, ...]` each `[1, I, d]`, concatenated to `[2E, I, d]`, which is
/// `[E, 2I, d]` in the same memory.
///
/// Experts quantized on a GPU device are stacked in the same order without dequantizing.
fn pack(experts: &[Mlp]) -> Experts {
    let quantized: Option<Vec<[&QuantMatrix; 3]>> = experts
        .iter()
        .map(|e| {
            let [g, u, d] = e.projections();
            Some([g.quantized()?, u.quantized()?, d.quantized()?])
        })
        .collect();
    if let Some(quantized) = quantized {
        let gate_up: Vec<&QuantMatrix> = quantized.iter().flat_map(|[g, u, _]| [*g, *u]).collect();
        let down: Vec<&QuantMatrix> = quantized.iter().map(|[_, _, d]| *d).collect();
        if let (Some(gate_up), Some(down)) = (QuantMatrix::concat(&gate_up), QuantMatrix::concat(&down)) {
            return Experts::Quantized { gate_up, down };
        }
    }
    let mut gate_up = Vec::with_capacity(2 * experts.len());
    let mut down = Vec::with_capacity(experts.len());
    for expert in experts {
        let [gate, up, d] = expert.weights();
        gate_up.push(gate.unsqueeze::<3>());
        gate_up.push(up.unsqueeze::<3>());
        down.push(d.unsqueeze::<3>());
    }
    let [_, i, d] = gate_up[0].dims();
    let gate_up = Tensor::cat(gate_up, 0).reshape([experts.len(), 2 * i, d]);
    let down = Tensor::cat(down, 0);
    Experts::Packed { gate_up, down }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dsocr_weights::{Backend, Precision, SafetensorsFiles};

    use super::*;

    /// The tiny fixture's decoder config and a builder over its weights (f32, CPU).
    fn fixture() -> (Device, DecoderConfig, VarBuilder) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference-tiny");
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let cfg = DecoderConfig::from_hf_config_file(format!("{dir}/config.json")).unwrap();
        let files = Arc::new(SafetensorsFiles::open(format!("{dir}/model.safetensors")).unwrap());
        let vb = VarBuilder::new(files, &device, DType::F32);
        (device, cfg, vb)
    }

    /// `n` deterministic hidden states `[n, d]`.
    fn input(n: usize, cfg: &DecoderConfig, device: &Device) -> Tensor<2> {
        let values: Vec<f32> = (0..n * cfg.hidden_size).map(|j| ((j * 37 % 101) as f32 / 50.0) - 1.0).collect();
        Tensor::<2>::from_data(TensorData::new(values, [n, cfg.hidden_size]), device)
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    /// The on-device (decode), dense (prefill on GPUs) and host-grouped (prefill) paths agree
    /// on the fixture's layer 1, with packed and with separate experts.
    #[test]
    fn gathered_and_grouped_paths_agree() {
        let (device, cfg, vb) = fixture();
        let separate = Moe::load(&vb.pp("model.layers.1.mlp"), &cfg, WeightFormat::Float).unwrap();
        assert!(matches!(separate.experts, Experts::Separate(_)), "CPU keeps the experts as loaded");
        let mut packed = separate.clone();
        packed.set_dispatch(ExpertDispatch::OnDevice);
        assert!(matches!(packed.experts, Experts::Packed { .. }), "on-device gathering packs them");

        let x = input(7, &cfg, &device);
        let (idx, w) = separate.route(x.clone());
        let reference = host(separate.forward_grouped(x.clone(), idx.clone(), w.clone()));
        assert!(reference.iter().any(|v| v.abs() > 1e-3), "degenerate output");
        for (name, out) in [
            ("gathered", packed.forward_gathered(x.clone(), idx.clone(), w.clone())),
            ("grouped on packed", packed.forward_grouped(x.clone(), idx.clone(), w.clone())),
            ("dense", packed.forward_dense(x.clone(), idx.clone(), w.clone())),
        ] {
            let max = host(out).iter().zip(&reference).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(max < 1e-5, "{name}: max diff {max}");
        }
    }

    /// The host pass (bf16 and quantized weights on the CPU) equals the grouped tensor path
    /// over the same host matrices, for one token and for several.
    #[test]
    fn host_pass_equals_grouped_path() {
        let (device, cfg, vb) = fixture();
        let float = Moe::load(&vb.pp("model.layers.1.mlp"), &cfg, WeightFormat::Float).unwrap();
        let x3 = input(3, &cfg, &device);
        assert!(float.forward_host(x3.clone()).is_none(), "tensor weights take the tensor paths");
        for format in [
            WeightFormat::Quantized(dsocr_nn::Quant::Q8),
            WeightFormat::Quantized(dsocr_nn::Quant::Q4),
            WeightFormat::Bf16 { mapped: false },
        ] {
            let moe = Moe::load(&vb.pp("model.layers.1.mlp"), &cfg, format).unwrap();
            for n in [1, 3] {
                let x = x3.clone().narrow(0, 0, n);
                let (idx, w) = moe.route(x.clone());
                let shared = moe.shared.as_ref().unwrap().forward(x.clone());
                let want = host(moe.forward_grouped(x.clone(), idx, w) + shared);
                let got = host(moe.forward_host(x).unwrap());
                assert!(want.iter().any(|v| v.abs() > 1e-3), "degenerate output");
                let max = got.iter().zip(&want).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                assert!(max < 1e-5, "{format:?} n={n}: max diff {max}");
            }
        }
    }

    /// Experts quantized on a device (packed stacks of the GPU path, here with the plain-Burn
    /// references on the CPU) give what the host pass gives over the same quantized values:
    /// gathered (decode) and grouped (prefill).
    #[test]
    fn device_quantized_experts_equal_the_host_pass() {
        let (device, cfg, vb) = fixture();
        for quant in [dsocr_nn::Quant::Q8, dsocr_nn::Quant::Q4] {
            let host_moe = Moe::load(&vb.pp("model.layers.1.mlp"), &cfg, WeightFormat::Quantized(quant)).unwrap();
            let Experts::Separate(experts) = &host_moe.experts else { panic!("CPU keeps separate experts") };
            let upload = |l: &Linear| QuantMatrix::from_host(l.host_matrix().unwrap(), &device).unwrap();
            let parts: Vec<[QuantMatrix; 3]> = experts.iter().map(|e| e.projections().map(upload)).collect();
            let gate_up: Vec<&QuantMatrix> = parts.iter().flat_map(|[g, u, _]| [g, u]).collect();
            let down: Vec<&QuantMatrix> = parts.iter().map(|[_, _, d]| d).collect();
            let mut on_device = host_moe.clone();
            on_device.experts = Experts::Quantized {
                gate_up: QuantMatrix::concat(&gate_up).unwrap(),
                down: QuantMatrix::concat(&down).unwrap(),
            };
            for n in [1, 4] {
                let x = input(n, &cfg, &device);
                let want = host(host_moe.forward_host(x.clone()).unwrap());
                let shared = host_moe.shared.as_ref().unwrap().forward(x.clone());
                let (idx, w) = on_device.route(x.clone());
                for (name, out) in [
                    ("gathered", on_device.forward_gathered(x.clone(), idx.clone(), w.clone())),
                    ("grouped", on_device.forward_grouped(x.clone(), idx.clone(), w.clone())),
                ] {
                    let got = host(out + shared.clone());
                    let max = got.iter().zip(&want).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                    assert!(max < 1e-5, "{quant} {name} n={n}: max diff {max}");
                }
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use std::time::Instant;

    use burn::tensor::Distribution;
    use dsocr_weights::{Backend, Precision};

    use super::*;

    /// Real DeepSeek-OCR sizes, random weights: decode-step cost of the two expert paths.
    #[test]
    #[ignore]
    fn decode_paths_real_size() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let (e, i, d, k) = (64, 896, 1280, 6);
        let rnd = |shape: [usize; 3]| Tensor::<3>::random(shape, Distribution::Normal(0.0, 0.02), &device);
        let moe = Moe {
            router: Linear::from_rows(Tensor::<2>::random([e, d], Distribution::Normal(0.0, 0.02), &device), None),
            experts: Experts::Packed { gate_up: rnd([e, 2 * i, d]), down: rnd([e, d, i]) },
            shared: None,
            num_experts: e,
            top_k: k,
            intermediate: i,
            norm_topk_prob: false,
            routed_scaling_factor: 1.0,
            gather_on_device: false,
            dense_prompts: true,
        };
        let x = Tensor::<2>::random([1, d], Distribution::Normal(0.0, 1.0), &device);
        for round in 0..3 {
            let t = Instant::now();
            for _ in 0..10 {
                let (idx, w) = moe.route(x.clone());
                let _ = moe.forward_gathered(x.clone(), idx, w).into_data();
            }
            let gathered = t.elapsed() / 10;
            let t = Instant::now();
            for _ in 0..10 {
                let (idx, w) = moe.route(x.clone());
                let _ = moe.forward_grouped(x.clone(), idx, w).into_data();
            }
            let grouped = t.elapsed() / 10;
            println!("round {round}: gathered {gathered:?}, grouped {grouped:?} per layer");
        }
    }
}
