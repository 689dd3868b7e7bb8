//! Refreshing a device buffer in place: how the inputs of a captured graph change between
//! replays (`burn::tensor::capture` replays against the buffers it recorded).

use burn::prelude::*;

/// Whether [`overwrite`] writes into the destination's own buffer on `device`: a CubeCL device
/// (the GPU backends) with the kernels built in. Elsewhere (the CPU backends, which replay a
/// graph by re-running its closure) it returns the new values as a new tensor.
pub fn overwrites_in_place(device: &Device) -> bool {
    #[cfg(feature = "kernels")]
    {
        crate::kernels::is_cube(device)
    }
    #[cfg(not(feature = "kernels"))]
    {
        let _ = device;
        false
    }
}

/// `dst ← src` (same length). Where [`overwrites_in_place`] holds, the values are written into
/// `dst`'s buffer, so every clone of `dst` (and a captured graph that read it) sees them, and
/// the result is an alias of `dst`: keep it alive until the work that must see the values has
/// been submitted (fusion orders the write by it). Elsewhere the result is `src`, and only the
/// result holds the new values.
pub fn overwrite(dst: &Tensor<1, Int>, src: Tensor<1, Int>) -> Tensor<1, Int> {
    debug_assert_eq!(dst.dims(), src.dims());
    #[cfg(feature = "kernels")]
    if overwrites_in_place(&dst.device()) {
        return crate::kernels::overwrite(dst.clone(), src);
    }
    src
}

/// Where [`overwrite_blocks`] copies: `count` blocks of `len` elements, block `b` from the flat
/// index `src_offset + b·src_stride` of `src` to `dst_offset + b·dst_stride` of `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    pub count: usize,
    pub len: usize,
    pub dst_offset: usize,
    pub dst_stride: usize,
    pub src_offset: usize,
    pub src_stride: usize,
}

/// Copies `blocks` of `src` into `dst` (both read as flat row-major buffers; `src` must be a
/// different tensor from `dst`, not a view of it). Where [`overwrites_in_place`] holds, the
/// values land in `dst`'s own buffer, so a captured graph that reads it sees them, and the
/// result is an alias of `dst` (keep it as the tensor's new handle). Elsewhere the result is a
/// new tensor ([`overwrite_blocks_reference`]). How a batch's K/V cache takes in a prefilled
/// sequence, or moves one between rows, without leaving the buffers its decode graph replays.
pub fn overwrite_blocks<const D: usize, const E: usize>(dst: Tensor<D>, src: Tensor<E>, blocks: Blocks) -> Tensor<D> {
    check_blocks(&dst, &src, &blocks);
    #[cfg(feature = "kernels")]
    if overwrites_in_place(&dst.device()) {
        return crate::kernels::overwrite_blocks(dst, src, blocks);
    }
    overwrite_blocks_reference(dst, src, blocks)
}

/// The plain-Burn [`overwrite_blocks`]: one `slice_assign` of the flattened `dst` per block.
pub fn overwrite_blocks_reference<const D: usize, const E: usize>(
    dst: Tensor<D>,
    src: Tensor<E>,
    blocks: Blocks,
) -> Tensor<D> {
    let shape = dst.dims();
    let mut flat = dst.reshape([shape.iter().product::<usize>()]);
    let len = src.dims().iter().product::<usize>();
    let src = src.reshape([len]).cast(flat.dtype());
    for b in 0..blocks.count {
        let (d, s) = (blocks.dst_offset + b * blocks.dst_stride, blocks.src_offset + b * blocks.src_stride);
        flat = flat.slice_assign(d..d + blocks.len, src.clone().slice(s..s + blocks.len));
    }
    flat.reshape(shape)
}

/// Every block inside both buffers (a caller bug otherwise: the kernel would write out of bounds).
fn check_blocks<const D: usize, const E: usize>(dst: &Tensor<D>, src: &Tensor<E>, b: &Blocks) {
    if b.count == 0 || b.len == 0 {
        return;
    }
    let end = |offset: usize, stride: usize| offset + (b.count - 1) * stride + b.len;
    let (dst_len, src_len) = (dst.dims().iter().product::<usize>(), src.dims().iter().product::<usize>());
    assert!(
        end(b.dst_offset, b.dst_stride) <= dst_len && end(b.src_offset, b.src_stride) <= src_len,
        "overwrite_blocks: {b:?} outside buffers of {dst_len} and {src_len} elements"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsocr_weights::{Backend, Precision};

    /// Strided blocks land where the layout says and nothing else changes.
    #[test]
    fn blocks_land_at_their_offsets() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let dst = Tensor::<2>::zeros([3, 8], &device);
        let src =
            Tensor::<1>::from_data(TensorData::new((1..=12).map(|v| v as f32).collect::<Vec<_>>(), [12]), &device);
        // Two blocks of 3, read every 5 from 1, written every 8 from 2 (rows 0 and 1, columns 2..5).
        let b = Blocks { count: 2, len: 3, dst_offset: 2, dst_stride: 8, src_offset: 1, src_stride: 5 };
        let got: Vec<f32> = overwrite_blocks(dst, src, b).into_data().iter::<f32>().collect();
        let mut want = vec![0f32; 24];
        want[2..5].copy_from_slice(&[2.0, 3.0, 4.0]);
        want[10..13].copy_from_slice(&[7.0, 8.0, 9.0]);
        assert_eq!(got, want);
    }
}
