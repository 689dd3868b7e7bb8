//! Matrix-vector products over q8 / q4 weights, dequantized in registers: the layout and the
//! plain-Burn reference are in [`crate::quantized`].
//!
//! ```text
//! quant_matvec:          out[r, o] = Σ_b d[o, b]          · Σ_{k ∈ b} x[r, k]          · q[o, k]
//! gathered_quant_matvec: out[s, o] = the same over rows ids[s] · out_dim + o of a stack, x[s / per_row]
//! ```
//!
//! As in [`super::matvec`], one plane (warp) per output element: a cube of 256 units owns
//! `rows_per_cube` outputs of one row of `x`. Each lane takes every `PLANE_DIM`-th 16-byte group
//! of the weight row (4 words: 16 weights in q8, 32 in q4), one vector load, as the float kernel
//! loads 16 bytes at a time; the inputs it needs are 4 (q8) or 8 (q4) 4-wide vectors of `x`.
//! Each word is broadcast to a 4-wide vector, shifted by 0, 8, 16, 24 bits (and 4 more for q4's
//! high nibbles) and masked: 4 weights lined up with an `x` vector. Sums run in f32, scaled per
//! group by its block's scale; `plane_sum` adds the lanes. (Measured on the H200 against one word
//! per lane, 4 bytes a load: docs/performance.md.) Rows must be whole blocks (`in` a multiple of
//! 32: [`super::quant_available`]).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::num_traits::Zero;
use cubecl::prelude::*;

use super::matvec::{block, grid, CUBE_UNITS};

/// Inputs and words are read 4 at a time.
const VECTOR: usize = 4;

#[backend_extension(Cube, Fusion)]
pub trait QuantMatvecOps: Backend {
    #[fusion(shape = quant_shape(x, scales), dtype = x)]
    fn quant_matvec(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: FloatTensor<Self>,
        q4: bool,
    ) -> FloatTensor<Self>;

    #[fusion(shape = gathered_shape(ids, out_dim), dtype = x)]
    fn gathered_quant_matvec(
        x: FloatTensor<Self>,
        words: IntTensor<Self>,
        scales: FloatTensor<Self>,
        ids: IntTensor<Self>,
        out_dim: usize,
        q4: bool,
    ) -> FloatTensor<Self>;
}

fn quant_shape(x: &Shape, scales: &Shape) -> Shape {
    Shape::new([x[0], scales[0]])
}

fn gathered_shape(ids: &Shape, out_dim: &usize) -> Shape {
    Shape::new([ids[0], *out_dim])
}

impl QuantMatvecOps for CubeBackend {
    fn quant_matvec(x: CubeTensor, words: CubeTensor, scales: CubeTensor, q4: bool) -> CubeTensor {
        let (x, words, scales) = (into_contiguous(x), into_contiguous(words), into_contiguous(scales));
        let (rows, k) = (x.shape()[0], x.shape()[1]);
        let (out_dim, blocks) = (scales.shape()[0], scales.shape()[1]);
        let out =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([rows, out_dim]), x.dtype);
        if rows == 0 || out_dim == 0 || k == 0 {
            return out;
        }
        let (rows_per_cube, count) = grid(rows, out_dim);
        quant_matvec_kernel::launch(
            &out.client.clone(),
            count,
            CubeDim::new_1d(CUBE_UNITS),
            VECTOR,
            x.into_tensor_arg(),
            words.into_tensor_arg(),
            scales.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            out_dim,
            blocks,
            rows_per_cube,
            q4,
            dtype_to_storage_type(out.dtype),
        );
        out
    }

    fn gathered_quant_matvec(
        x: CubeTensor,
        words: CubeTensor,
        scales: CubeTensor,
        ids: CubeTensor,
        out_dim: usize,
        q4: bool,
    ) -> CubeTensor {
        let (x, words, scales, ids) =
            (into_contiguous(x), into_contiguous(words), into_contiguous(scales), into_contiguous(ids));
        let (n, k) = (x.shape()[0], x.shape()[1]);
        let (slots, blocks) = (ids.shape()[0], scales.shape()[1]);
        let out =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([slots, out_dim]), x.dtype);
        if slots == 0 || out_dim == 0 || n == 0 || k == 0 {
            return out;
        }
        let per_row = (slots / n).max(1);
        let (rows_per_cube, count) = grid(slots, out_dim);
        let dtypes = [dtype_to_storage_type(x.dtype), dtype_to_storage_type(ids.dtype)];
        gathered_quant_matvec_kernel::launch(
            &out.client.clone(),
            count,
            CubeDim::new_1d(CUBE_UNITS),
            VECTOR,
            x.into_tensor_arg(),
            words.into_tensor_arg(),
            scales.into_tensor_arg(),
            ids.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            out_dim,
            blocks,
            per_row,
            rows_per_cube,
            q4,
            dtypes,
        );
        out
    }
}

/// The bit offsets 0, 8, 16, 24 of a word's bytes, one per vector lane.
#[cube]
fn byte_shifts<N: Size>() -> Vector<u32, N> {
    let mut shifts = Vector::<u32, N>::new(0u32);
    shifts.insert(1usize, 8u32);
    shifts.insert(2usize, 16u32);
    shifts.insert(3usize, 24u32);
    shifts
}

