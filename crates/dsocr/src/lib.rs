//! dsocr: DeepSeek-OCR on your own machine, as a library. The CLI (`dsocr ocr`) and the server
//! (`dsocr serve`) are front ends over this crate.
//!
//! Load a model, run a file, read the markdown:
//!
//! ```no_run
//! # fn main() -> Result<(), dsocr::OcrError> {
//! let ocr = dsocr::Ocr::load("deepseek-ai/DeepSeek-OCR", &dsocr::choose_backend(None, None)?, |_| {})?;
//! let doc = ocr.run_file("scan.pdf".as_ref(), &dsocr::OcrOptions::official(), |_| std::ops::ControlFlow::Continue(()))?;
//! println!("{}", doc.markdown());
//! # Ok(()) }
//! ```
//!
//! - [`OcrOptions`]: everything a request can set; [`OcrOptions::official()`] is the one home
//!   of the official scripts' defaults.
//! - [`Ocr::run_file`]: the document loop (an image, or a PDF page by page, with the optional
//!   base-mode retry), reporting [`Event`]s to a callback; nothing is printed or written.
//! - [`Engine`]: one worker thread that owns the model and runs queued [`Job`]s (what the
//!   server submits to), with cancellation, deadlines and a bounded queue.
//! - [`hub`]: a local model folder or `owner/name[@revision]` through the Hugging Face cache.
//! - [`inputs`]: folders expanded into image and PDF files.
//!
//! The model itself is [`model`] (`dsocr-model`); the output files and the page rendering are
//! [`render`] (`dsocr-render`); image loading and prompts are [`input`] (`dsocr-input`).

mod document;
pub mod engine;
mod error;
pub mod hub;
pub mod inputs;
mod options;
mod scheduler;

use std::path::Path;

pub use dsocr_input as input;
pub use dsocr_model as model;
pub use dsocr_render as render;

pub use document::{DocumentResult, Event, Ocr, OtherRun, PageResult, Source};
pub use dsocr_input::{Mode, RgbImage, Task};
pub use dsocr_model::{Backend, ExpertDispatch, FinishReason, LoadOptions, Precision, Quant};
pub use engine::{Engine, EngineOptions, EngineStats, Job, SubmitError, Ticket};
pub use error::OcrError;
pub use hub::{DownloadEvent, ModelSource};
pub use options::{NgramRule, OcrOptions, PageSelection, PromptChoice, RepeatGuardPolicy};

/// Load options for a backend and precision given by name (`cpu`, `ndarray`, `wgpu`, `cuda`;
/// `f32`, `f16`, `bf16`): `None` picks the fastest backend compiled in and its fast precision
/// (bf16 on CUDA, f16 on WGPU, f32 on the CPU).
pub fn choose_backend(device: Option<&str>, precision: Option<&str>) -> Result<LoadOptions, OcrError> {
    let compiled = Backend::compiled();
    let backend = match device {
        Some(name) => {
            let backend: Backend = name.parse().map_err(|e| OcrError::Backend(format!("{e}")))?;
            if !backend.is_compiled() {
                let names: Vec<&str> = compiled.iter().map(|b| b.name()).collect();
                return Err(OcrError::Backend(format!(
                    "--device {name}: this dsocr was built without the {backend} backend (compiled in: {}); \
                     rebuild with `--features {}`",
                    names.join(", "),
                    backend.feature()
                )));
            }
            backend
        }
        None => *compiled
            .first()
            .ok_or_else(|| OcrError::Backend("this dsocr was built without any backend".to_string()))?,
    };
    let precision = match precision {
        Some(p) => p.parse().map_err(OcrError::Backend)?,
        None => backend.fast_precision(),
    };
    Ok(LoadOptions::new(backend, precision))
}

impl Ocr {
    /// Loads `model`: a local model folder, or a Hugging Face repo id `owner/name[@revision]`
    /// (downloaded into the cache on first use, progress reported to `on_download`).
    pub fn load(model: &str, options: &LoadOptions, on_download: impl FnMut(DownloadEvent)) -> Result<Self, OcrError> {
        let dir = hub::resolve_model(&ModelSource::parse(model)?, on_download)?;
        Self::load_dir(&dir, options)
    }

    /// Loads a model folder (`config.json`, `tokenizer.json`, safetensors weights).
    pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Self, OcrError> {
        let model = model::DeepseekOcr::load(dir, options)
            .map_err(|source| OcrError::Load { dir: dir.to_path_buf(), source: Box::new(source) })?;
        Ok(Self::new(model))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_must_be_compiled() {
        let options = choose_backend(None, None).unwrap();
        assert!(options.backend.is_compiled());
        assert_eq!(options.precision, options.backend.fast_precision());
        assert!(choose_backend(Some("nonsense"), None).is_err());
        assert!(choose_backend(None, Some("f8")).is_err());
    }
}
