//! Weights kept in host memory for the CPU backends, and their matrix-vector products.
//!
//! flex multiplies bf16 matrices by converting both operands to f32 on every call (a full
//! copy of the weight, docs/performance.md finding 2), and it has no quantized matmul. A
//! [`HostMatrix`] keeps a `[out, in]` weight in one of two compact forms and multiplies a few
//! rows by it reading each weight once, converting in registers:
//!
//! - **bf16**: the checkpoint's bytes, shared zero-copy with the memory map when the file is
//!   bf16 (a copy converted once otherwise);
//! - **q8 / q4**: the blocks of [`crate::quant`], quantized at load.
//!
//! ```text
//! matvec(x, W)[r, o] = Σ_k x[r, k] · W[o, k]        x: [m, in] f32, f32 sums
//! ```
//!
//! The reference is the same product in plain Burn over the dequantized matrix
//! ([`HostMatrix::dequantize`], then `matmul`); the tests compare the two. The kernels run
//! over output rows on rayon's pool (the one flex uses) and are compiled three times (AVX-512,
//! AVX2+FMA and the baseline), picked at run time.

use std::sync::OnceLock;

use burn::tensor::DType;
use rayon::prelude::*;

use crate::arena::HostBytes;
use crate::quant::{blocks_per_row, dequantize_row, quantize_row_into, Quant, BLOCK};

/// The most rows one [`HostMatrix::matvec`] call takes in [`crate::Linear`]; more rows (a
/// prompt) are multiplied by dequantized slices of the weight with flex's matmul.
pub const HOST_MATVEC_MAX_ROWS: usize = 8;

/// Output rows dequantized at a time for a product of many rows (bounds the f32 copy: 4,096
/// rows × 1,280 = 21 MB for the lm_head).
pub const DEQUANTIZE_CHUNK_ROWS: usize = 4096;

/// A `[rows, cols]` weight (PyTorch's `[out, in]`) in host memory (module docs).
#[derive(Debug)]
pub struct HostMatrix {
    rows: usize,
    cols: usize,
    data: HostData,
}

#[derive(Debug)]
enum HostData {
    /// bf16 bit patterns, row-major.
    Bf16(Bf16Bits),
    /// [`blocks_per_row`] f32 scales per row and `quant.block_bytes()` bytes per block.
    Quantized { quant: Quant, scales: HostBytes, values: HostBytes },
}

/// bf16 values, either shared with the checkpoint's mapping or copied into huge-page memory.
#[derive(Debug)]
enum Bf16Bits {
    Mapped(bytes::Bytes),
    Owned(HostBytes),
}

impl Bf16Bits {
    fn as_slice(&self) -> &[u16] {
        match self {
            // Checked aligned and of even length when built (`HostMatrix::bf16`).
            Bf16Bits::Mapped(bytes) => bytemuck::cast_slice(bytes),
            Bf16Bits::Owned(bits) => bits.as_u16(),
        }
    }
}

impl HostMatrix {
    /// A bf16 matrix from checkpoint bytes of `dtype` (F32, F16 or BF16), used in place
    /// (zero-copy) when the file is bf16 and aligned to 2 bytes; anything else is converted
    /// once into huge-page memory ([`crate::arena`]).
    pub fn bf16(dtype: DType, raw: bytes::Bytes, rows: usize, cols: usize) -> Self {
        let aligned = bytemuck::try_cast_slice::<u8, u16>(&raw).is_ok();
        if dtype == DType::BF16 && aligned && raw.len() == rows * cols * 2 {
            return Self { rows, cols, data: HostData::Bf16(Bf16Bits::Mapped(raw)) };
        }
        Self::bf16_copied(dtype, &raw, rows, cols)
    }

    /// A bf16 matrix copied (or converted) from checkpoint bytes of `dtype` into huge-page
    /// memory: more resident memory than the mapping, but streamed at full speed
    /// ([`crate::arena`]).
    pub fn bf16_copied(dtype: DType, raw: &[u8], rows: usize, cols: usize) -> Self {
        let mut bits = HostBytes::zeroed(rows * cols * 2);
        let out = bits.as_mut_u16();
        let row_bytes = cols * dtype.size();
        out.par_chunks_mut(cols).zip(raw[..rows * row_bytes].par_chunks(row_bytes)).for_each(|(out, raw)| {
            if dtype == DType::BF16 {
                for (o, c) in out.iter_mut().zip(raw.as_chunks::<2>().0) {
                    *o = u16::from_le_bytes(*c);
                }
            } else {
                let mut row = vec![0f32; cols];
                dsocr_weights::bytes_into_f32(raw, dtype, &mut row);
                for (o, v) in out.iter_mut().zip(row) {
                    *o = half::bf16::from_f32(v).to_bits();
                }
            }
        });
        Self { rows, cols, data: HostData::Bf16(Bf16Bits::Owned(bits)) }
    }

