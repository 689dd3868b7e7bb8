//! Matrix-vector products for a few rows: one plane (warp / subgroup) per output element.
//!
//! ```text
//! matvec:          out[r, o] = Σ_k x[r, k]          · w[o, k]          w: [out, in]
//! gathered_matvec: out[s, o] = Σ_k x[s / per_row, k] · w[ids[s], o, k]  w: [E, out, in]
//! grouped_matvec:  the same values, one cube column per matrix of the stack
//! ```
//!
//! A cube of 256 units is `256 / PLANE_DIM` planes and owns `rows_per_cube` consecutive output
//! elements `o` of one row `r` (or slot `s`); each plane takes every `planes`-th of them. The
//! lanes of a plane stride over `k` in vectors of up to 16 bytes (coalesced: consecutive lanes
//! read consecutive vectors of the same weight row), accumulate in f32, and `plane_sum` gives
//! the dot product. The row is the fastest grid axis, so the cubes that read the same weight
//! rows for different `x` rows run side by side and share them through L2.
//!
//! `grouped_matvec` is `gathered_matvec` for many slots (a batched decode step's experts): the
//! grid's x axis is the matrix `e`, not the slot. Each pass of a cube scans one window of
//! `CUBE_DIM` ids (one per unit), each plane compacting its lanes' hits into shared memory
//! (`plane_exclusive_sum`), then every plane takes its output elements for all the slots found
//! routed to `e`. A weight row is read from memory once per matrix and pass, not once per slot;
//! the dot products are the gathered kernel's (same lanes, same order), so both give the same
//! bits.
//!
//! The plane size is read at run time (`PLANE_DIM`), so the kernel is right for any subgroup
//! size (32 on NVIDIA, 8 on lavapipe, 16–64 elsewhere).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
// Outputs are allocated dense (`empty_device_contiguous_dtype`): the kernels write row r at
// r · width, and CubeCL's default allocation may pitch rows (on CUDA, to 256 bytes).
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::num_traits::Zero;
use cubecl::prelude::*;

/// Units per cube (also the quantized kernels', [`super::quant_matvec`]).
pub(super) const CUBE_UNITS: u32 = 256;
/// Output elements per cube: one per plane of 32 lanes.
const ROWS_PER_CUBE: usize = 8;
/// Output elements per cube of the grouped kernel: four per plane of 32 lanes, so that one scan
/// of the ids serves several weight rows.
const GROUPED_ROWS_PER_CUBE: usize = 32;
/// Ids scanned per pass of the grouped kernel: one per unit of its cube (`CUBE_UNITS`).
const GROUP_WINDOW: usize = 256;
/// Planes per cube the grouped kernel's shared counts hold: planes of at least 4 lanes.
const MAX_PLANES: usize = GROUP_WINDOW / 4;
/// The largest cube count on one grid axis that every runtime accepts.
const MAX_GRID: usize = 65_535;

#[backend_extension(Cube, Fusion)]
pub trait MatvecOps: Backend {
    #[fusion(shape = matvec_shape(x, w), dtype = x)]
    fn matvec(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;

    #[fusion(shape = gathered_shape(x, w, ids), dtype = x)]
    fn gathered_matvec(x: FloatTensor<Self>, w: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self>;

    #[fusion(shape = gathered_shape(x, w, ids), dtype = x)]
    fn grouped_matvec(x: FloatTensor<Self>, w: FloatTensor<Self>, ids: IntTensor<Self>) -> FloatTensor<Self>;
}

fn matvec_shape(x: &Shape, w: &Shape) -> Shape {
    Shape::new([x[0], w[0]])
}

fn gathered_shape(_x: &Shape, w: &Shape, ids: &Shape) -> Shape {
    Shape::new([ids[0], w[1]])
}

impl MatvecOps for CubeBackend {
    fn matvec(x: CubeTensor, w: CubeTensor) -> CubeTensor {
        let (x, w) = (into_contiguous(x), into_contiguous(w));
        let (rows, k) = (x.shape()[0], x.shape()[1]);
        let out_dim = w.shape()[0];
        let out =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([rows, out_dim]), x.dtype);
        if rows == 0 || out_dim == 0 {
            return out;
        }
        let (vector, rows_per_cube, count) = launch_shape(&x, k, rows, out_dim);
        let dtype = dtype_to_storage_type(x.dtype);
        matvec_kernel::launch(
            &out.client.clone(),
            count,
            CubeDim::new_1d(CUBE_UNITS),
            vector,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            out_dim,
            k / vector,
            rows_per_cube,
            dtype,
        );
        out
    }

    fn gathered_matvec(x: CubeTensor, w: CubeTensor, ids: CubeTensor) -> CubeTensor {
        let (x, w, ids) = (into_contiguous(x), into_contiguous(w), into_contiguous(ids));
        let (n, k) = (x.shape()[0], x.shape()[1]);
        let (out_dim, slots) = (w.shape()[1], ids.shape()[0]);
        let out =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([slots, out_dim]), x.dtype);
        if slots == 0 || out_dim == 0 || n == 0 {
            return out;
        }
        let per_row = (slots / n).max(1);
        let (vector, rows_per_cube, count) = launch_shape(&x, k, slots, out_dim);
        let dtypes = [dtype_to_storage_type(x.dtype), dtype_to_storage_type(ids.dtype)];
        gathered_matvec_kernel::launch(
            &out.client.clone(),
            count,
            CubeDim::new_1d(CUBE_UNITS),
            vector,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            ids.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            out_dim,
            k / vector,
            per_row,
            rows_per_cube,
            dtypes,
        );
        out
    }

