//! Every kernel against its plain-Burn reference on one device, at small shapes (odd sizes,
//! fewer elements than lanes, the tiny fixture's) and at the decoder's real ones, with the
//! input layouts the model hands them (reshaped, transposed views). Run by `tests/kernels.rs`
//! (WGPU, lavapipe in CI) and by `dsocr debug kernels` (any device, the real GPU).
//!
//! The oracle is the reference in f32 of the same (rounded) inputs; the tolerance is a relative
//! error of f32 sums in another order, or one rounding to the half-precision output.

use burn::prelude::*;
use burn::tensor::{DType, Distribution};

use crate::matvec::{gathered_matvec_reference, matvec_reference};
use crate::quant::Quant;
use crate::quantized::{gathered_quant_matvec_reference, quant_matvec_reference, quantize_tensor, QuantMatrix};
use crate::relative_error;
use crate::rms_norm::{add_rms_norm_reference, rms_norm_reference};
use crate::rope::rope_rows_reference;

/// One comparison.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub rel_err: f32,
    pub tolerance: f32,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.tolerance
    }
}

/// Sizes that fit a software driver (one buffer ≤ 128 MiB on lavapipe), or the real ones too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizes {
    Small,
    Real,
}

/// `(rows, out, in)`: one row and several; `in` with and without a 4-wide vector; fewer
/// vectors than lanes; the tiny fixture's projections; an output taller than 8 × 65,535.
const MATVEC_SMALL: [(usize, usize, usize); 10] = [
    (1, 24, 40),
    (3, 24, 41),
    (1, 64, 64),
    (5, 64, 64),
    (5, 96, 64),
    (5, 64, 96),
    (1, 512, 64),
    (2, 64, 24),
    (7, 1792, 1280),
    (1, 600_000, 8),
];
/// The decoder's real projections (DeepSeek-OCR: hidden 1280, dense 6848, shared 1792,
/// vocabulary 129,280).
const MATVEC_REAL: [(usize, usize, usize); 6] =
    [(1, 1280, 1280), (16, 1280, 1280), (1, 6848, 1280), (1, 1280, 6848), (1, 129_280, 1280), (4, 129_280, 1280)];
/// `(tokens, slots per token, experts, out, in)`.
const GATHERED_SMALL: [(usize, usize, usize, usize, usize); 5] =
    [(1, 6, 8, 20, 48), (3, 6, 8, 20, 48), (18, 1, 8, 33, 17), (5, 3, 8, 48, 64), (15, 1, 8, 64, 24)];
const GATHERED_REAL: [(usize, usize, usize, usize, usize); 3] =
    [(1, 6, 64, 1792, 1280), (6, 1, 64, 1280, 896), (16, 6, 64, 1792, 1280)];
/// `(tokens, slots per token, experts, out, in)` of the grouped kernel: fewer slots than one
/// pass, several passes (300 and 600 slots over 256-id windows), more slots of one matrix than
/// a window holds (one expert), an output not a multiple of its block, the fixture's sizes.
const GROUPED_SMALL: [(usize, usize, usize, usize, usize); 6] = [
    (3, 6, 8, 20, 48),
    (50, 6, 8, 33, 64),
    (100, 6, 8, 40, 17),
    (300, 1, 1, 24, 40),
    (18, 1, 8, 70, 24),
    (40, 2, 4, 64, 64),
];
/// A batched decode step's experts: 32, 64 and 128 tokens, top 6 of 64.
const GROUPED_REAL: [(usize, usize, usize, usize, usize); 4] =
    [(32, 6, 64, 1792, 1280), (128, 6, 64, 1792, 1280), (64, 1, 64, 1280, 896), (768, 1, 64, 1280, 896)];
/// `(rows, out, in)` of the quantized products (`in` whole blocks of 32).
const QUANT_SMALL: [(usize, usize, usize); 6] =
    [(1, 24, 32), (3, 40, 96), (1, 512, 64), (5, 64, 1280), (2, 1280, 896), (1, 70_000, 32)];
const QUANT_REAL: [(usize, usize, usize); 5] =
    [(1, 1280, 1280), (16, 1280, 1280), (1, 6848, 1280), (1, 1280, 6848), (1, 129_280, 1280)];
