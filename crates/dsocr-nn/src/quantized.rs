//! Quantized weights on a device (the GPU backends): the q8 / q4 blocks of [`crate::quant`]
//! laid out for 16-byte loads, with their f32 scales beside them, and the matrix-vector
//! products that dequantize in registers ([`crate::kernels`], plane operations) or, without
//! kernels, through the plain-Burn reference here.
//!
//! Device layout of one row of `cols` values (`blocks_per_row(cols)` blocks of 32; a short last
//! block padded with zeros, as on the host): the host's bytes ([`crate::quant`]) as they are,
//! read as little-endian u32 words.
//!
//! ```text
//! scales: [rows, blocks]            f32, the block's d (w ≈ q · d, or (q − 8) · d for q4)
//! words:  [rows, blocks · 32 / v]    u32 bit patterns (held in an i32 tensor), v = 4 (q8) or 8 (q4)
//!
//! q8: word w holds values 4w .. 4w + 3 (byte j: value 4w + j, two's complement)
//! q4: word t (0..3) of block b holds values 4t + j (low nibble of byte j) and 16 + 4t + j
//!     (high nibble) of the block
//! ```
//!
//! So a kernel lane reads 4 consecutive words (16 bytes) at a time, and each word lines up with
//! 4-wide vectors of `x`. A q8 byte's sign is restored as `(b ^ 128) − 128`.
//!
//! Known cost (docs/performance.md, "Quantized weights on the GPU"): on CUDA, CubeCL may pitch
//! the rows of these 2-D tensors (pad them for alignment). Rows that are not a multiple of 256
//! bytes, such as the 160-byte scale rows of a 1,280-wide matrix, are then not contiguous, and
//! the kernels' launch copies them. Flat 1-D tensors avoid that, but this is not measured yet.
//!
//! The reference ([`dequantize`], [`quant_matvec_reference`]) unpacks with integer tensor ops,
//! scales, and multiplies in the activation dtype; it is the path of devices without the
//! kernels and of prompts (more than [`crate::matvec::MATVEC_MAX_ROWS`] rows), where the weight
//! is dequantized [`DEQUANTIZE_CHUNK_ROWS`](crate::host::DEQUANTIZE_CHUNK_ROWS) rows at a time.

use burn::prelude::*;
use burn::tensor::DType;

use crate::host::HostMatrix;
use crate::matvec::matvec_reference;
use crate::quant::{blocks_per_row, Quant, BLOCK};

/// A quantized `[rows, cols]` matrix on a device (module docs), or a stack of matrices of equal
/// shape kept as one (`rows` = matrices × rows of each: the packed MoE experts).
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    quant: Quant,
    /// `[rows, words_per_row]`.
    words: Tensor<2, Int>,
    /// `[rows, blocks]` f32.
    scales: Tensor<2>,
    rows: usize,
    cols: usize,
}

impl QuantMatrix {
    /// Uploads a host-quantized matrix (its bytes as they are). `None` if `host` is not
    /// quantized (bf16).
    pub fn from_host(host: &HostMatrix, device: &Device) -> Option<Self> {
        let (quant, scales, values) = host.quantized_parts()?;
        let (rows, cols) = (host.rows(), host.cols());
        let words: Vec<i32> = values.as_chunks::<4>().0.iter().map(|b| i32::from_le_bytes(*b)).collect();
        let per_row = words.len() / rows.max(1);
        let words = Tensor::<2, Int>::from_data(TensorData::new(words, [rows, per_row]), (device, DType::I32));
        let blocks = blocks_per_row(cols);
        let scales = Tensor::<2>::from_data(TensorData::new(scales.to_vec(), [rows, blocks]), (device, DType::F32));
        Some(Self { quant, words, scales, rows, cols })
    }

    /// The matrices of `parts` (all of one format and width) one after the other: a stack.
    /// `None` if `parts` is empty or they differ in format or width.
    pub fn concat(parts: &[&QuantMatrix]) -> Option<Self> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.quant != first.quant || p.cols != first.cols) {
            return None;
        }
        Some(Self {
            quant: first.quant,
            words: Tensor::cat(parts.iter().map(|p| p.words.clone()).collect(), 0),
            scales: Tensor::cat(parts.iter().map(|p| p.scales.clone()).collect(), 0),
            rows: parts.iter().map(|p| p.rows).sum(),
            cols: first.cols,
        })
    }

    /// Rows `start..start + count` as their own matrix (a view: no copy).
    pub fn narrow(&self, start: usize, count: usize) -> Self {
        Self {
            quant: self.quant,
            words: self.words.clone().narrow(0, start, count),
            scales: self.scales.clone().narrow(0, start, count),
            rows: count,
            cols: self.cols,
        }
    }

    pub fn quant(&self) -> Quant {
        self.quant
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn device(&self) -> Device {
        self.scales.device()
    }

    /// Device bytes of the values and scales.
    pub fn size_bytes(&self) -> usize {
        let [r, w] = self.words.dims();
        let [_, b] = self.scales.dims();
        4 * r * (w + b)
    }

    /// The whole matrix dequantized to a `[rows, cols]` tensor of `dtype` (see [`dequantize`]).
    pub fn dequantize(&self, dtype: DType) -> Tensor<2> {
        dequantize(self, dtype)
    }

    pub(crate) fn parts(&self) -> (&Tensor<2, Int>, &Tensor<2>) {
        (&self.words, &self.scales)
    }
}

