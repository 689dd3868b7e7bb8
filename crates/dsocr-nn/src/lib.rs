//! Device ops of dsocr: the layers every block uses, loaded straight from PyTorch-layout
//! tensors, and the matrix-vector products of a decode step.
//!
//! Every op has a plain-Burn reference beside it: it is the CPU path, the readable spec and
//! the test oracle. On the GPU backends (features `cuda`, `wgpu`) some ops run CubeCL kernels
//! instead ([`kernels`], one `#[cube]` source compiled to CUDA and to WGSL); each kernel is
//! tested against its reference.
//!
//! - [`Linear`]: `y = x Wᵀ + b`, `W` in PyTorch's `[out, in]` layout; a decode step's few rows
//!   go through [`matvec`]; on the CPU backends a bf16 or quantized weight ([`WeightFormat`])
//!   stays in host memory and multiplies with the kernels of [`host`];
//! - [`quant`]: q8 / q4 weight-only quantization in blocks of 32 (scalar reference);
//!   [`QuantMatrix`]: the same on a GPU device, multiplied by [`quant_matvec`] /
//!   [`gathered_quant_matvec`] (dequantized in registers);
//! - [`matvec`] / [`gathered_matvec`]: `x Wᵀ` for a few rows, and the same with one weight
//!   matrix per row picked by id from a stack (the MoE experts of a decode step);
//! - [`rms_norm`] / [`add_rms_norm`]: RMSNorm with f32 statistics, alone or after the
//!   residual add;
//! - [`rope_rows`]: rotate-half RoPE of one new position per sequence;
//! - [`Embedding`]: token rows by id; on the CPU backends a table stored in another dtype stays
//!   in the mapped checkpoint and only the rows looked up are converted;
//! - [`LayerNorm`]: statistics in f32 whatever the activation dtype;
//! - [`attention`]: scaled dot-product attention with an f32 softmax in half precision;
//!   [`decode_attention`]: one query per sequence over its K/V cache, the length on the device;
//! - [`overwrite`]: new values written into an existing device buffer (the inputs of a
//!   captured decode graph).

pub mod arena;
mod attention;
mod embedding;
mod gemm;
pub mod host;
#[cfg(feature = "kernels")]
pub mod kernels;
mod layer_norm;
mod linear;
pub mod matvec;
mod overwrite;
pub mod quant;
pub mod quantized;
pub mod rms_norm;
pub mod rope;

pub use attention::{attention, decode_attention, long_attention, long_attention_available};
pub use embedding::Embedding;
pub use gemm::gemm;
pub use layer_norm::LayerNorm;
pub use linear::{Linear, WeightFormat};
pub use matvec::{gathered_matvec, grouped_available, matvec};
pub use overwrite::{overwrite, overwrite_blocks, overwrite_blocks_reference, overwrites_in_place, Blocks};
pub use quant::Quant;
pub use quantized::{gathered_quant_matvec, quant_matvec, QuantMatrix};
pub use rms_norm::{add_rms_norm, rms_norm};
pub use rope::rope_rows;

use burn::prelude::*;

/// Whether [`quant_matvec`] runs its kernel for `x` against `w` on this build and device (for
/// reports: `dsocr bench kernels --quant`).
pub fn kernels_used_for_quant(x: &Tensor<2>, w: &QuantMatrix) -> bool {
    #[cfg(feature = "kernels")]
    return kernels::quant_available(kernels::Kernel::Matvec, x, w);
    #[cfg(not(feature = "kernels"))]
    {
        let _ = (x, w);
        false
    }
}

/// `max |got − want| / max |want|` in f32: how the kernel checks (`kernels::check`) and
/// `dsocr bench kernels` compare an op's output with its f32 oracle.
pub fn relative_error(got: Tensor<2>, want: Tensor<2>) -> f32 {
    let want = want.cast(burn::tensor::DType::F32);
    let scale: f32 = want.clone().abs().max().into_scalar();
    let diff: f32 = (got.cast(burn::tensor::DType::F32) - want).abs().max().into_scalar();
    diff / scale.max(1e-12)
}
