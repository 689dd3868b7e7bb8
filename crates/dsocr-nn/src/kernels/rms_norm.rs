//! RMSNorm (and residual add + RMSNorm) of `[rows, d]`: one cube of 256 units per row.
//!
//! Each unit strides over the row in vectors, sums squares in f32; `plane_sum` and one shared
//! slot per plane give the row's sum. Then each unit normalises the vectors it read (the add
//! recomputed, the same rounding as the sum it wrote), casts to the activation dtype and
//! multiplies by the weight in that dtype, as the reference does ([`crate::rms_norm`]).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
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

/// Units per cube (one cube per row).
const CUBE_UNITS: u32 = 256;
/// Shared slots for the per-plane partial sums: enough for planes as small as 4 lanes.
const MAX_PLANES: usize = 64;

#[backend_extension(Cube, Fusion)]
pub trait RmsNormOps: Backend {
    #[fusion(shape = x, dtype = x)]
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;

    #[fusion(meta = |x, _delta, _weight, _eps| (x.clone(), x.clone()))]
    fn add_rms_norm(
        x: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl RmsNormOps for CubeBackend {
    fn rms_norm(x: CubeTensor, weight: CubeTensor, eps: f64) -> CubeTensor {
        let (x, weight) = (into_contiguous(x), into_contiguous(weight));
        let (rows, d) = (x.shape()[0], x.shape()[1]);
        let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([rows, d]), x.dtype);
        if rows == 0 || d == 0 {
            return out;
        }
        let vector = vector_size(&x, d);
        rms_norm_kernel::launch(
            &out.client.clone(),
            CubeCount::Static(rows as u32, 1, 1),
            CubeDim::new_1d(CUBE_UNITS),
            vector,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            d / vector,
            d as f32,
            eps as f32,
            dtype_to_storage_type(out.dtype),
        );
        out
    }

    fn add_rms_norm(x: CubeTensor, delta: CubeTensor, weight: CubeTensor, eps: f64) -> (CubeTensor, CubeTensor) {
        let (x, delta, weight) = (into_contiguous(x), into_contiguous(delta), into_contiguous(weight));
        let (rows, d) = (x.shape()[0], x.shape()[1]);
        let sum = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([rows, d]), x.dtype);
        let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([rows, d]), x.dtype);
        if rows == 0 || d == 0 {
            return (sum, out);
        }
        let vector = vector_size(&x, d);
        add_rms_norm_kernel::launch(
            &out.client.clone(),
            CubeCount::Static(rows as u32, 1, 1),
            CubeDim::new_1d(CUBE_UNITS),
            vector,
            x.into_tensor_arg(),
            delta.into_tensor_arg(),
            weight.into_tensor_arg(),
            sum.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            d / vector,
            d as f32,
            eps as f32,
            dtype_to_storage_type(out.dtype),
        );
        (sum, out)
    }
}

/// The widest vector the runtime reads fast that divides the row.
fn vector_size(x: &CubeTensor, d: usize) -> usize {
    x.client.io_optimized_vector_sizes(x.dtype.size()).filter(|v| d.is_multiple_of(*v)).max().unwrap_or(1)
}

/// The sum over the cube of each unit's `partial`.
#[cube]
fn cube_sum(partial: f32) -> f32 {
    let mut shared = Shared::<[f32]>::new_slice(MAX_PLANES);
    let planes = (CUBE_DIM / PLANE_DIM) as usize;
    let plane_total = plane_sum(partial);
    if UNIT_POS_PLANE == 0 {
        shared[(UNIT_POS / PLANE_DIM) as usize] = plane_total;
    }
    sync_cube();
    let mut total = 0.0f32;
    for p in 0..planes {
        total += shared[p];
    }
    total
}

/// `1 / sqrt(mean + eps)` of the row whose squares this unit summed into `acc`.
#[cube]
fn inv_rms<N: Size>(acc: Vector<f32, N>, d: f32, eps: f32) -> f32 {
    let total = cube_sum(Vector::vector_sum(acc));
    1.0f32 / f32::sqrt(total / d + eps)
}

/// `w · to_F(v · inv_rms)`: one normalised vector.
#[cube]
fn normed<F: Float, N: Size>(v: Vector<F, N>, weight: Vector<F, N>, inv_rms: f32) -> Vector<F, N> {
    Vector::<F, N>::cast_from(Vector::<f32, N>::cast_from(v) * Vector::<f32, N>::new(inv_rms)) * weight
}

#[cube(launch)]
fn rms_norm_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    weight: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    d_vectors: usize,
    d: f32,
    eps: f32,
    #[define(F)] _dtype: ElemType,
) {
    let base = CUBE_POS_X as usize * d_vectors;
    let mut acc = Vector::<f32, N>::zero();
    for j in range_stepped(UNIT_POS as usize, d_vectors, CUBE_DIM as usize) {
        let v = Vector::<f32, N>::cast_from(x[base + j]);
        acc += v * v;
    }
    let inv_rms = inv_rms(acc, d, eps);
    for j in range_stepped(UNIT_POS as usize, d_vectors, CUBE_DIM as usize) {
        out[base + j] = normed(x[base + j], weight[j], inv_rms);
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_rms_norm_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    delta: &Tensor<Vector<F, N>>,
    weight: &Tensor<Vector<F, N>>,
    sum: &mut Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    d_vectors: usize,
    d: f32,
    eps: f32,
    #[define(F)] _dtype: ElemType,
) {
    let base = CUBE_POS_X as usize * d_vectors;
    let mut acc = Vector::<f32, N>::zero();
    for j in range_stepped(UNIT_POS as usize, d_vectors, CUBE_DIM as usize) {
        let h = x[base + j] + delta[base + j];
        sum[base + j] = h;
        let v = Vector::<f32, N>::cast_from(h);
        acc += v * v;
    }
    let inv_rms = inv_rms(acc, d, eps);
    for j in range_stepped(UNIT_POS as usize, d_vectors, CUBE_DIM as usize) {
        // The same rounded sum as the first pass wrote (this unit's own vectors).
        out[base + j] = normed(x[base + j] + delta[base + j], weight[j], inv_rms);
    }
}
