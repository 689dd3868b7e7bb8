//! RMSNorm as HF `DeepseekV2RMSNorm` computes it (spec §6.2, pitfall 26), and the same after a
//! residual add:
//!
//! ```text
//! rms_norm(x, w)         = w · to_dtype(x₃₂ / sqrt(mean(x₃₂²) + eps))      over the last axis
//! add_rms_norm(x, δ, w)  = (h, rms_norm(h, w))   with h = to_dtype(x + δ)
//! ```
//!
//! Statistics in f32; the normalised value is cast back to the activation dtype BEFORE the
//! weight multiply, which runs in that dtype. `h` is the sum rounded to the activation dtype,
//! as PyTorch's `x + δ` is, and the statistics are taken of that rounded sum.
//!
//! On GPU devices with the kernels ([`crate::kernels`]) each is one kernel; the references
//! below are the CPU path and the test oracle.

use burn::prelude::*;
use burn::tensor::DType;

/// `x: [..., d]`, `weight: [d]` → `[..., d]` in `x`'s dtype (see the module docs).
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    #[cfg(feature = "kernels")]
    if kernel_applies(&x, weight) {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        return crate::kernels::rms_norm(x.reshape([rows, dims[D - 1]]), weight.clone(), eps).reshape(dims);
    }
    rms_norm_reference(x, weight, eps)
}

/// `(h, rms_norm(h))` with `h = x + delta` (see the module docs): the residual add and the
/// next norm of a pre-norm block in one pass.
pub fn add_rms_norm<const D: usize>(
    x: Tensor<D>,
    delta: Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
) -> (Tensor<D>, Tensor<D>) {
    #[cfg(feature = "kernels")]
    if kernel_applies(&x, weight) && delta.dtype() == x.dtype() && delta.dims() == x.dims() {
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let d = dims[D - 1];
        let (h, normed) =
            crate::kernels::add_rms_norm(x.reshape([rows, d]), delta.reshape([rows, d]), weight.clone(), eps);
        return (h.reshape(dims), normed.reshape(dims));
    }
    add_rms_norm_reference(x, delta, weight, eps)
}

/// Whether the kernel takes `x`: `rms_norm` switched on (any number of rows), or
/// `rms_norm_decode` (on by default) and at most [`MATVEC_MAX_ROWS`](crate::matvec::MATVEC_MAX_ROWS)
/// rows, a decode step's.
#[cfg(feature = "kernels")]
fn kernel_applies<const D: usize>(x: &Tensor<D>, weight: &Tensor<1>) -> bool {
    use crate::kernels::{available, Kernel};
    let rows = x.dims()[..D - 1].iter().product::<usize>();
    available(Kernel::RmsNorm, x, weight)
        || (rows <= crate::matvec::MATVEC_MAX_ROWS && available(Kernel::RmsNormDecode, x, weight))
}

/// [`rms_norm`] in plain Burn.
pub fn rms_norm_reference<const D: usize>(x: Tensor<D>, weight: &Tensor<1>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let variance = x.clone().square().mean_dim(D - 1);
    let normed = x * (variance + eps).sqrt().recip();
    normed.cast(dtype) * weight.clone().unsqueeze::<D>()
}

/// [`add_rms_norm`] in plain Burn.
pub fn add_rms_norm_reference<const D: usize>(
    x: Tensor<D>,
    delta: Tensor<D>,
    weight: &Tensor<1>,
    eps: f64,
) -> (Tensor<D>, Tensor<D>) {
    let h = x + delta;
    let normed = rms_norm_reference(h.clone(), weight, eps);
    (h, normed)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;
    use dsocr_weights::{Backend, Precision};

    use super::*;

    /// The reference against the formula written out by hand for one row.
    #[test]
    fn reference_normalises_each_row() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let x = Tensor::<2>::from_data([[3.0f32, 4.0], [1.0, -1.0]], &device);
        let w = Tensor::<1>::from_data([2.0f32, 0.5], &device);
        let got: Vec<f32> = rms_norm(x, &w, 0.0).into_data().try_to_vec::<f32>().unwrap();
        // Row 0: rms = sqrt((9 + 16) / 2); row 1: rms = 1.
        let rms = (12.5f32).sqrt();
        let want = [2.0 * 3.0 / rms, 0.5 * 4.0 / rms, 2.0, -0.5];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    /// The fused form returns the sum and the norm of the sum.
    #[test]
    fn add_reference_is_add_then_norm() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let x = Tensor::<3>::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let delta = Tensor::<3>::random([2, 3, 8], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<1>::random([8], Distribution::Normal(1.0, 0.1), &device);
        let (h, normed) = add_rms_norm(x.clone(), delta.clone(), &w, 1e-6);
        let sum = x + delta;
        let diff: f32 = (h - sum.clone()).abs().max().into_scalar();
        assert_eq!(diff, 0.0);
        let diff: f32 = (normed - rms_norm(sum, &w, 1e-6)).abs().max().into_scalar();
        assert!(diff < 1e-6);
    }
}
