//! Which Burn backends this build contains, and the device/precision a user asked for.
//!
//! Backends are compiled in by Cargo features (`cpu`, `ndarray`, `wgpu`, `cuda`); one binary
//! may contain several, and the user picks one at run time (`--device cpu|wgpu|cuda`).

use std::fmt;
use std::str::FromStr;

use burn::prelude::Device;
use burn::tensor::{DType, FloatDType};

use crate::WeightError;

/// A Burn backend this project knows how to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Burn `flex`: pure-Rust CPU, f32/f16/bf16, SIMD + threads.
    Cpu,
    /// Burn `ndarray` (deprecated upstream, f32 only).
    Ndarray,
    /// Burn `wgpu` (WGSL): Vulkan, Metal, DX12 at run time.
    Wgpu,
    /// Burn `cuda` (CubeCL, NVRTC).
    Cuda,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::Cpu, Backend::Ndarray, Backend::Wgpu, Backend::Cuda];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// The Cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        self.name()
    }

    /// Whether this binary was built with the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Backend::Cpu => cfg!(feature = "cpu"),
            Backend::Ndarray => cfg!(feature = "ndarray"),
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this binary, fastest first.
    pub fn compiled() -> Vec<Backend> {
        [Backend::Cuda, Backend::Wgpu, Backend::Cpu, Backend::Ndarray].into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// Whether this backend runs on a GPU (wgpu, cuda).
    pub fn is_gpu(self) -> bool {
        matches!(self, Backend::Wgpu | Backend::Cuda)
    }

    /// The precision this backend runs fastest in while staying faithful (docs/parity.md).
    pub fn fast_precision(self) -> Precision {
        match self {
            Backend::Cuda => Precision::Bf16,
            Backend::Wgpu => Precision::F16,
            Backend::Cpu | Backend::Ndarray => Precision::F32,
        }
    }

    /// A device of this backend with its default float dtype set to `precision`.
    ///
    /// Burn locks a device's default dtype at its first tensor; asking again for the same
    /// precision is fine, asking for another one is an error.
    pub fn device(self, precision: Precision) -> Result<Device, WeightError> {
        let unavailable = |reason: String| WeightError::Backend { name: self.name().to_string(), reason };
        if !self.is_compiled() {
            return Err(unavailable(format!(
                "this binary was built without it (rebuild with `--features {}`)",
                self.feature()
            )));
        }
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if matches!(self, Backend::Wgpu | Backend::Cuda) {
            crate::kernel_cache::configure();
        }
        let mut device = self.raw_device();
        let dtype = precision.float_dtype();
        if !device.supports_dtype(DType::from(dtype)) {
            return Err(unavailable(format!("it does not support {precision}")));
        }
        if device.configure(dtype).is_err() && device.settings().float_dtype != dtype {
            return Err(unavailable(format!(
                "its default float type is already {:?} in this process, cannot switch to {precision}",
                device.settings().float_dtype
            )));
        }
        Ok(device)
    }

    #[allow(unreachable_code)]
    fn raw_device(self) -> Device {
        match self {
            #[cfg(feature = "cpu")]
            Backend::Cpu => return Device::flex(),
            #[cfg(feature = "ndarray")]
            Backend::Ndarray => return Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => return Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Backend::Cuda => return Device::cuda(0),
            _ => {}
        }
        Device::default()
    }
}

/// Whether `device` is one of the CPU backends (flex, ndarray), which compute in host memory.
/// GPU backends pay a kernel launch per operation and prefer fewer, fused operations.
#[allow(unused_variables)]
pub fn is_host_device(device: &Device) -> bool {
    #[cfg(feature = "cpu")]
    if *device == Device::flex() {
        return true;
    }
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    if *device == Device::ndarray() {
        return true;
    }
    false
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = WeightError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Backend::Cpu),
            "ndarray" => Ok(Backend::Ndarray),
            "wgpu" | "vulkan" | "metal" | "gpu" => Ok(Backend::Wgpu),
            "cuda" => Ok(Backend::Cuda),
            other => Err(WeightError::Backend {
                name: other.to_string(),
                reason: "unknown backend: use cpu, ndarray, wgpu or cuda".into(),
            }),
        }
    }
}

/// The float type weights are stored and computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    pub fn dtype(self) -> DType {
        DType::from(self.float_dtype())
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown precision `{other}`: use f32, f16 or bf16")),
        }
    }
}
