//! Shared plumbing of the dsocr crates:
//!
//! - [`SafetensorsFiles`]: memory-mapped `*.safetensors` checkpoints (one file or sharded through
//!   `model.safetensors.index.json`), read with the exact upstream tensor names;
//! - [`VarBuilder`]: a prefix-scoped view on them that creates Burn tensors with shape checks
//!   (candle-style `vb.pp("blocks").pp(3).get("weight", [768])`);
//! - [`backend`]: which Burn backends this build contains, and a [`Device`](burn::prelude::Device)
//!   for a user's `--device` choice with the float precision it runs in;
//!
//! The layers built on these tensors (`Linear`, `LayerNorm`, attention) live in `dsocr-nn`.
//!
//! Model code takes no backend parameter: Burn 0.22 carries the backend in the `Device`.

pub mod backend;
mod error;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub mod kernel_cache;
mod safetensors_files;
#[cfg(feature = "wgpu")]
pub mod testing;
mod var_builder;

pub use backend::{Backend, Precision};
pub use error::WeightError;
pub use safetensors_files::{bytes_into_f32, bytes_to_f32, SafetensorsFiles, TensorInfo};
pub use var_builder::VarBuilder;