    /// Quantizes checkpoint bytes of `dtype` row by row (in parallel) into huge-page memory;
    /// only the quantized form is kept.
    pub fn quantize(quant: Quant, dtype: DType, raw: &[u8], rows: usize, cols: usize) -> Self {
        let row_bytes = cols * dtype.size();
        let blocks = blocks_per_row(cols);
        let mut scales = HostBytes::zeroed_f32(rows * blocks);
        let mut values = HostBytes::zeroed(rows * blocks * quant.block_bytes());
        let per_task = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
        raw[..rows * row_bytes]
            .par_chunks(per_task * row_bytes)
            .zip(scales.as_mut_f32().par_chunks_mut(per_task * blocks))
            .zip(values.as_mut_slice().par_chunks_mut(per_task * blocks * quant.block_bytes()))
            .for_each(|((raw, scales), values)| quantize_rows(quant, dtype, raw, row_bytes, scales, values));
        Self { rows, cols, data: HostData::Quantized { quant, scales, values } }
    }

    /// A matrix quantized earlier (a quantized checkpoint): `scales` (f32, little-endian) and
    /// `values` in the layout of [`crate::quant`], copied into huge-page memory. `None` if their
    /// lengths do not fit `rows × cols` in `quant`.
    pub fn from_quantized(quant: Quant, scales: &[u8], values: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let blocks = blocks_per_row(cols);
        if scales.len() != rows * blocks * 4 || values.len() != rows * blocks * quant.block_bytes() {
            return None;
        }
        let mut s = HostBytes::zeroed_f32(rows * blocks);
        for (o, c) in s.as_mut_f32().iter_mut().zip(scales.as_chunks::<4>().0) {
            *o = f32::from_le_bytes(*c);
        }
        let mut v = HostBytes::zeroed(values.len());
        v.as_mut_slice().copy_from_slice(values);
        Some(Self { rows, cols, data: HostData::Quantized { quant, scales: s, values: v } })
    }

    /// Output rows (`out`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input columns (`in`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `None` for bf16, the format otherwise.
    pub fn quant(&self) -> Option<Quant> {
        match &self.data {
            HostData::Bf16(_) => None,
            HostData::Quantized { quant, .. } => Some(*quant),
        }
    }

    /// The format, the f32 scales and the block bytes of a quantized matrix (the layout of
    /// [`crate::quant`], row after row); `None` for bf16.
    pub fn quantized_parts(&self) -> Option<(Quant, &[f32], &[u8])> {
        match &self.data {
            HostData::Bf16(_) => None,
            HostData::Quantized { quant, scales, values } => Some((*quant, scales.as_f32(), values.as_slice())),
        }
    }

    /// Bytes the weight takes (mapped or owned).
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            HostData::Bf16(bits) => bits.as_slice().len() * 2,
            HostData::Quantized { scales, values, .. } => scales.len() + values.len(),
        }
    }

    /// Rows `start..start + count` as f32 `[count, cols]`, row-major.
    pub fn dequantize_rows(&self, start: usize, count: usize) -> Vec<f32> {
        let cols = self.cols;
        let mut out = vec![0f32; count * cols];
        out.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            let o = start + i;
            match &self.data {
                HostData::Bf16(bits) => {
                    for (v, &b) in row.iter_mut().zip(&bits.as_slice()[o * cols..(o + 1) * cols]) {
                        *v = bf16_to_f32(b);
                    }
                }
                HostData::Quantized { quant, scales, values } => {
                    let (scales, values) = (scales.as_f32(), values.as_slice());
                    let blocks = blocks_per_row(cols);
                    let bytes = blocks * quant.block_bytes();
                    let (s, v) = (&scales[o * blocks..(o + 1) * blocks], &values[o * bytes..(o + 1) * bytes]);
                    dequantize_row(*quant, s, v, cols, row);
                }
            }
        });
        out
    }

    /// The whole matrix as f32 `[rows, cols]`: the reference form.
    pub fn dequantize(&self) -> Vec<f32> {
        self.dequantize_rows(0, self.rows)
    }

    /// `x: [m, cols]` row-major → `x Wᵀ`: `[m, rows]` row-major, f32 sums.
    pub fn matvec(&self, x: &[f32], m: usize) -> Vec<f32> {
        matvec_many(&[(self, x)], m).pop().unwrap_or_default()
    }

    /// Rows `first..first + out.len() / m` of `x Wᵀ` as `[n, m]` (one task's share).
    fn fill_rows(&self, first: usize, x: &[f32], m: usize, out: &mut [f32]) {
        let cols = self.cols;
        match &self.data {
            HostData::Bf16(bits) => fill(&Bf16Rows { bits: bits.as_slice(), cols }, first, x, m, out),
            HostData::Quantized { quant: Quant::Q8, scales, values } => {
                let (scales, values) = (scales.as_f32(), values.as_slice());
                fill(&Q8Rows { scales, values, cols, blocks: blocks_per_row(cols) }, first, x, m, out)
            }
            HostData::Quantized { quant: Quant::Q4, scales, values } => {
                let (scales, values) = (scales.as_f32(), values.as_slice());
                fill(&Q4Rows { scales, values, cols, blocks: blocks_per_row(cols) }, first, x, m, out)
            }
        }
    }
}

