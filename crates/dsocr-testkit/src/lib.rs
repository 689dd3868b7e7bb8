//! Developer tooling of dsocr, kept out of the library crates (`publish = false`):
//!
//! - [`parity`]: runs the cases of a reference fixture (`cases.json` + `golden.safetensors`, made
//!   by the upstream PyTorch code) and compares every stage with the golden tensors; used by
//!   `dsocr debug`, the workspace tests and docs/parity.md.
//! - [`random_checkpoint`]: a full-size model folder with random weights, real names and shapes,
//!   for speed and memory measurements (`dsocr bench`, `cargo xtask make-checkpoint`).
//! - [`fixtures`]: the repository's tiny reference fixture and small hand-made PDFs for tests.
//! - [`scripted`]: the tiny fixture rewired to emit a fixed output (grounding box, EOS), for
//!   end-to-end tests of what random weights never say.

pub mod fixtures;
pub mod parity;
pub mod random_checkpoint;
pub mod scripted;