/// `(tokens, slots per token, experts, out, in)` of the quantized gathered product.
const QUANT_GATHERED_SMALL: [(usize, usize, usize, usize, usize); 3] =
    [(1, 6, 8, 20, 64), (3, 6, 8, 48, 32), (15, 1, 8, 64, 96)];
const QUANT_GATHERED_REAL: [(usize, usize, usize, usize, usize); 2] = [(1, 6, 64, 1792, 1280), (6, 1, 64, 1280, 896)];

/// `(rows, d)`.
const NORM_SMALL: [(usize, usize); 6] = [(1, 8), (5, 40), (3, 37), (5, 64), (2, 1280), (4, 3000)];
const NORM_REAL: [(usize, usize); 3] = [(1, 1280), (16, 1280), (902, 1280)];
/// `(heads, capacity, head_dim, position of each sequence)`: one block and several, the last
/// position of the buffer, position 0, a head dimension without a 4-wide vector, two sequences.
const ATTENTION_SMALL: [(usize, usize, usize, &[usize]); 6] = [
    (2, 40, 16, &[17]),
    (3, 64, 32, &[0]),
    (2, 130, 24, &[129]),
    (2, 100, 16, &[5, 99]),
    (1, 9, 6, &[4]),
    (10, 300, 128, &[299]),
];
/// `(batch, heads, seq, head_dim, value dim)` of the long bidirectional attention (half
/// precision only): the real ones are SAM's global attention with its relative positions folded
/// into the product (head dim 256, values 64) over the 1024² global view (4,096 tokens) and the
/// six 640² tiles of a Gundam page (1,600 tokens each).
const FLASH_SMALL: [(usize, usize, usize, usize, usize); 3] =
    [(1, 2, 64, 64, 16), (2, 2, 160, 256, 24), (1, 3, 256, 32, 32)];
const FLASH_REAL: [(usize, usize, usize, usize, usize); 2] = [(1, 12, 4096, 256, 64), (6, 12, 1600, 256, 64)];
/// The decoder's: 10 heads of 128, a 902-token prompt in a 1,536-position cache, and later.
const ATTENTION_REAL: [(usize, usize, usize, &[usize]); 2] = [(10, 1536, 128, &[902]), (10, 2048, 128, &[1900])];

fn random<const D: usize>(shape: [usize; D], device: &Device, dtype: DType) -> Tensor<D> {
    Tensor::<D>::random(shape, Distribution::Normal(0.0, 1.0), device).cast(dtype)
}

/// The f32 product row by row as a multiply and a sum (exact f32 arithmetic on every backend,
/// where a matmul may round its inputs, e.g. to TF32 on CUDA tensor cores).
fn matvec_oracle(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let rows = x.dims()[0];
    Tensor::cat((0..rows).map(|r| matvec_reference(x.clone().narrow(0, r, 1), w.clone())).collect(), 0)
}

/// Masked attention of one query in exact f32 arithmetic (products and sums, no matmul).
fn decode_attention_oracle(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Tensor<4, Bool>) -> Tensor<4> {
    let [b, h, capacity, d] = k.dims();
    let scores = (q * k).sum_dim(3).reshape([b, h, 1, capacity]) * (1.0 / (d as f64).sqrt());
    let p = burn::tensor::activation::softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    (p.reshape([b, h, capacity, 1]) * v).sum_dim(2)
}

/// A random `[rows, cols]` weight, quantized ([`quantize_tensor`]), with its oracle.
fn quantized(quant: Quant, rows: usize, cols: usize, device: &Device) -> (QuantMatrix, Tensor<2>) {
    quantize_tensor(quant, Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), device))
}

fn f32<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
    t.clone().cast(DType::F32)
}

fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 4e-3,
        _ => 2e-2, // bf16: 8 bits of mantissa
    }
}