/// `w` (`[rows, cols]`, any float dtype) quantized on the host as loading does, uploaded to its
/// device, and its dequantized values as an f32 tensor there, computed by the host's scalar
/// dequantization (so independent of the device layout): the oracle of the kernel checks and of
/// `dsocr bench kernels --quant`.
pub fn quantize_tensor(quant: Quant, w: Tensor<2>) -> (QuantMatrix, Tensor<2>) {
    let [rows, cols] = w.dims();
    let device = w.device();
    let raw: Vec<u8> = w.cast(DType::F32).into_data().iter::<f32>().flat_map(f32::to_le_bytes).collect();
    let host = HostMatrix::quantize(quant, DType::F32, &raw, rows, cols);
    let dequantized = Tensor::<2>::from_data(TensorData::new(host.dequantize(), [rows, cols]), (&device, DType::F32));
    // `HostMatrix::quantize` always gives a quantized matrix, which always has its device form.
    let on_device = QuantMatrix::from_host(&host, &device).unwrap_or_else(|| unreachable!("quantized"));
    (on_device, dequantized)
}

/// `m`'s values as a `[rows, cols]` tensor of `dtype`, in plain Burn: the words unpacked by
/// shifts and masks, the integers scaled by their block's f32 scale.
pub fn dequantize(m: &QuantMatrix, dtype: DType) -> Tensor<2> {
    let (words, scales) = m.parts();
    let [rows, per_row] = words.dims();
    let blocks = scales.dims()[1];
    let byte =
        |shift: usize, mask: i64| words.clone().bitwise_right_shift_scalar(shift as i64).bitwise_and_scalar(mask);
    let q = match m.quant {
        // Byte j of word w: value 4w + j.
        Quant::Q8 => {
            let bytes = (0..4).map(|j| byte(8 * j, 0xFF).bitwise_xor_scalar(0x80).sub_scalar(128)).collect();
            Tensor::stack::<3>(bytes, 2).reshape([rows, blocks, BLOCK])
        }
        // Word t of a block: values 4t + j (low nibbles), then 16 + 4t + j (high nibbles).
        Quant::Q4 => {
            let half = |high: usize| {
                let nibbles = (0..4).map(|j| byte(8 * j + 4 * high, 0x0F).sub_scalar(8)).collect();
                Tensor::stack::<3>(nibbles, 2).reshape([rows, blocks, BLOCK / 2])
            };
            debug_assert_eq!(per_row, blocks * 4);
            Tensor::cat(vec![half(0), half(1)], 2)
        }
    };
    let w = q.float().cast(DType::F32) * scales.clone().reshape([rows, blocks, 1]);
    w.reshape([rows, blocks * BLOCK]).narrow(1, 0, m.cols).cast(dtype)
}

/// `x: [n, cols]` → `x Wᵀ`: `[n, rows]` in `x`'s dtype, W quantized. The kernel on devices that
/// have it (a few rows), the reference otherwise.
pub fn quant_matvec(x: Tensor<2>, w: &QuantMatrix) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    if x.dims()[0] <= crate::matvec::MATVEC_MAX_ROWS
        && crate::kernels::quant_available(crate::kernels::Kernel::Matvec, &x, w)
    {
        return crate::kernels::quant_matvec(x, w);
    }
    quant_matvec_reference(x, w)
}

/// [`quant_matvec`] in plain Burn: the weight dequantized to `x`'s dtype in slices of
/// [`DEQUANTIZE_CHUNK_ROWS`](crate::host::DEQUANTIZE_CHUNK_ROWS) rows (never a full float copy
/// of a large matrix), each multiplied like [`matvec_reference`].
pub fn quant_matvec_reference(x: Tensor<2>, w: &QuantMatrix) -> Tensor<2> {
    let chunk = crate::host::DEQUANTIZE_CHUNK_ROWS;
    let dtype = x.dtype();
    let mut parts = (0..w.rows)
        .step_by(chunk)
        .map(|start| matvec_reference(x.clone(), w.narrow(start, chunk.min(w.rows - start)).dequantize(dtype)))
        .collect::<Vec<_>>();
    match parts.len() {
        1 => parts.remove(0),
        _ => Tensor::cat(parts, 1),
    }
}

/// `x: [n, cols]`, `w`: a stack of matrices of `out` rows each, `ids: [S]` (`S` a multiple of
/// `n`, every id below the number of matrices) → `[S, out]`: row `s` is
/// `x[s / (S / n)] · W[ids[s]]ᵀ` (see [`crate::matvec::gathered_matvec`]).
pub fn gathered_quant_matvec(x: Tensor<2>, w: &QuantMatrix, out: usize, ids: Tensor<1, Int>) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    if crate::kernels::quant_available(crate::kernels::Kernel::GatheredMatvec, &x, w) {
        return crate::kernels::gathered_quant_matvec(x, w, out, ids);
    }
    gathered_quant_matvec_reference(x, w, out, ids)
}

