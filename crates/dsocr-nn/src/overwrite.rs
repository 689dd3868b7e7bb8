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
