//! The CubeCL kernels against their plain-Burn references through WGPU (lavapipe, Mesa's
//! software Vulkan driver, in CI: `cargo test -p dsocr-nn --features wgpu`), at the small
//! shapes of [`dsocr_nn::kernels::check`] (the software driver caps one buffer at 128 MiB); the
//! real shapes run on the GPU machine through `dsocr debug kernels`.
//!
//! Without a Vulkan adapter these tests are skipped, unless `DSOCR_REQUIRE_WGPU=1` (set by
//! `.ci/run`) makes a missing adapter a failure.
#![cfg(feature = "wgpu")]

use burn::prelude::*;
use burn::tensor::DType;
use dsocr_nn::kernels::check::{self, Sizes};
use dsocr_nn::matvec::gathered_matvec_reference;

fn assert_all_pass(dtype: DType) {
    let Some(device) = dsocr_weights::testing::wgpu_f32() else { return };
    let checks = check::run(&device, dtype, Sizes::Small);
    assert!(checks.len() > 40, "{} checks", checks.len());
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(failed.is_empty(), "{dtype:?}: {failed:#?}");
}

#[test]
fn kernels_match_references_in_f32() {
    assert_all_pass(DType::F32);
}

#[test]
fn kernels_match_references_in_f16() {
    assert_all_pass(DType::F16);
}

/// The f32 reference of the gathered product is right: each slot's own matrix and token row
/// (so that the comparisons above cannot pass against a wrong oracle).
#[test]
fn gathered_reference_picks_each_slots_matrix() {
    let Some(device) = dsocr_weights::testing::wgpu_f32() else { return };
    let w = Tensor::<3>::random([4, 5, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let x = Tensor::<2>::random([2, 8], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let ids = [3i64, 0, 3, 1];
    let got =
        gathered_matvec_reference(x.clone(), w.clone(), Tensor::from_data(TensorData::new(ids.to_vec(), [4]), &device));
    for (s, &e) in ids.iter().enumerate() {
        let we = w.clone().narrow(0, e as usize, 1).reshape([5, 8]);
        let want = x.clone().narrow(0, s / 2, 1).matmul(we.transpose());
        let diff: f32 = (got.clone().narrow(0, s, 1) - want).abs().max().into_scalar();
        assert!(diff < 1e-4, "slot {s}: {diff}");
    }
}

/// A check that must fail does: a wrong result is caught (the battery is not vacuous).
#[test]
fn a_wrong_kernel_result_fails_its_check() {
    let failing = check::Check { name: "x".into(), rel_err: 0.5, tolerance: 1e-5 };
    let nan = check::Check { name: "x".into(), rel_err: f32::NAN, tolerance: 1e-5 };
    assert!(!failing.passed() && !nan.passed());
}