/// Output rows per task of [`matvec_many`]: small enough to balance two to a few dozen
/// threads over one expert's 896 rows, large enough that a task's overhead is noise.
const ROWS_PER_TASK: usize = 64;

/// Several products `x_j W_jᵀ` of `m` rows each (`x_j: [m, cols_j]`), computed in ONE
/// parallel pass over all their output rows: a decode step's q/k/v, or the gate/up products of
/// all chosen experts, cost one fork-join instead of one each. Results are `[m, rows_j]`
/// row-major, in the order of `jobs`; each equals [`HostMatrix::matvec`] of its job exactly
/// (the same kernel over the same rows).
pub fn matvec_many(jobs: &[(&HostMatrix, &[f32])], m: usize) -> Vec<Vec<f32>> {
    for (matrix, x) in jobs {
        assert_eq!(x.len(), m * matrix.cols, "matvec_many: each x must be [m, cols] of its matrix");
    }
    // Computed as [rows, m] (each task writes its rows), transposed to [m, rows] if m > 1.
    let mut outs: Vec<Vec<f32>> = jobs.iter().map(|(matrix, _)| vec![0f32; matrix.rows * m]).collect();
    let mut tasks: Vec<(usize, usize, &mut [f32])> = Vec::new();
    for (j, out) in outs.iter_mut().enumerate() {
        for (t, chunk) in out.chunks_mut(ROWS_PER_TASK * m).enumerate() {
            tasks.push((j, t * ROWS_PER_TASK, chunk));
        }
    }
    tasks.into_par_iter().for_each(|(j, first, out)| jobs[j].0.fill_rows(first, jobs[j].1, m, out));
    if m == 1 {
        return outs;
    }
    outs.into_iter()
        .map(|out| {
            let rows = out.len() / m;
            let mut y = vec![0f32; rows * m];
            for o in 0..rows {
                for r in 0..m {
                    y[r * rows + o] = out[o * m + r];
                }
            }
            y
        })
        .collect()
}

