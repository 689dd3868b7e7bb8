//! Rotary position embedding ("rotate-half" pairs `(j, j + d/2)`) of one new position per
//! sequence: `x: [rows, heads, 1, d]`, `cos`, `sin`: `[rows, d]`, one unit per element,
//! f32 arithmetic rounded once to the activation dtype (the reference, [`crate::rope`], rounds
//! each product and the sum).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

const CUBE_UNITS: u32 = 256;

#[backend_extension(Cube, Fusion)]
pub trait RopeOps: Backend {
    #[fusion(shape = x, dtype = x)]
    fn rope_rows(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl RopeOps for CubeBackend {
    fn rope_rows(x: CubeTensor, cos: CubeTensor, sin: CubeTensor) -> CubeTensor {
        let (x, cos, sin) = (into_contiguous(x), into_contiguous(cos), into_contiguous(sin));
        let shape = x.shape().clone();
        let (heads, d) = (shape[1], shape[3]);
        let len = shape.num_elements();
        let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), shape, x.dtype);
        if len == 0 {
            return out;
        }
        let dtype = dtype_to_storage_type(x.dtype);
        rope_rows_kernel::launch(
            &out.client.clone(),
            CubeCount::Static((len as u32).div_ceil(CUBE_UNITS), 1, 1),
            CubeDim::new_1d(CUBE_UNITS),
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            len,
            heads * d,
            d,
            dtype,
        );
        out
    }
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rope_rows_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    len: usize,
    per_row: usize,
    d: usize,
    #[define(F)] _dtype: ElemType,
) {
    let e = ABSOLUTE_POS;
    if e < len {
        let half = d / 2;
        let j = e % d;
        let table = (e / per_row) * d + j;
        // rotate_half([a, b]) = [-b, a]: the partner of j and its sign.
        let mut partner = e + half;
        let mut sign = f32::new(-1.0);
        if j >= half {
            partner = e - half;
            sign = f32::new(1.0);
        }
        let v = f32::cast_from(x[e]) * f32::cast_from(cos[table])
            + sign * f32::cast_from(x[partner]) * f32::cast_from(sin[table]);
        out[e] = F::cast_from(v);
    }
}