/// [`gathered_quant_matvec`] in plain Burn: the chosen matrices' rows selected and dequantized,
/// then multiplied and summed.
pub fn gathered_quant_matvec_reference(x: Tensor<2>, w: &QuantMatrix, out: usize, ids: Tensor<1, Int>) -> Tensor<2> {
    let [n, d] = x.dims();
    let [slots] = ids.dims();
    let device = x.device();
    let per_row = slots / n.max(1);
    let rows = (ids.reshape([slots, 1]) * out as i64
        + Tensor::<1, Int>::arange(0..out as i64, &device).reshape([1, out]))
    .reshape([slots * out]);
    let (words, scales) = w.parts();
    let chosen = QuantMatrix {
        quant: w.quant,
        words: words.clone().select(0, rows.clone()),
        scales: scales.clone().select(0, rows),
        rows: slots * out,
        cols: w.cols,
    };
    let weights = chosen.dequantize(x.dtype()).reshape([slots, out, d]);
    let xs = x.unsqueeze_dim::<3>(1).repeat_dim(1, per_row).reshape([slots, 1, d]);
    (weights * xs).sum_dim(2).reshape([slots, out])
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use dsocr_weights::{Backend, Precision};

    use super::*;

    fn host(quant: Quant, rows: usize, cols: usize, device: &Device) -> (HostMatrix, Tensor<2>) {
        let w = Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 1.0), device);
        let raw: Vec<u8> = w.to_data().iter::<f32>().flat_map(f32::to_le_bytes).collect();
        let m = HostMatrix::quantize(quant, DType::F32, &raw, rows, cols);
        let deq = Tensor::<2>::from_data(TensorData::new(m.dequantize(), [rows, cols]), device);
        (m, deq)
    }

    fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a.cast(DType::F32) - b.cast(DType::F32)).abs().max().into_scalar()
    }

    /// The device layout unpacked by the plain-Burn reference gives back exactly the host's
    /// dequantized values (the words' byte order and the sign of q8 bytes), short blocks
    /// included.
    #[test]
    fn device_layout_dequantizes_to_the_hosts_values() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        for quant in [Quant::Q8, Quant::Q4] {
            for (rows, cols) in [(3, 64), (5, 70), (2, 32)] {
                let (m, want) = host(quant, rows, cols, &device);
                let q = QuantMatrix::from_host(&m, &device).unwrap();
                assert_eq!(max_diff(q.dequantize(DType::F32), want), 0.0, "{quant} {rows}×{cols}");
            }
        }
    }

    /// The references equal products with the dequantized weight: one matrix, chunked rows, a
    /// stack picked by id.
    #[test]
    fn references_equal_products_with_the_dequantized_weight() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        for quant in [Quant::Q8, Quant::Q4] {
            let (m, w) = host(quant, 40, 96, &device);
            let q = QuantMatrix::from_host(&m, &device).unwrap();
            let x = Tensor::<2>::random([3, 96], Distribution::Normal(0.0, 1.0), &device);
            let want = x.clone().matmul(w.clone().transpose());
            assert!(max_diff(quant_matvec(x.clone(), &q), want) < 1e-4, "{quant}");

            // A stack of 4 matrices of 10 rows; 3 tokens × 2 slots.
            let ids = [3i64, 0, 1, 1, 2, 3];
            let ids_t = Tensor::<1, Int>::from_data(TensorData::new(ids.to_vec(), [6]), &device);
            let got = gathered_quant_matvec(x.clone(), &q, 10, ids_t);
            for (s, &e) in ids.iter().enumerate() {
                let we = w.clone().narrow(0, e as usize * 10, 10);
                let want = x.clone().narrow(0, s / 2, 1).matmul(we.transpose());
                assert!(max_diff(got.clone().narrow(0, s, 1), want) < 1e-4, "{quant} slot {s}");
            }
        }
    }

    #[test]
    fn stacks_and_views_keep_their_rows() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let (a, wa) = host(Quant::Q8, 4, 64, &device);
        let (b, wb) = host(Quant::Q8, 6, 64, &device);
        let (a, b) = (QuantMatrix::from_host(&a, &device).unwrap(), QuantMatrix::from_host(&b, &device).unwrap());
        let stack = QuantMatrix::concat(&[&a, &b]).unwrap();
        assert_eq!((stack.rows(), stack.cols()), (10, 64));
        assert_eq!(max_diff(stack.narrow(4, 6).dequantize(DType::F32), wb), 0.0);
        assert_eq!(max_diff(stack.narrow(0, 4).dequantize(DType::F32), wa), 0.0);
        let (c, _) = host(Quant::Q4, 2, 64, &device);
        assert!(QuantMatrix::concat(&[&a, &QuantMatrix::from_host(&c, &device).unwrap()]).is_none());
        assert!(QuantMatrix::concat(&[]).is_none());
    }
}
