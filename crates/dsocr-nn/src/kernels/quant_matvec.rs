//! Matrix-vector products over q8 / q4 weights, dequantized in registers: the layout and the
//! plain-Burn reference are in [`crate::quantized`].
//!
//! ```text
//! quant_matvec:          out[r, o] = Σ_b d[o, b]          · Σ_{k ∈ b} x[r, k]          · q[o, k]
//! gathered_quant_matvec: out[s, o] = the same over rows ids[s] · out_dim + o of a stack, x[s / per_row]
//! ```
//!
//! As in [`super::matvec`], one plane (warp) per output element: a cube of 256 units owns
//! `rows_per_cube` outputs of one row of `x`. Each lane takes every `PLANE_DIM`-th block of 32
//! weights: one 16-byte load of words per block (q4) or two (q8), one scale, 8 vectors of 4
//! inputs; shift, mask and convert give 4 weights at a time lined up with an input vector.
//! Sums run in f32, per block then scaled, and `plane_sum` adds the lanes. Rows must be whole
//! blocks (`in` a multiple of 32: [`super::quant_available`]).

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

/// Units per cube.
const CUBE_UNITS: u32 = 256;
/// Output elements per cube: one per plane of 32 lanes.
const ROWS_PER_CUBE: usize = 8;
/// The largest cube count on one grid axis that every runtime accepts.
const MAX_GRID: usize = 65_535;
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
        let (rows_per_cube, count) = launch_shape(rows, out_dim);
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
        let (rows_per_cube, count) = launch_shape(slots, out_dim);
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

/// Output elements per cube and the grid: `rows` on x, output blocks on y (under the limit).
fn launch_shape(rows: usize, out_dim: usize) -> (usize, CubeCount) {
    let rows_per_cube = ROWS_PER_CUBE.max(out_dim.div_ceil(MAX_GRID));
    let cubes = out_dim.div_ceil(rows_per_cube);
    (rows_per_cube, CubeCount::Static(rows as u32, cubes as u32, 1))
}

/// `Σ_k x[k] · q[k]` over one block of 32 (unscaled), `x_at`: the block's first input vector,
/// `w_at`: its first 16-byte group of words.
#[cube]
fn block_dot<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    x_at: usize,
    words: &Tensor<Vector<u32, N>>,
    w_at: usize,
    #[comptime] q4: bool,
) -> f32 {
    let mut acc = Vector::<f32, N>::zero();
    if comptime!(q4) {
        // One group: nibble n of each word holds inputs 4n .. 4n + 3 of the block.
        let mut w = words[w_at];
        #[unroll]
        for n in 0..8 {
            let q = Vector::<f32, N>::cast_from(w & Vector::new(15u32)) - Vector::new(8.0f32);
            acc += q * Vector::cast_from(x[x_at + n]);
            w >>= Vector::new(4u32);
        }
    } else {
        // Two groups: byte j of each word of group g holds inputs 16g + 4j .. + 3.
        #[unroll]
        for g in 0..2 {
            let mut w = words[w_at + g];
            #[unroll]
            for j in 0..4 {
                let byte = (w & Vector::new(255u32)) ^ Vector::new(128u32);
                let q = Vector::<f32, N>::cast_from(byte) - Vector::new(128.0f32);
                acc += q * Vector::cast_from(x[x_at + g * 4 + j]);
                w >>= Vector::new(8u32);
            }
        }
    }
    Vector::vector_sum(acc)
}

/// The dot products of one `x` row (`x_base`, in vectors) with the weight rows
/// `row_base + first .. row_base + last`, written to `out[out_base + o]`.
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
    // 16-byte groups per block.
    let groups = if comptime!(q4) { 1usize } else { 2usize };
    for o in range_stepped(first + plane, last, planes) {
        let row = row_base + o;
        let mut acc = 0f32;
        for b in range_stepped(lane, blocks, PLANE_DIM as usize) {
            let block = row * blocks + b;
            acc += scales[block] * block_dot(x, x_base + b * 8, words, block * groups, q4);
        }
        let sum = plane_sum(acc);
        if lane == 0 {
            out[out_base + o] = F::cast_from(sum);
        }
    }
}

/// The cube's block of output elements, clipped to `out_dim`.
#[cube]
fn output_block(rows_per_cube: usize, out_dim: usize) -> (usize, usize) {
    let first = CUBE_POS_Y as usize * rows_per_cube;
    let mut last = first + rows_per_cube;
    if last > out_dim {
        last = out_dim;
    }
    (first, last)
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
    let (first, last) = output_block(rows_per_cube, out_dim);
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
    let (first, last) = output_block(rows_per_cube, out_dim);
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
