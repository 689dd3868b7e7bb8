//! Everything after the model: post-processing and document output of dsocr. Needs no model and
//! no device (its one dependency on the decoder is the shared `FinishReason` type).
//!
//! - [`grounding`]: parse `<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` blocks of
//!   the raw output into [`Block`]s (0..=999 boxes, pixel mapping `trunc(v / 999 · W)`).
//! - [`markdown`]: upstream's markdown cleaning (figure links, tag removal), EOS stripping,
//!   plain text.
//! - [`render_page`]: one page's raw output → markdown, plain text, blocks, warnings, without
//!   files; [`Document`] collects the pages of one input in memory.
//! - [`live`]: the [`LiveCleaner`] that hides grounding tags while the text is streamed.
//! - [`draw`]: the box overlay (deterministic colours, built-in bitmap font) and figure crops.
//! - [`json`]: the serde model of `<name>.json` (pages → blocks, finish reason, token counts).
//! - [`output`]: output names ([`safe_stem`]), atomic writes ([`write_atomic`]) and the
//!   per-input [`DocumentWriter`] that writes every file.
//!
//! Spec references are to `deepseek-ocr-spec.md` §7 (EOS) and §8
//! (post-processing); each module documents where it deliberately deviates from upstream.
//!
//! Typical use (single image):
//! ```no_run
//! use dsocr_render::{safe_stem, write_image_result, FinishReason, GeneratedPage, WriterOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let input = std::path::Path::new("scan.png");
//! let image = image::open(input)?.to_rgb8();
//! let raw = "<|ref|>title<|/ref|><|det|>[[10, 10, 500, 60]]<|/det|>\n# Hello";
//! let page = GeneratedPage {
//!     image: &image,
//!     raw,
//!     finish_reason: FinishReason::Stop,
//!     prompt_tokens: 300,
//!     generated_tokens: 20,
//! };
//! let files = write_image_result("out", &safe_stem(input), page, WriterOptions::default())?;
//! println!("{}", files.markdown.display());
//! # Ok(()) }
//! ```

pub mod draw;
mod font;
pub mod grounding;
pub mod json;
pub mod live;
pub mod markdown;
pub mod output;
mod page;

pub use grounding::{parse_grounding, pixel_box, Block, Grounding, GroundingWarning};
pub use json::{BlockJson, DocumentJson, DocumentKindJson, FinishReason, PageJson};
pub use live::LiveCleaner;
pub use markdown::{strip_eos, to_markdown, to_plain_text, EOS, PAGE_SPLIT};
pub use output::{
    safe_stem, sanitize_name, write_atomic, write_document, write_image_result, Document, DocumentKind, DocumentWriter,
    GeneratedPage, OutputError, PageInput, WriterOptions, WrittenFiles,
};
pub use page::{render_page, PageKind, PageOutput, PageStats};
