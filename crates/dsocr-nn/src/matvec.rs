//! Matrix-vector products for the few rows of a decode step, `y = x Wᵀ` with `W` in PyTorch's
//! `[out, in]` layout (rows contiguous).
//!
//! [`matvec`] and [`gathered_matvec`] run the CubeCL kernels of [`crate::kernels`] on GPU
//! devices that have them (plane operations, f32/f16/bf16) and their references here
//! otherwise. The references are the spec and the test oracle:
//!
//! ```text
//! matvec(x, W)[r, o]              = Σ_k x[r, k] · W[o, k]
//! gathered_matvec(x, W, ids)[s, o] = Σ_k x[s / (S / n), k] · W[ids[s], o, k]   (S = len(ids), n = rows of x)
//! ```
//!
//! Sums run in f32 and the result is cast back to `x`'s dtype: the kernels accumulate in f32
//! registers; the references rely on the GPU backends' f32 accumulation of half-precision sums
//! and matmuls.

use burn::prelude::*;

/// The most rows [`Linear`](crate::Linear) sends through [`matvec`]; more rows (a prompt, a
/// vision batch) are a matrix product.
pub const MATVEC_MAX_ROWS: usize = 32;

/// `x: [m, in]`, `w: [out, in]` → `x wᵀ`: `[m, out]` in `x`'s dtype.
pub fn matvec(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    if crate::kernels::available(crate::kernels::Kernel::Matvec, &x, &w) {
        return crate::kernels::matvec(x, w);
    }
    matvec_reference(x, w)
}

/// [`matvec`] without kernels: one row as a multiply and a sum over the contiguous rows of `w`
/// (it reads the weight once, where the untuned tiled matmul kernels were measured up to 100×
/// slower than the bandwidth bound for one row on the H100, docs/performance.md); more rows as
/// a matrix product.
pub fn matvec_reference(x: Tensor<2>, w: Tensor<2>) -> Tensor<2> {
    let [m, _] = x.dims();
    let [out, _] = w.dims();
    if m == 1 {
        (w * x).sum_dim(1).reshape([1, out])
    } else {
        x.matmul(w.transpose())
    }
}

/// `x: [n, in]`, `w: [E, out, in]`, `ids: [S]` (`S` a multiple of `n`, every id `< E`) →
/// `[S, out]`: row `s` is `x[s / (S / n)] · w[ids[s]]ᵀ`. The MoE experts of a decode step:
/// token `j`'s `k` chosen experts are slots `j·k .. j·k + k`.
///
/// The kernels read each chosen matrix in place; the reference copies them out first
/// (`select`). For more slots than matrices (a batched decode step's experts) the grouped
/// kernel runs where [`grouped_available`] says so: each matrix is read once for all the slots
/// that chose it, with the same values as the per-slot kernel.
pub fn gathered_matvec(x: Tensor<2>, w: Tensor<3>, ids: Tensor<1, Int>) -> Tensor<2> {
    #[cfg(feature = "kernels")]
    {
        if ids.dims()[0] > w.dims()[0] && grouped_available(&x, &w) {
            return crate::kernels::grouped_matvec(x, w, ids);
        }
        if crate::kernels::available(crate::kernels::Kernel::GatheredMatvec, &x, &w) {
            return crate::kernels::gathered_matvec(x, w, ids);
        }
    }
    gathered_matvec_reference(x, w, ids)
}

/// Whether [`gathered_matvec`] of `x` over the stack `w` runs the grouped kernel for many slots
/// (switched on, a CubeCL device with plane operations, one float dtype), where reading every
/// matrix once makes the gathered product cheaper than an all-experts dense product for a
/// batch of up to a few hundred tokens. Always false without the `kernels` feature.
pub fn grouped_available(x: &Tensor<2>, w: &Tensor<3>) -> bool {
    #[cfg(feature = "kernels")]
    {
        crate::kernels::available(crate::kernels::Kernel::GroupedMatvec, x, w)
    }
    #[cfg(not(feature = "kernels"))]
    {
        let _ = (x, w);
        false
    }
}

/// [`gathered_matvec`] in plain Burn: the chosen matrices selected, then a batch of
/// multiply-and-sum products.
pub fn gathered_matvec_reference(x: Tensor<2>, w: Tensor<3>, ids: Tensor<1, Int>) -> Tensor<2> {
    let [n, d] = x.dims();
    let [slots] = ids.dims();
    let out = w.dims()[1];
    let per_row = slots / n.max(1);
    let xs = x.unsqueeze_dim::<3>(1).repeat_dim(1, per_row).reshape([slots, 1, d]);
    let w = w.select(0, ids); // [S, out, in]
    (w * xs).sum_dim(2).reshape([slots, out])
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Distribution};
    use dsocr_weights::{Backend, Precision};

    use super::*;

    fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
        (a.cast(DType::F32) - b.cast(DType::F32)).abs().max().into_scalar()
    }

    /// Both reference forms (one row, several rows) equal a plain matrix product.
    #[test]
    fn matvec_reference_equals_matmul() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let w = Tensor::<2>::random([24, 40], Distribution::Normal(0.0, 1.0), &device);
        for m in [1, 3] {
            let x = Tensor::<2>::random([m, 40], Distribution::Normal(0.0, 1.0), &device);
            let want = x.clone().matmul(w.clone().transpose());
            let got = matvec(x, w.clone());
            assert_eq!(got.dims(), [m, 24]);
            assert!(max_diff(got, want) < 1e-4);
        }
    }

    /// The gathered reference picks each slot's matrix and its token's row.
    #[test]
    fn gathered_reference_uses_each_slots_matrix_and_row() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let w = Tensor::<3>::random([5, 6, 8], Distribution::Normal(0.0, 1.0), &device);
        let x = Tensor::<2>::random([2, 8], Distribution::Normal(0.0, 1.0), &device);
        let ids = [4i64, 0, 4, 2, 1, 3];
        let got = gathered_matvec(x.clone(), w.clone(), Tensor::from_data(TensorData::new(ids.to_vec(), [6]), &device));
        assert_eq!(got.dims(), [6, 6]);
        for (s, &e) in ids.iter().enumerate() {
            let we = w.clone().narrow(0, e as usize, 1).reshape([6, 8]);
            let want = x.clone().narrow(0, s / 3, 1).matmul(we.transpose());
            assert!(max_diff(got.clone().narrow(0, s, 1), want) < 1e-4, "slot {s}");
        }
    }
}
