//! Attention of one new query per sequence over its K/V cache (split over positions, the
//! "flash-decoding" layout), in two kernels:
//!
//! 1. one cube per (block of [`SPLIT`] positions, sequence·head): one plane per position
//!    computes `q·k` (f32 accumulation, rounded to the activation dtype as the reference's
//!    matmul rounds its output, then scaled), into shared memory; then the block's maximum,
//!    `exp(s − max)` and their sum, and the weighted sum of the block's V rows in f32;
//! 2. one cube per sequence·head merges the blocks: `Σ_b e^{m_b − M} acc_b / Σ_b e^{m_b − M} l_b`.
//!
//! Positions at or after `position[sequence] + 1` are not attended (the reference masks them),
//! so the step attends over the whole preallocated cache without a mask tensor. The softmax
//! runs in f32 as the reference's does; the probabilities stay in f32 for the V sum (the
//! reference rounds them to the activation dtype first).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::num_traits::Zero;
use cubecl::prelude::*;

/// Key positions per cube of the first kernel.
const SPLIT: usize = 64;
const CUBE_UNITS: u32 = 128;
/// Below any score (an empty block's maximum): `exp(EMPTY − M)` is 0 for every finite `M`.
const EMPTY: f32 = -3.0e38;

#[backend_extension(Cube, Fusion)]
pub trait DecodeAttentionOps: Backend {
    #[fusion(shape = q, dtype = q)]
    fn decode_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        position: IntTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl DecodeAttentionOps for CubeBackend {
    fn decode_attention(q: CubeTensor, k: CubeTensor, v: CubeTensor, position: CubeTensor) -> CubeTensor {
        let (q, k, v, position) =
            (into_contiguous(q), into_contiguous(k), into_contiguous(v), into_contiguous(position));
        let (batch, heads, d) = (q.shape()[0], q.shape()[1], q.shape()[3]);
        let capacity = k.shape()[2];
        let out = empty_device_contiguous_dtype(q.client.clone(), q.device.clone(), q.shape().clone(), q.dtype);
        let rows = batch * heads;
        if rows == 0 || d == 0 || capacity == 0 {
            return out;
        }
        let vector =
            q.client.io_optimized_vector_sizes(q.dtype.size()).filter(|n| d.is_multiple_of(*n)).max().unwrap_or(1);
        let splits = capacity.div_ceil(SPLIT);
        let (client, device) = (q.client.clone(), q.device.clone());
        let acc =
            empty_device_contiguous_dtype(client.clone(), device.clone(), Shape::new([splits, rows, d]), DType::F32);
        let ml = empty_device_contiguous_dtype(client.clone(), device, Shape::new([splits, rows, 2]), DType::F32);
        let scale = 1.0 / (d as f32).sqrt();
        let float = dtype_to_storage_type(q.dtype);
        decode_attention_split::launch(
            &client,
            CubeCount::Static(splits as u32, rows as u32, 1),
            CubeDim::new_1d(CUBE_UNITS),
            vector,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            position.clone().into_tensor_arg(),
            acc.clone().into_tensor_arg(),
            ml.clone().into_tensor_arg(),
            heads,
            rows,
            capacity,
            d / vector,
            scale,
            [float, dtype_to_storage_type(position.dtype)],
        );
        decode_attention_merge::launch(
            &client,
            CubeCount::Static(rows as u32, 1, 1),
            CubeDim::new_1d(CUBE_UNITS),
            vector,
            acc.into_tensor_arg(),
            ml.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows,
            splits,
            d / vector,
            float,
        );
        out
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn decode_attention_split<F: Float, I: Int, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    position: &Tensor<I>,
    acc_out: &mut Tensor<Vector<f32, N>>,
    ml_out: &mut Tensor<f32>,
    heads: usize,
    rows: usize,
    capacity: usize,
    d_vectors: usize,
    scale: f32,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    let split = CUBE_POS_X as usize;
    let row = CUBE_POS_Y as usize;
    let start = split * SPLIT;
    let mut end = usize::cast_from(position[row / heads]) + 1;
    if end > capacity {
        end = capacity;
    }
    if end > start + SPLIT {
        end = start + SPLIT;
    }
    // Blocks wholly after the position are empty (`end − start` wraps there and is not taken).
    let n = select(end > start, end - start, 0usize);
    let q_base = row * d_vectors;
    let kv_base = row * capacity * d_vectors;
    let mut scores = Shared::<[f32]>::new_slice(SPLIT);

    // Scores: one plane per position.
    let planes = (CUBE_DIM / PLANE_DIM) as usize;
    let plane = (UNIT_POS / PLANE_DIM) as usize;
    let lane = UNIT_POS_PLANE as usize;
    for i in range_stepped(plane, n, planes) {
        let k_row = kv_base + (start + i) * d_vectors;
        let mut acc = Vector::<f32, N>::zero();
        for j in range_stepped(lane, d_vectors, PLANE_DIM as usize) {
            acc += Vector::cast_from(q[q_base + j]) * Vector::cast_from(k[k_row + j]);
        }
        let dot = plane_sum(Vector::vector_sum(acc));
        if lane == 0 {
            scores[i] = f32::cast_from(F::cast_from(dot)) * scale;
        }
    }
    sync_cube();

    // The block's maximum (every unit), then exp(s − max) in place.
    let mut m = f32::new(EMPTY);
    for i in 0..n {
        if scores[i] > m {
            m = scores[i];
        }
    }
    sync_cube();
    if (UNIT_POS as usize) < n {
        let i = UNIT_POS as usize;
        scores[i] = f32::exp(scores[i] - m);
    }
    sync_cube();

    // The weighted sum of the block's V rows, one unit per vector of the head dimension.
    let out_base = (split * rows + row) * d_vectors;
    for j in range_stepped(UNIT_POS as usize, d_vectors, CUBE_DIM as usize) {
        let mut acc = Vector::<f32, N>::zero();
        for i in 0..n {
            acc += Vector::<f32, N>::new(scores[i]) * Vector::cast_from(v[kv_base + (start + i) * d_vectors + j]);
        }
        acc_out[out_base + j] = acc;
    }
    if UNIT_POS == 0 {
        let mut l = 0.0f32;
        for i in 0..n {
            l += scores[i];
        }
        ml_out[(split * rows + row) * 2] = m;
        ml_out[(split * rows + row) * 2 + 1] = l;
    }
}

#[cube(launch)]
fn decode_attention_merge<F: Float, N: Size>(
    acc: &Tensor<Vector<f32, N>>,
    ml: &Tensor<f32>,
    out: &mut Tensor<Vector<F, N>>,
    rows: usize,
    splits: usize,
    d_vectors: usize,
    #[define(F)] _dtype: ElemType,
) {
    let row = CUBE_POS_X as usize;
    let mut big_m = f32::new(EMPTY);
    for s in 0..splits {
        let m = ml[(s * rows + row) * 2];
        if m > big_m {
            big_m = m;
        }
    }
    let mut total = 0.0f32;
    for s in 0..splits {
        total += ml[(s * rows + row) * 2 + 1] * f32::exp(ml[(s * rows + row) * 2] - big_m);
    }
    let inv = 1.0f32 / total;
    for j in range_stepped(UNIT_POS as usize, d_vectors, CUBE_DIM as usize) {
        let mut o = Vector::<f32, N>::zero();
        for s in 0..splits {
            let w = f32::exp(ml[(s * rows + row) * 2] - big_m);
            o += Vector::<f32, N>::new(w) * acc[(s * rows + row) * d_vectors + j];
        }
        out[row * d_vectors + j] = Vector::cast_from(o * Vector::<f32, N>::new(inv));
    }
}