    fn grouped_matvec(x: CubeTensor, w: CubeTensor, ids: CubeTensor) -> CubeTensor {
        let (x, w, ids) = (into_contiguous(x), into_contiguous(w), into_contiguous(ids));
        let (n, k) = (x.shape()[0], x.shape()[1]);
        let (matrices, out_dim, slots) = (w.shape()[0], w.shape()[1], ids.shape()[0]);
        let out =
            empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([slots, out_dim]), x.dtype);
        if slots == 0 || out_dim == 0 || n == 0 || matrices == 0 {
            return out;
        }
        let per_row = (slots / n).max(1);
        let vector = vector_size(&x, k);
        let rows_per_cube = GROUPED_ROWS_PER_CUBE.max(out_dim.div_ceil(MAX_GRID));
        let count = CubeCount::Static(matrices as u32, out_dim.div_ceil(rows_per_cube) as u32, 1);
        let dtypes = [dtype_to_storage_type(x.dtype), dtype_to_storage_type(ids.dtype)];
        grouped_matvec_kernel::launch(
            &out.client.clone(),
            count,
            CubeDim::new_1d(GROUP_WINDOW as u32),
            vector,
            x.into_tensor_arg(),
            w.into_tensor_arg(),
            ids.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            out_dim,
            k / vector,
            per_row,
            rows_per_cube,
            slots,
            slots.div_ceil(GROUP_WINDOW),
            dtypes,
        );
        out
    }
}

/// The vector width (the widest the runtime reads fast that divides `k`), the output elements
/// per cube and the grid: `rows` on x, output blocks on y (under the grid limit).
fn launch_shape(x: &CubeTensor, k: usize, rows: usize, out_dim: usize) -> (usize, usize, CubeCount) {
    let (rows_per_cube, count) = grid(rows, out_dim);
    (vector_size(x, k), rows_per_cube, count)
}

/// The widest vector the runtime reads fast that divides `k`.
fn vector_size(x: &CubeTensor, k: usize) -> usize {
    x.client.io_optimized_vector_sizes(x.dtype.size()).filter(|v| k.is_multiple_of(*v)).max().unwrap_or(1)
}

/// The output elements per cube and the grid: `rows` on x, output blocks on y (under the grid
/// limit). Also the quantized kernels'.
pub(super) fn grid(rows: usize, out_dim: usize) -> (usize, CubeCount) {
    let rows_per_cube = ROWS_PER_CUBE.max(out_dim.div_ceil(MAX_GRID));
    let blocks = out_dim.div_ceil(rows_per_cube);
    (rows_per_cube, CubeCount::Static(rows as u32, blocks as u32, 1))
}