/// Word `word` of a q8 row against the 4 inputs it holds: `Σ_j q_j · x_j` as a vector.
#[cube]
fn q8_word<F: Float, N: Size>(word: u32, x: Vector<F, N>, shifts: Vector<u32, N>) -> Vector<f32, N> {
    let bytes = (Vector::<u32, N>::new(word) >> shifts) & Vector::new(255u32);
    let q = Vector::<f32, N>::cast_from(bytes ^ Vector::new(128u32)) - Vector::new(128.0f32);
    q * Vector::cast_from(x)
}

/// Word `word` of a q4 block against its 8 inputs: `low` (its low nibbles) and `high`.
#[cube]
fn q4_word<F: Float, N: Size>(
    word: u32,
    low: Vector<F, N>,
    high: Vector<F, N>,
    shifts: Vector<u32, N>,
) -> Vector<f32, N> {
    let bytes = Vector::<u32, N>::new(word) >> shifts;
    let l = Vector::<f32, N>::cast_from(bytes & Vector::new(15u32)) - Vector::new(8.0f32);
    let h = Vector::<f32, N>::cast_from((bytes >> Vector::new(4u32)) & Vector::new(15u32)) - Vector::new(8.0f32);
    l * Vector::cast_from(low) + h * Vector::cast_from(high)
}

/// The dot products of one `x` row (`x_base`, in vectors of 4) with the weight rows
/// `row_base + first .. row_base + last` (`groups` 16-byte groups of words and `blocks` scales
/// each), written to `out[out_base + o]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn quant_plane_dots<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    x_base: usize,
    words: &Tensor<Vector<u32, N>>,
    scales: &Tensor<f32>,
    row_base: usize,
    blocks: usize,
    out: &mut Tensor<F>,
    out_base: usize,
    first: usize,
    last: usize,
    #[comptime] q4: bool,
) {
    let planes = (CUBE_DIM / PLANE_DIM) as usize;
    let plane = (UNIT_POS / PLANE_DIM) as usize;
    let lane = UNIT_POS_PLANE as usize;
    let shifts = byte_shifts::<N>();
    // 16-byte groups per block: 2 (q8: 16 weights each) or 1 (q4: 32).
    let per_block = if comptime!(q4) { 1usize } else { 2usize };
    let groups = blocks * per_block;
    for o in range_stepped(first + plane, last, planes) {
        let row = row_base + o;
        let mut acc = Vector::<f32, N>::zero();
        for g in range_stepped(lane, groups, PLANE_DIM as usize) {
            let w = words[row * groups + g];
            let scale = Vector::<f32, N>::new(scales[row * blocks + g / per_block]);
            let mut dot = Vector::<f32, N>::zero();
            if comptime!(q4) {
                // Word t of block g: inputs 32g + 4t + j (low nibbles), 32g + 16 + 4t + j (high).
                let at = x_base + g * 8;
                dot += q4_word(w.extract(0usize), x[at], x[at + 4], shifts);
                dot += q4_word(w.extract(1usize), x[at + 1], x[at + 5], shifts);
                dot += q4_word(w.extract(2usize), x[at + 2], x[at + 6], shifts);
                dot += q4_word(w.extract(3usize), x[at + 3], x[at + 7], shifts);
            } else {
                // Word t of group g: inputs 16g + 4t .. + 3, vector 4g + t of the row.
                let at = x_base + g * 4;
                dot += q8_word(w.extract(0usize), x[at], shifts);
                dot += q8_word(w.extract(1usize), x[at + 1], shifts);
                dot += q8_word(w.extract(2usize), x[at + 2], shifts);
                dot += q8_word(w.extract(3usize), x[at + 3], shifts);
            }
            acc += dot * scale;
        }
        let sum = plane_sum(Vector::vector_sum(acc));
        if lane == 0 {
            out[out_base + o] = F::cast_from(sum);
        }
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn quant_matvec_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    words: &Tensor<Vector<u32, N>>,
    scales: &Tensor<f32>,
    out: &mut Tensor<F>,
    out_dim: usize,
    blocks: usize,
    rows_per_cube: usize,
    #[comptime] q4: bool,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_X as usize;
    let (first, last) = block(rows_per_cube, out_dim);
    quant_plane_dots(x, row * blocks * 8, words, scales, 0, blocks, out, row * out_dim, first, last, q4);
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gathered_quant_matvec_kernel<F: Float, I: Int, N: Size>(
    x: &Tensor<Vector<F, N>>,
    words: &Tensor<Vector<u32, N>>,
    scales: &Tensor<f32>,
    ids: &Tensor<I>,
    out: &mut Tensor<F>,
    out_dim: usize,
    blocks: usize,
    per_row: usize,
    rows_per_cube: usize,
    #[comptime] q4: bool,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let slot = CUBE_POS_X as usize;
    let matrix = usize::cast_from(ids[slot]);
    let (first, last) = block(rows_per_cube, out_dim);
    quant_plane_dots(
        x,
        (slot / per_row) * blocks * 8,
        words,
        scales,
        matrix * out_dim,
        blocks,
        out,
        slot * out_dim,
        first,
        last,
        q4,
    );
}