#[inline(always)]
fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Quantizes whole rows of checkpoint bytes into their [`quantize_row_into`] outputs,
/// compiled for the CPU's vector units (rounding is one instruction with SSE4.1, a library call
/// without), picked at run time like the products.
fn quantize_rows(quant: Quant, dtype: DType, raw: &[u8], row_bytes: usize, scales: &mut [f32], values: &mut [u8]) {
    #[inline(always)]
    fn plain(quant: Quant, dtype: DType, raw: &[u8], row_bytes: usize, scales: &mut [f32], values: &mut [u8]) {
        let cols = row_bytes / dtype.size();
        let blocks = blocks_per_row(cols);
        let mut row = vec![0f32; cols];
        let outputs = scales.chunks_exact_mut(blocks).zip(values.chunks_exact_mut(blocks * quant.block_bytes()));
        for (bytes, (scales, values)) in raw.chunks_exact(row_bytes).zip(outputs) {
            dsocr_weights::bytes_into_f32(bytes, dtype, &mut row);
            quantize_row_into(quant, &row, scales, values);
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(q: Quant, d: DType, raw: &[u8], row_bytes: usize, s: &mut [f32], v: &mut [u8]) {
            plain(q, d, raw, row_bytes, s, v)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(q: Quant, d: DType, raw: &[u8], row_bytes: usize, s: &mut [f32], v: &mut [u8]) {
            plain(q, d, raw, row_bytes, s, v)
        }
        match simd() {
            // SAFETY: the CPU has the features these copies were compiled for (checked by `simd`).
            Simd::Avx512 => return unsafe { avx512(quant, dtype, raw, row_bytes, scales, values) },
            Simd::Avx2 => return unsafe { avx2(quant, dtype, raw, row_bytes, scales, values) },
            Simd::Baseline => {}
        }
    }
    plain(quant, dtype, raw, row_bytes, scales, values)
}

/// One weight format's dot product of output row `o` with an f32 vector of `cols` values.
trait RowDot: Sync {
    fn cols(&self) -> usize;
    fn dot(&self, o: usize, x: &[f32]) -> f32;
}

struct Bf16Rows<'a> {
    bits: &'a [u16],
    cols: usize,
}

impl RowDot for Bf16Rows<'_> {
    fn cols(&self) -> usize {
        self.cols
    }

    #[inline(always)]
    fn dot(&self, o: usize, x: &[f32]) -> f32 {
        let w = &self.bits[o * self.cols..(o + 1) * self.cols];
        // Fixed-size chunks: no bounds checks, 32 independent lanes the compiler keeps in
        // vector registers.
        let ((wb, wt), (xb, xt)) = (w.as_chunks::<32>(), x.as_chunks::<32>());
        let mut acc = [0f32; 32];
        for (w, x) in wb.iter().zip(xb) {
            prefetch_ahead(w);
            for l in 0..32 {
                acc[l] += bf16_to_f32(w[l]) * x[l];
            }
        }
        let tail: f32 = wt.iter().zip(xt).map(|(&w, &x)| bf16_to_f32(w) * x).sum();
        lane_sum(&acc) + tail
    }
}

struct Q8Rows<'a> {
    scales: &'a [f32],
    values: &'a [u8],
    cols: usize,
    blocks: usize,
}

impl RowDot for Q8Rows<'_> {
    fn cols(&self) -> usize {
        self.cols
    }

    #[inline(always)]
    fn dot(&self, o: usize, x: &[f32]) -> f32 {
        let scales = &self.scales[o * self.blocks..(o + 1) * self.blocks];
        // Rows are padded to whole blocks: `qb` has `blocks` chunks, `xb` the full ones.
        let values = &self.values[o * self.blocks * BLOCK..(o + 1) * self.blocks * BLOCK];
        let ((qb, _), (xb, xt)) = (values.as_chunks::<BLOCK>(), x.as_chunks::<BLOCK>());
        let mut acc = [0f32; BLOCK];
        for ((q, x), &d) in qb.iter().zip(xb).zip(scales) {
            prefetch_ahead(q);
            let mut block = [0f32; BLOCK];
            for l in 0..BLOCK {
                block[l] = q[l] as i8 as f32 * x[l];
            }
            for l in 0..BLOCK {
                acc[l] += block[l] * d;
            }
        }
        let tail = match (qb.get(xb.len()), scales.get(xb.len())) {
            (Some(q), Some(&d)) => q.iter().zip(xt).map(|(&q, &x)| q as i8 as f32 * x).sum::<f32>() * d,
            _ => 0.0,
        };
        lane_sum(&acc) + tail
    }
}

struct Q4Rows<'a> {
    scales: &'a [f32],
    values: &'a [u8],
    cols: usize,
    blocks: usize,
}

impl RowDot for Q4Rows<'_> {
    fn cols(&self) -> usize {
        self.cols
    }

    #[inline(always)]
    fn dot(&self, o: usize, x: &[f32]) -> f32 {
        const HALF: usize = BLOCK / 2;
        let scales = &self.scales[o * self.blocks..(o + 1) * self.blocks];
        let values = &self.values[o * self.blocks * HALF..(o + 1) * self.blocks * HALF];
        let ((qb, _), (xb, xt)) = (values.as_chunks::<HALF>(), x.as_chunks::<BLOCK>());
        let mut acc = [0f32; BLOCK];
        for ((q, x), &d) in qb.iter().zip(xb).zip(scales) {
            prefetch_ahead(q);
            // Value j of the block is the low nibble of byte j, value j + 16 its high nibble.
            let mut block = [0f32; BLOCK];
            for l in 0..HALF {
                block[l] = ((q[l] & 0x0F) as i8 - 8) as f32 * x[l];
            }
            for l in 0..HALF {
                block[l + HALF] = ((q[l] >> 4) as i8 - 8) as f32 * x[l + HALF];
            }
            for l in 0..BLOCK {
                acc[l] += block[l] * d;
            }
        }
        let mut tail = 0f32;
        if let (Some(q), Some(&d)) = (qb.get(xb.len()), scales.get(xb.len())) {
            for (j, &x) in xt.iter().enumerate() {
                let byte = q[j % HALF];
                let nibble = if j < HALF { byte & 0x0F } else { byte >> 4 };
                tail += (nibble as f32 - 8.0) * x;
            }
            tail *= d;
        }
        lane_sum(&acc) + tail
    }
}

