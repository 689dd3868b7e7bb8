//! Flash attention for long bidirectional sequences: cubek-attention's `BlackboxAccelerated`
//! routine (tensor-core tiles for `q·kᵀ` and `p·v`, online softmax with f32 accumulators, the
//! scores never written to memory), for `softmax(q kᵀ / √d) v` without mask or bias.
//!
//! The routine needs the stage's query rows (16 per plane, 2–8 planes) to divide the sequence
//! and tensor-core (cmma) f16 tiles on the device; [`flash_fits`] says whether a problem fits.
//! A launch the routine still refuses falls back to Burn's separate kernels in f32, so the
//! result is always computed. The plain-Burn reference is [`crate::attention`] (checked
//! against it in [`super::check`] at the real shapes).

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::attention::flash_attention;
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubek::attention::forward::launch::{BlueprintStrategy, Strategy};
use cubek::attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

/// Query rows of one plane's tile in the routine's cmma tiles.
const TILE_ROWS: usize = 16;

#[backend_extension(Cube, Fusion)]
pub trait FlashAttentionOps: Backend {
    #[fusion(shape = flash_shape(q, v), dtype = q)]
    fn flash_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn flash_shape(q: &Shape, v: &Shape) -> Shape {
    Shape::new([q[0], q[1], q[2], v[3]])
}

/// Planes per cube for `seq_q` query rows: the most (8, 4, 2) whose stage divides them.
pub(super) fn planes_for(seq_q: usize) -> Option<u8> {
    [8u8, 4, 2].into_iter().find(|&p| seq_q.is_multiple_of(TILE_ROWS * p as usize))
}

impl FlashAttentionOps for CubeBackend {
    fn flash_attention(q: CubeTensor, k: CubeTensor, v: CubeTensor) -> CubeTensor {
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: false };
        if let Some(num_planes) = planes_for(q.shape()[2]) {
            let strategy = Strategy::BlackboxAccelerated(BlueprintStrategy::Inferred(BlackboxAcceleratedStrategy {
                num_planes,
                seq_q: 1,
                seq_kv: 1,
            }));
            if let Ok(out) = flash_attention(q.clone(), k.clone(), v.clone(), None, None, options, strategy) {
                return out;
            }
        }
        // Refused: the separate kernels, in f32 (their softmax would otherwise run in the half type).
        let dtype = q.dtype;
        let f32 = |t: CubeTensor| if t.dtype == DType::F32 { t } else { cast(t, DType::F32) };
        let out = burn::backend::ops::attention::attention_fallback::<CubeBackend>(
            f32(q),
            f32(k),
            f32(v),
            None,
            None,
            options,
        );
        if dtype == DType::F32 {
            out
        } else {
            cast(out, dtype)
        }
    }
}
