//! Large matrix products `[m, k] · [k, n]` (the vision towers' projections and convolutions,
//! prompt-sized prefill products) launched with a chosen cubek-matmul routine instead of
//! Burn's default (`SimpleCyclicCmma` without autotune), which measured ~23 TFLOPS on the
//! vision half of a page on the H200 (docs/performance.md, "Vision and prefill").
//!
//! The routine is [`DEFAULT_ROUTINE`] unless `DSOCR_GEMM` names another (the names of
//! [`routine`]); one the device refuses falls back to Burn's matmul, so the product is always
//! computed. The plain-Burn reference is `x.matmul(w)` ([`crate::gemm`]), checked against an
//! f32 oracle in [`super::check`].

use std::sync::OnceLock;

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
use cubek::matmul::multi_level::Strategy as Multi;
use cubek::matmul::strategy::Strategy;
use cubek::std::InputBinding;

/// The routine used when `DSOCR_GEMM` is unset.
pub const DEFAULT_ROUTINE: &str = "double_cyclic_mma";

/// Builds one cubek multi-level strategy with its default blueprint.
pub type MakeStrategy = fn() -> Multi;

/// The cubek routines `DSOCR_GEMM` can name, each with its strategy (the ones swept on the
/// H200, docs/performance.md; `burn`, or any other name, means Burn's own matmul).
pub const ROUTINES: [(&str, MakeStrategy); 11] = [
    ("simple_cyclic_cmma", || Multi::SimpleCyclicCmma(Default::default())),
    ("simple_cyclic_mma", || Multi::SimpleCyclicMma(Default::default())),
    ("double_cyclic_cmma", || Multi::DoubleCyclicCmma(Default::default())),
    ("double_cyclic_mma", || Multi::DoubleCyclicMma(Default::default())),
    ("double_tilewise_cmma", || Multi::DoubleTilewiseCmma(Default::default())),
    ("double_hybrid_cmma", || Multi::DoubleHybridCmma(Default::default())),
    ("double_tma_mma", || Multi::DoubleTmaMma(Default::default())),
    ("specialized_cyclic_cmma", || Multi::SpecializedCyclicCmma(Default::default())),
    ("specialized_tma_mma", || Multi::SpecializedTmaMma(Default::default())),
    ("ordered_double_cmma", || Multi::OrderedDoubleCmma(Default::default())),
    ("ordered_double_mma", || Multi::OrderedDoubleMma(Default::default())),
];

/// The cubek strategy of a routine name (`None`: Burn's matmul).
pub fn routine(name: &str) -> Option<Strategy> {
    ROUTINES.iter().find(|(known, _)| *known == name).map(|(_, strategy)| Strategy::MultiLevel(strategy()))
}

/// `DSOCR_GEMM` read once (an unknown name means Burn's matmul).
fn chosen() -> &'static Option<Strategy> {
    static CHOSEN: OnceLock<Option<Strategy>> = OnceLock::new();
    CHOSEN.get_or_init(|| routine(std::env::var("DSOCR_GEMM").as_deref().unwrap_or(DEFAULT_ROUTINE).trim()))
}

#[backend_extension(Cube, Fusion)]
pub trait GemmOps: Backend {
    #[fusion(shape = gemm_shape(x, w), dtype = x)]
    fn gemm(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn gemm_shape(x: &Shape, w: &Shape) -> Shape {
    Shape::new([x[0], w[1]])
}

impl GemmOps for CubeBackend {
    fn gemm(x: CubeTensor, w: CubeTensor) -> CubeTensor {
        let dtype = x.dtype;
        let burn = |x: CubeTensor, w: CubeTensor| {
            matmul(x, w, None, MatmulStrategy::Cube, dtype).unwrap_or_else(|e| panic!("matmul: {e:?}"))
        };
        let Some(strategy) = chosen() else {
            return burn(x, w);
        };
        let (m, n) = (x.shape()[0], w.shape()[1]);
        let out = empty_device_contiguous_dtype(x.client.clone(), x.device.clone(), Shape::new([m, n]), dtype);
        let client = x.client.clone();
        let elem = dtype_to_storage_type(dtype);
        let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: elem, rhs: elem, out: elem });
        let (lhs, rhs) = (InputBinding::new(x.clone().binding(), elem), InputBinding::new(w.clone().binding(), elem));
        match cubek::matmul::launch::launch_ref(strategy, &client, lhs, rhs, out.clone().binding(), &mut dtypes) {
            Ok(()) => out,
            Err(_) => burn(x, w),
        }
    }
}
