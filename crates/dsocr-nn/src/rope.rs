//! Rotary position embedding, NeoX "rotate-half" pairing `(i, i + d/2)` over the whole head
//! (spec §6.3, pitfall 23), for one new position per sequence (a decode step).

use burn::prelude::*;

/// `x * cos + rotate_half(x) * sin` for `x: [rows, heads, 1, d]` with `cos`, `sin` `[rows, d]`
/// (row `r`'s position), `rotate_half([a, b]) = [-b, a]`. On GPUs one kernel
/// ([`crate::kernels`], `rope`); elsewhere [`rope_rows_reference`].
pub fn rope_rows(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    #[cfg(feature = "kernels")]
    {
        use crate::kernels::{available, Kernel};
        if available(Kernel::Rope, &x, cos) && sin.dtype() == x.dtype() && x.dims()[2] == 1 {
            return crate::kernels::rope_rows(x, cos.clone(), sin.clone());
        }
    }
    rope_rows_reference(x, cos, sin)
}

/// The plain-Burn [`rope_rows`]: the halves, `cat([-b, a])`, two products and a sum.
pub fn rope_rows_reference(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let [rows, _, _, d] = x.dims();
    let half = d / 2;
    let a = x.clone().narrow(3, 0, half);
    let b = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![b.neg(), a], 3);
    let shape = [rows, 1, 1, d];
    x * cos.clone().reshape(shape) + rotated * sin.clone().reshape(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsocr_weights::{Backend, Precision};

    /// Against hand-computed values: d = 4, two rows at different angles.
    #[test]
    fn reference_rotates_half_pairs() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 1.0, 0.0, 0.0, 0.0], [2, 1, 1, 4]),
            &device,
        );
        let (c, s) = (0.6f32, 0.8f32);
        let cos = Tensor::<2>::from_data(TensorData::new(vec![c, c, c, c, 1.0, 1.0, 1.0, 1.0], [2, 4]), &device);
        let sin = Tensor::<2>::from_data(TensorData::new(vec![s, s, s, s, 0.0, 0.0, 0.0, 0.0], [2, 4]), &device);
        let y: Vec<f32> = rope_rows_reference(x, &cos, &sin).into_data().iter::<f32>().collect();
        let want = [1.0 * c - 3.0 * s, 2.0 * c - 4.0 * s, 3.0 * c + 1.0 * s, 4.0 * c + 2.0 * s, 1.0, 0.0, 0.0, 0.0];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?} vs {want:?}");
        }
    }
}
