//! Large matrix products `x · w` (`[m, k] · [k, n]`), for many rows: the vision towers'
//! projections and convolutions and the prompt's products. On GPUs they can run with a
//! chosen cubek-matmul routine ([`crate::kernels`], `gemm`, routine by `DSOCR_GEMM`); the
//! reference, and the path everywhere else, is Burn's `matmul`.

use burn::prelude::*;

/// `x: [m, k]`, `w: [k, n]` (any layout, e.g. the transposed view of a stored `[n, k]` weight)
/// → `[m, n]`, accumulated in f32 for half-precision inputs on every path.
pub fn gemm(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    {
        use crate::kernels::{available, Kernel};
        if available(Kernel::Gemm, &x, &w) {
            return crate::kernels::gemm(x, w);
        }
    }
    x.matmul(w)
}