/// The dot products of one `x` row (`x_base`, in vectors) with the weight rows
/// `first..last` of the matrix at `w_base`, written to `out[out_base + o]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn plane_dots<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    x_base: usize,
    w: &Tensor<Vector<F, N>>,
    w_base: usize,
    k_vectors: usize,
    out: &mut Tensor<F>,
    out_base: usize,
    first: usize,
    last: usize,
) {
    let planes = (CUBE_DIM / PLANE_DIM) as usize;
    let plane = (UNIT_POS / PLANE_DIM) as usize;
    let lane = UNIT_POS_PLANE as usize;
    for o in range_stepped(first + plane, last, planes) {
        let row = w_base + o * k_vectors;
        let mut acc = Vector::<f32, N>::zero();
        for j in range_stepped(lane, k_vectors, PLANE_DIM as usize) {
            acc += Vector::cast_from(x[x_base + j]) * Vector::cast_from(w[row + j]);
        }
        let sum = plane_sum(Vector::vector_sum(acc));
        if lane == 0 {
            out[out_base + o] = F::cast_from(sum);
        }
    }
}

/// The cube's block of output elements, clipped to `out_dim`.
#[cube]
pub(super) fn block(rows_per_cube: usize, out_dim: usize) -> (usize, usize) {
    let first = CUBE_POS_Y as usize * rows_per_cube;
    let mut last = first + rows_per_cube;
    if last > out_dim {
        last = out_dim;
    }
    (first, last)
}

#[cube(launch)]
fn matvec_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    out: &mut Tensor<F>,
    out_dim: usize,
    k_vectors: usize,
    rows_per_cube: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_X as usize;
    let (first, last) = block(rows_per_cube, out_dim);
    plane_dots(x, row * k_vectors, w, 0, k_vectors, out, row * out_dim, first, last);
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gathered_matvec_kernel<F: Float, I: Int, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    ids: &Tensor<I>,
    out: &mut Tensor<F>,
    out_dim: usize,
    k_vectors: usize,
    per_row: usize,
    rows_per_cube: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let slot = CUBE_POS_X as usize;
    let matrix = usize::cast_from(ids[slot]);
    let (first, last) = block(rows_per_cube, out_dim);
    plane_dots(
        x,
        (slot / per_row) * k_vectors,
        w,
        matrix * out_dim * k_vectors,
        k_vectors,
        out,
        slot * out_dim,
        first,
        last,
    );
}

#[cube(launch)]
// The nested `if` keeps the id read behind the bounds test (an `&&` in a cube is not a
// short-circuit: both sides are evaluated).
#[allow(clippy::too_many_arguments, clippy::collapsible_if)]
fn grouped_matvec_kernel<F: Float, I: Int, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    ids: &Tensor<I>,
    out: &mut Tensor<F>,
    out_dim: usize,
    k_vectors: usize,
    per_row: usize,
    rows_per_cube: usize,
    slots: usize,
    passes: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let matrix = CUBE_POS_X as usize;
    let (first, last) = block(rows_per_cube, out_dim);
    let planes = (CUBE_DIM / PLANE_DIM) as usize;
    let plane = (UNIT_POS / PLANE_DIM) as usize;
    let lane = UNIT_POS_PLANE as usize;
    let plane_dim = PLANE_DIM as usize;
    // Per plane: its lanes' hits of this pass (slot numbers, in lane order), and how many.
    let mut members = Shared::<[u32]>::new_slice(GROUP_WINDOW);
    let mut counts = Shared::<[u32]>::new_slice(MAX_PLANES);
    for pass in 0..passes {
        let id = pass * GROUP_WINDOW + UNIT_POS as usize;
        let mut hit = 0u32;
        if id < slots {
            if usize::cast_from(ids[id]) == matrix {
                hit = 1u32;
            }
        }
        let rank = plane_exclusive_sum(hit) as usize;
        let found = plane_sum(hit);
        if hit == 1u32 {
            members[plane * plane_dim + rank] = id as u32;
        }
        if lane == 0 {
            counts[plane] = found;
        }
        sync_cube();

        for o in range_stepped(first + plane, last, planes) {
            let row = (matrix * out_dim + o) * k_vectors;
            for chunk in 0..planes {
                let hits = counts[chunk] as usize;
                for t in 0..hits {
                    let slot = members[chunk * plane_dim + t] as usize;
                    let x_base = (slot / per_row) * k_vectors;
                    let mut acc = Vector::<f32, N>::zero();
                    for j in range_stepped(lane, k_vectors, plane_dim) {
                        acc += Vector::cast_from(x[x_base + j]) * Vector::cast_from(w[row + j]);
                    }
                    let sum = plane_sum(Vector::vector_sum(acc));
                    if lane == 0 {
                        out[slot * out_dim + o] = F::cast_from(sum);
                    }
                }
            }
        }
        // The next pass overwrites the members.
        sync_cube();
    }
}
