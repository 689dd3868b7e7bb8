//! `dst ← src` for integer vectors, and blocks of floats, written into `dst`'s own buffer.
//!
//! A captured graph (`burn::tensor::capture`) replays against the buffers it read while it was
//! recorded, so the inputs of a decode step (the token id and the position) must be refreshed
//! in those buffers between replays. Burn's ops return new tensors (or write in place only when
//! a handle is the sole owner, which a graph's closure holding a clone prevents); this kernel
//! writes into the buffer whatever holds it. The returned tensor is an alias of `dst` that
//! orders the write for fusion: keep it alive until the work that must see the new values
//! (the next replay) has been submitted.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

const CUBE_UNITS: u32 = 64;

#[backend_extension(Cube, Fusion)]
pub trait OverwriteOps: Backend {
    #[fusion(shape = dst, dtype = dst)]
    fn overwrite_ints(dst: IntTensor<Self>, src: IntTensor<Self>) -> IntTensor<Self>;
}

impl OverwriteOps for CubeBackend {
    fn overwrite_ints(dst: CubeTensor, src: CubeTensor) -> CubeTensor {
        let src = into_contiguous(src);
        let len = dst.shape().num_elements().min(src.shape().num_elements());
        if len == 0 {
            return dst;
        }
        let dtypes = [dtype_to_storage_type(dst.dtype), dtype_to_storage_type(src.dtype)];
        overwrite_kernel::launch(
            &dst.client.clone(),
            CubeCount::Static((len as u32).div_ceil(CUBE_UNITS), 1, 1),
            CubeDim::new_1d(CUBE_UNITS),
            src.into_tensor_arg(),
            dst.clone().into_tensor_arg(),
            len,
            dtypes,
        );
        dst
    }
}

#[cube(launch)]
fn overwrite_kernel<I: Int, J: Int>(
    src: &Tensor<J>,
    dst: &mut Tensor<I>,
    len: usize,
    #[define(I, J)] _dtypes: [ElemType; 2],
) {
    let i = ABSOLUTE_POS;
    if i < len {
        dst[i] = I::cast_from(src[i]);
    }
}

// Blocks of floats into an existing buffer (the layout of [`crate::Blocks`]).
#[backend_extension(Cube, Fusion)]
pub trait OverwriteFloatOps: Backend {
    #[fusion(shape = dst, dtype = dst)]
    #[allow(clippy::too_many_arguments)]
    fn overwrite_floats(
        dst: FloatTensor<Self>,
        src: FloatTensor<Self>,
        count: usize,
        len: usize,
        dst_offset: usize,
        dst_stride: usize,
        src_offset: usize,
        src_stride: usize,
    ) -> FloatTensor<Self>;
}

impl OverwriteFloatOps for CubeBackend {
    fn overwrite_floats(
        dst: CubeTensor,
        src: CubeTensor,
        count: usize,
        len: usize,
        dst_offset: usize,
        dst_stride: usize,
        src_offset: usize,
        src_stride: usize,
    ) -> CubeTensor {
        let src = into_contiguous(src);
        if count == 0 || len == 0 {
            return dst;
        }
        let dtypes = [dtype_to_storage_type(dst.dtype), dtype_to_storage_type(src.dtype)];
        overwrite_blocks_kernel::launch(
            &dst.client.clone(),
            CubeCount::Static((len as u32).div_ceil(BLOCK_UNITS), count as u32, 1),
            CubeDim::new_1d(BLOCK_UNITS),
            src.into_tensor_arg(),
            dst.clone().into_tensor_arg(),
            len,
            dst_offset,
            dst_stride,
            src_offset,
            src_stride,
            dtypes,
        );
        dst
    }
}

const BLOCK_UNITS: u32 = 256;

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn overwrite_blocks_kernel<F: Float, G: Float>(
    src: &Tensor<G>,
    dst: &mut Tensor<F>,
    len: usize,
    dst_offset: usize,
    dst_stride: usize,
    src_offset: usize,
    src_stride: usize,
    #[define(F, G)] _dtypes: [ElemType; 2],
) {
    let i = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let b = CUBE_POS_Y as usize;
    if i < len {
        dst[dst_offset + b * dst_stride + i] = F::cast_from(src[src_offset + b * src_stride + i]);
    }
}