/// How far ahead of the weights being read the kernels ask for cache lines. The hardware
/// prefetchers stop at 4 KiB page boundaries, which left the streaming products of mapped
/// weights at about half the memory bandwidth; an explicit hint a few KiB ahead keeps enough
/// loads in flight (docs/performance.md, "Quantized weights and bf16 on the CPU").
const PREFETCH_BYTES: usize = 2048;

/// A prefetch hint for the cache line `PREFETCH_BYTES` past `at` (never faults, even past the
/// end of the weights).
#[inline(always)]
fn prefetch_ahead<T>(at: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let ahead = (at as *const T).cast::<i8>().wrapping_add(PREFETCH_BYTES);
        // SAFETY: a prefetch is only a hint; it does not dereference the address.
        unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ahead) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Pairwise sum of the lanes (fixed order: results do not depend on the thread count).
#[inline(always)]
fn lane_sum<const N: usize>(acc: &[f32; N]) -> f32 {
    let mut v = *acc;
    let mut n = N;
    while n > 1 {
        n /= 2;
        for l in 0..n {
            v[l] += v[l + n];
        }
    }
    v[0]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Simd {
    Avx512,
    Avx2,
    Baseline,
}

fn simd() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Baseline
    })
}

/// `out: [n, m]`: rows `first..first + n` against each of the `m` vectors of `x`.
fn fill<R: RowDot>(rows_of: &R, first: usize, x: &[f32], m: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match simd() {
        // SAFETY: the CPU has the features these copies were compiled for (checked by `simd`).
        Simd::Avx512 => return unsafe { fill_avx512(rows_of, first, x, m, out) },
        Simd::Avx2 => return unsafe { fill_avx2(rows_of, first, x, m, out) },
        Simd::Baseline => {}
    }
    fill_plain(rows_of, first, x, m, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fill_avx512<R: RowDot>(rows_of: &R, first: usize, x: &[f32], m: usize, out: &mut [f32]) {
    fill_plain(rows_of, first, x, m, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fill_avx2<R: RowDot>(rows_of: &R, first: usize, x: &[f32], m: usize, out: &mut [f32]) {
    fill_plain(rows_of, first, x, m, out)
}

#[inline(always)]
fn fill_plain<R: RowDot>(rows_of: &R, first: usize, x: &[f32], m: usize, out: &mut [f32]) {
    let cols = rows_of.cols();
    for (i, out) in out.chunks_exact_mut(m).enumerate() {
        for (r, y) in out.iter_mut().enumerate() {
            *y = rows_of.dot(first + i, &x[r * cols..(r + 1) * cols]);
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;
    use burn::tensor::Distribution;
    use dsocr_weights::{Backend, Precision};

    use super::*;

    fn random(shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    fn bytes_of(t: &Tensor<2>, dtype: DType) -> Vec<u8> {
        t.clone().cast(dtype).into_data().as_bytes().to_vec()
    }

    /// Each format's kernel equals the plain-Burn product over its own dequantized matrix, for
    /// one and several rows, row lengths with and without a short last block, and more rows
    /// than one task holds.
    #[test]
    fn matvec_equals_matmul_over_the_dequantized_weight() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        for (rows, cols) in [(40, 64), (37, 70), (300, 1280), (5000, 24)] {
            let w = random([rows, cols], &device);
            let raw = bytes_of(&w, DType::F32);
            let formats = [
                HostMatrix::bf16(DType::BF16, bytes::Bytes::from(bytes_of(&w, DType::BF16)), rows, cols),
                HostMatrix::bf16(DType::F32, bytes::Bytes::from(raw.clone()), rows, cols),
                HostMatrix::quantize(Quant::Q8, DType::F32, &raw, rows, cols),
                HostMatrix::quantize(Quant::Q4, DType::F32, &raw, rows, cols),
            ];
            for h in &formats {
                let dense = Tensor::<2>::from_data(TensorData::new(h.dequantize(), [rows, cols]), &device);
                for m in [1, 3] {
                    let x = random([m, cols], &device);
                    let xs: Vec<f32> = x.clone().into_data().iter::<f32>().collect();
                    let got = Tensor::<2>::from_data(TensorData::new(h.matvec(&xs, m), [m, rows]), &device);
                    let want = x.matmul(dense.clone().transpose());
                    let err = crate::relative_error(got, want);
                    assert!(err < 1e-5, "{:?} {rows}x{cols} m={m}: relative error {err}", h.quant());
                }
            }
        }
    }

    /// The quantized matrices approximate the original within their formats' resolution, and
    /// a bf16 file is used in place.
    #[test]
    fn formats_keep_what_they_promise() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let (rows, cols) = (64, 256);
        let w = random([rows, cols], &device);
        let raw = bytes_of(&w, DType::F32);
        let want: Vec<f32> = w.into_data().iter::<f32>().collect();
        let max_err = |h: &HostMatrix| h.dequantize().iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let bf16 = HostMatrix::bf16(DType::F32, bytes::Bytes::from(raw.clone()), rows, cols);
        let q8 = HostMatrix::quantize(Quant::Q8, DType::F32, &raw, rows, cols);
        let q4 = HostMatrix::quantize(Quant::Q4, DType::F32, &raw, rows, cols);
        // N(0, 1) values stay under ~5 in magnitude: steps 5/127 and 5/8.
        assert!(max_err(&bf16) < 5.0 / 256.0, "bf16 {}", max_err(&bf16));
        assert!(max_err(&q8) < 5.0 / 127.0 / 2.0, "q8 {}", max_err(&q8));
        assert!(max_err(&q4) < 5.0 / 8.0, "q4 {}", max_err(&q4));
        assert!(max_err(&q8) > 0.0 && max_err(&q4) > max_err(&q8));
        assert_eq!(q8.size_bytes(), rows * cols + rows * (cols / 32) * 4);
        assert_eq!(q4.size_bytes(), rows * cols / 2 + rows * (cols / 32) * 4);

        let mapped = bytes::Bytes::from(bytes_of(
            &Tensor::<2>::from_data(TensorData::new(want.clone(), [rows, cols]), &device),
            DType::BF16,
        ));
        let h = HostMatrix::bf16(DType::BF16, mapped.clone(), rows, cols);
        assert!(matches!(&h.data, HostData::Bf16(Bf16Bits::Mapped(b)) if b.as_ptr() == mapped.as_ptr()), "zero-copy");
    }
}

#[cfg(test)]
mod bench {
    use std::time::Instant;

    use super::*;

    /// Achieved weight bandwidth of each format at DeepSeek-OCR's sizes (one expert
    /// projection, the lm_head), one row: `cargo test --release -p dsocr-nn host::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn matvec_bandwidth_real_sizes() {
        for (rows, cols, iters) in [(896, 1280, 2000), (1280, 896, 2000), (129280, 1280, 20)] {
            let raw: Vec<u8> = (0..rows * cols)
                .flat_map(|j| half::bf16::from_f32(((j * 7919 % 1013) as f32 - 506.0) / 5000.0).to_bits().to_le_bytes())
                .collect();
            let x: Vec<f32> = (0..cols).map(|j| (j % 17) as f32 / 17.0).collect();
            for h in [
                HostMatrix::bf16(DType::BF16, bytes::Bytes::from(raw.clone()), rows, cols),
                HostMatrix::quantize(Quant::Q8, DType::BF16, &raw, rows, cols),
                HostMatrix::quantize(Quant::Q4, DType::BF16, &raw, rows, cols),
            ] {
                let _ = h.matvec(&x, 1);
                let t = Instant::now();
                for _ in 0..iters {
                    std::hint::black_box(h.matvec(&x, 1));
                }
                let per = t.elapsed().as_secs_f64() / iters as f64;
                println!(
                    "{rows}x{cols} {:?}: {:.1} us, {:.1} GB/s",
                    h.quant(),
                    per * 1e6,
                    h.size_bytes() as f64 / per / 1e9
                );
            }
        }
    }
}
