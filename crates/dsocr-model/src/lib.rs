//! DeepSeek-OCR as one model: configuration, weights, and the pipeline
//! image → preprocessing → DeepEncoder → projector/layout → decoder → tokens.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::ops::ControlFlow;
//! use dsocr_model::{Backend, DeepseekOcr, LoadOptions, OcrRequest, Precision};
//! use dsocr_input::{Mode, Task};
//!
//! let model = DeepseekOcr::load("path/to/DeepSeek-OCR".as_ref(), &LoadOptions::new(Backend::Cpu, Precision::F32))?;
//! let image = dsocr_input::load_image("page.png".as_ref())?;
//! let request = OcrRequest::new(Task::Markdown.prompt(), Some(image), Mode::Gundam);
//! let result = model.run(&request, |piece| {
//!     print!("{piece}");
//!     ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens, finish: {:?}", result.generated_tokens(), result.finish);
//! # Ok(()) }
//! ```

mod batch;
mod config;
mod error;
mod model;
mod pipeline;
pub mod quantized_checkpoint;

pub use batch::{PageBatch, PageEvent, ADMIT_GROUP};
pub use config::ModelConfig;
pub use error::ModelError;
pub use model::{DeepseekOcr, LoadOptions, ModelFiles, QUANTIZE_LM_HEAD};
pub use pipeline::{OcrRequest, OcrResult, VisionOutput};
pub use quantized_checkpoint::{save_quantized, QuantizeEvent, QuantizeReport};

pub use dsocr_decoder::{ExpertDispatch, FinishReason, GenerationConfig, Quant, RepeatGuard};
pub use dsocr_weights::{Backend, Precision};