/// Runs every check in `dtype` on `device` (the kernels themselves, whatever
/// [`available`](super::available) says).
pub fn run(device: &Device, dtype: DType, sizes: Sizes) -> Vec<Check> {
    let mut checks = Vec::new();
    let tol = tolerance(dtype);
    let mut push = |name: String, rel_err: f32| checks.push(Check { name, rel_err, tolerance: tol });

    let real = sizes == Sizes::Real;
    let matvec_shapes = MATVEC_SMALL.iter().chain(MATVEC_REAL.iter().filter(|_| real));
    for &(rows, out, k) in matvec_shapes {
        let x = random([rows, k], device, dtype);
        let w = random([out, k], device, dtype);
        let want = matvec_oracle(f32(&x), f32(&w));
        push(
            format!("matvec {rows}×{k} · {out}×{k}"),
            relative_error(super::matvec(x.clone(), w.clone()), want.clone()),
        );
        // As `Linear` hands them over: x reshaped from [1, rows, k], w the transposed view of a
        // transposed view.
        let x3 = x.reshape([1, rows, k]).reshape([rows, k]);
        let w_view = w.transpose().transpose();
        push(format!("matvec {rows}×{k} · {out}×{k} (views)"), relative_error(super::matvec(x3, w_view), want));
    }
    // A transposed weight that is not contiguous (an `[in, out]` tensor viewed as `[out, in]`).
    let (x, w_t) = (random([2, 40], device, dtype), random([40, 24], device, dtype));
    let want = matvec_oracle(f32(&x), f32(&w_t).transpose());
    push("matvec 2×40 · strided 24×40".into(), relative_error(super::matvec(x, w_t.transpose()), want));

    let gathered_shapes = GATHERED_SMALL.iter().chain(GATHERED_REAL.iter().filter(|_| real));
    for &(tokens, per, experts, out, k) in gathered_shapes {
        let slots = tokens * per;
        let ids: Vec<i64> = (0..slots).map(|s| ((s * 5 + s / per.max(1) * 3) % experts) as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [slots]), device);
        let x = random([tokens, k], device, dtype);
        let w = random([experts, out, k], device, dtype);
        let want = gathered_matvec_reference(f32(&x), w.clone().cast(DType::F32), ids.clone());
        let got = super::gathered_matvec(x, w, ids);
        push(format!("gathered {tokens} tokens × {per} of {experts} experts {out}×{k}"), relative_error(got, want));
    }

    // The grouped kernel (grid over the matrices): against the reference, and bit for bit
    // against the per-slot kernel (the same dot products in the same order).
    let grouped_shapes = GROUPED_SMALL.iter().chain(GROUPED_REAL.iter().filter(|_| real));
    for &(tokens, per, experts, out, k) in grouped_shapes {
        let slots = tokens * per;
        // Distinct ids within a token, as top-k gives; with one expert, every slot on it.
        let ids: Vec<i64> = (0..slots).map(|s| ((s * 5 + s / per.max(1) * 3) % experts) as i64).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [slots]), device);
        let x = random([tokens, k], device, dtype);
        let w = random([experts, out, k], device, dtype);
        let want = gathered_matvec_reference(f32(&x), w.clone().cast(DType::F32), ids.clone());
        let got = super::grouped_matvec(x.clone(), w.clone(), ids.clone());
        let name = format!("grouped {tokens} tokens × {per} of {experts} experts {out}×{k}");
        push(name.clone(), relative_error(got.clone(), want));
        let per_slot = super::gathered_matvec(x, w, ids);
        let diff: f32 = (f32(&got) - f32(&per_slot)).abs().max().into_scalar();
        // Exact: any difference is an infinite relative error.
        push(format!("{name} = gathered, bit for bit"), if diff == 0.0 { 0.0 } else { f32::INFINITY });
    }

    for quant in [Quant::Q8, Quant::Q4] {
        let shapes = QUANT_SMALL.iter().chain(QUANT_REAL.iter().filter(|_| real));
        for &(rows, out, k) in shapes {
            let x = random([rows, k], device, dtype);
            let (w, dequantized) = quantized(quant, out, k, device);
            let want = matvec_oracle(f32(&x), dequantized);
            let name = format!("{quant} matvec {rows}×{k} · {out}×{k}");
            push(name.clone(), relative_error(super::quant_matvec(x.clone(), &w), want.clone()));
            // The plain-Burn reference (the path without kernels), in f32.
            push(format!("{name} reference"), relative_error(quant_matvec_reference(f32(&x), &w), want));
        }
        let shapes = QUANT_GATHERED_SMALL.iter().chain(QUANT_GATHERED_REAL.iter().filter(|_| real));
        for &(tokens, per, experts, out, k) in shapes {
            let slots = tokens * per;
            let ids: Vec<i64> = (0..slots).map(|s| ((s * 5 + s / per.max(1) * 3) % experts) as i64).collect();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [slots]), device);
            let x = random([tokens, k], device, dtype);
            let (w, dequantized) = quantized(quant, experts * out, k, device);
            let want = gathered_matvec_reference(f32(&x), dequantized.reshape([experts, out, k]), ids.clone());
            let name = format!("{quant} gathered {tokens} tokens × {per} of {experts} experts {out}×{k}");
            let got = super::gathered_quant_matvec(x.clone(), &w, out, ids.clone());
            push(name.clone(), relative_error(got, want.clone()));
            let reference = gathered_quant_matvec_reference(f32(&x), &w, out, ids);
            push(format!("{name} reference"), relative_error(reference, want));
        }
    }

    let norm_shapes = NORM_SMALL.iter().chain(NORM_REAL.iter().filter(|_| real));
    for &(rows, d) in norm_shapes {
        let x = random([rows, d], device, dtype);
        let delta = random([rows, d], device, dtype);
        let w = (random([d], device, DType::F32) * 0.2 + 1.0).cast(dtype);
        let want = rms_norm_reference(f32(&x), &f32(&w), 1e-6);
        push(format!("rms_norm {rows}×{d}"), relative_error(super::rms_norm(x.clone(), w.clone(), 1e-6), want));
        // The sum is the one rounding of `x + delta` in the activation dtype, as the
        // reference's: compared with the reference in that dtype, exactly.
        let (want_sum, _) = add_rms_norm_reference(x.clone(), delta.clone(), &w, 1e-6);
        let want = rms_norm_reference(f32(&want_sum), &f32(&w), 1e-6);
        let (sum, normed) = super::add_rms_norm(x, delta, w, 1e-6);
        let sum_diff: f32 = (f32(&sum) - f32(&want_sum)).abs().max().into_scalar();
        // Exact: any difference is an infinite relative error.
        push(format!("add_rms_norm {rows}×{d} sum"), if sum_diff == 0.0 { 0.0 } else { f32::INFINITY });
        push(format!("add_rms_norm {rows}×{d}"), relative_error(normed, want));
    }

    let attention_shapes = ATTENTION_SMALL.iter().chain(ATTENTION_REAL.iter().filter(|_| real));
    for &(heads, capacity, d, positions) in attention_shapes {
        let b = positions.len();
        let q = random([b, heads, 1, d], device, dtype);
        let k = random([b, heads, capacity, d], device, dtype);
        let v = random([b, heads, capacity, d], device, dtype);
        let position = Tensor::<1, Int>::from_data(
            TensorData::new(positions.iter().map(|&p| p as i64).collect::<Vec<_>>(), [b]),
            device,
        );
        let mask = Tensor::<1, Int>::arange(0..capacity as i64, device)
            .reshape([1, capacity])
            .greater(position.clone().reshape([b, 1]))
            .reshape([b, 1, 1, capacity]);
        let want = decode_attention_oracle(f32(&q), f32(&k), f32(&v), mask).reshape([b * heads, d]);
        let got = super::decode_attention(q, k, v, position).reshape([b * heads, d]);
        push(format!("decode_attention {heads}×{capacity}×{d} at {positions:?}"), relative_error(got, want));
    }

    // gemm (the chosen routine, or Burn's matmul where it is refused): a weight as `Linear`
    // hands it over (the transposed view of `[n, k]`), odd sizes, and the vision towers' real
    // shapes (SAM's MLP over a page's 4,096 global-view tokens, CLIP's over 257).
    let gemm_shapes: &[(usize, usize, usize)] = if real {
        &[(33, 40, 24), (130, 64, 96), (4096, 768, 3072), (9600, 3072, 768), (257, 1024, 4096)]
    } else {
        &[(33, 40, 24), (130, 64, 96), (200, 256, 128)]
    };
    // Half precision only: in f32 both the kernel and a matmul oracle run as TF32 on CUDA.
    for &(m, k, n) in gemm_shapes.iter().filter(|_| dtype != DType::F32) {
        let x = random([m, k], device, dtype);
        let w = random([n, k], device, dtype);
        let want = f32(&x).matmul(f32(&w).transpose());
        push(format!("gemm {m}×{k} · {k}×{n}"), relative_error(super::gemm(x, w.transpose()), want));
    }

    // flash attention (half precision: its tiles are f16 whatever the input).
    if dtype != DType::F32 {
        let flash_shapes = FLASH_SMALL.iter().chain(FLASH_REAL.iter().filter(|_| real));
        for &(b, heads, seq, d, dv) in flash_shapes {
            let q = random([b, heads, seq, d], device, dtype);
            let k = random([b, heads, seq, d], device, dtype);
            let v = random([b, heads, seq, dv], device, dtype);
            let want = crate::attention(f32(&q), f32(&k), f32(&v), None, None, false).reshape([b * heads * seq, dv]);
            let got = super::flash_attention(q, k, v).reshape([b * heads * seq, dv]);
            push(format!("flash_attention {b}×{heads}×{seq}×{d} → {dv}"), relative_error(got, want));
        }
    }

    // rope: rows at different positions, head dims of the fixture (16) and the model (128).
    for &(rows, heads, d) in &[(1usize, 2usize, 16usize), (3, 4, 8), (1, 10, 128), (5, 10, 128)] {
        let x = random([rows, heads, 1, d], device, dtype);
        let angles = Tensor::<2>::random([rows, d], Distribution::Uniform(-3.0, 3.0), device);
        let (cos, sin) = (angles.clone().cos().cast(dtype), angles.sin().cast(dtype));
        let want = rope_rows_reference(f32(&x), &f32(&cos), &f32(&sin)).reshape([rows * heads, d]);
        let got = super::rope_rows(x, cos, sin).reshape([rows * heads, d]);
        push(format!("rope {rows}×{heads}×{d}"), relative_error(got, want));
    }

    // overwrite: the values land in the destination's buffer, so a clone taken before the
    // write reads them (as a captured graph does), at lengths below and above one cube.
    for len in [2usize, 3, 130] {
        let ints = |offset: i64| {
            Tensor::<1, Int>::from_data(
                TensorData::new((0..len as i64).map(|i| i * 7 + offset).collect(), [len]),
                device,
            )
        };
        let dst = ints(100);
        let reader = dst.clone();
        let alias = super::overwrite(dst, ints(-3));
        let got: Vec<i64> = reader.into_data().convert::<i64>().iter::<i64>().collect();
        drop(alias);
        let want: Vec<i64> = (0..len as i64).map(|i| i * 7 - 3).collect();
        push(format!("overwrite {len} ints in place"), if got == want { 0.0 } else { f32::INFINITY });
    }

    // overwrite_blocks: strided blocks of floats land in the destination's buffer (a clone
    // taken before sees them) exactly where the reference puts them, in the K/V layouts of a
    // slot insert ([slots, heads, capacity, d] ← [1, heads, len, d] of a larger prefill buffer).
    for &(slots, heads, capacity, d, len) in &[(3usize, 2usize, 8usize, 4usize, 5usize), (4, 10, 96, 128, 70)] {
        // Materialised first (no pending lazy op on them), as the K/V buffers are.
        let settled = |t: Tensor<4>| Tensor::<4>::from_data(t.into_data(), device);
        let dst = settled(random([slots, heads, capacity, d], device, dtype));
        let src = settled(random([1, heads, capacity + 3, d], device, dtype));
        let row = slots - 2;
        let b = crate::Blocks {
            count: heads,
            len: len * d,
            dst_offset: row * heads * capacity * d,
            dst_stride: capacity * d,
            src_offset: 0,
            src_stride: (capacity + 3) * d,
        };
        let want = crate::overwrite_blocks_reference(f32(&dst), f32(&src), b);
        let reader = dst.clone();
        let alias = super::overwrite_blocks(dst, src, b);
        let got = f32(&reader).reshape([slots * heads * capacity, d]);
        drop(alias);
        push(
            format!("overwrite_blocks {slots}×{heads}×{capacity}×{d} in place"),
            relative_error(got, want.reshape([slots * heads * capacity, d])),
        );
    }
    checks
}
