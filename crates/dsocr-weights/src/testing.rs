//! For the tests that run on WGPU (lavapipe in CI).

use burn::prelude::*;

use crate::{Backend, Precision};

/// The WGPU device in f32 if an adapter works, else `None` (the caller skips its test). With
/// `DSOCR_REQUIRE_WGPU=1` (set by `.ci/run`) a missing adapter is a panic instead, so CI cannot
/// skip silently.
pub fn wgpu_f32() -> Option<Device> {
    let probe = std::panic::catch_unwind(|| {
        let device = Backend::Wgpu.device(Precision::F32).ok()?;
        let sum: f32 = Tensor::<1>::ones([4], &device).sum().into_scalar();
        (sum == 4.0).then_some(device)
    });
    match probe {
        Ok(Some(device)) => Some(device),
        _ if std::env::var_os("DSOCR_REQUIRE_WGPU").is_some_and(|v| v == "1") => {
            panic!("DSOCR_REQUIRE_WGPU=1 but no working WGPU adapter (install mesa-vulkan-drivers)")
        }
        _ => {
            eprintln!("skipped: no WGPU adapter (install mesa-vulkan-drivers for lavapipe)");
            None
        }
    }
}
