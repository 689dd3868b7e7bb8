//! Everything before the model: the user's inputs up to the model's tensors, for DeepSeek-OCR
//! (spec §3 and §4). No Burn dependency.
//!
//! - [`image_io`]: load an image file like `PIL.Image.open` + `ImageOps.exif_transpose` +
//!   `convert("RGB")`, with a decompression-bomb guard and typed errors naming the file;
//! - [`pdf`]: native PDF rasterisation at 144 DPI (pure Rust, `hayro`), MuPDF page sizes;
//! - [`resize`]: Pillow's bicubic resize, bit-exact;
//! - [`preprocess`]: the global view (stretch or `ImageOps.pad`) and Gundam's dynamic tiles,
//!   the image-token count N, and pixel normalisation;
//! - [`tokenizer`]: `tokenizer.json` with special tokens looked up by string, and a streaming
//!   decoder that only emits complete UTF-8;
//! - [`prompt`]: the task prompts and the prefill id sequence (`BOS`, text, N × `<image>`, text).
//!
//! ```no_run
//! use dsocr_input::{build_input_ids, load_image, preprocess, Mode, PromptTokenizer, Task};
//! # fn main() -> Result<(), dsocr_input::PromptError> {
//! let image = load_image("page.png".as_ref())?;
//! let prepared = preprocess(&image, Mode::Gundam)?;
//! let tokenizer = PromptTokenizer::from_file("tokenizer.json")?;
//! let ids = build_input_ids(&tokenizer, &Task::Markdown.prompt(), Some(prepared.image_token_count()))?;
//! let global = dsocr_input::normalize(&prepared.global); // [3, 1024, 1024]
//! let tiles = dsocr_input::normalize_batch(&prepared.tiles); // [P, 3, 640, 640]
//! # Ok(()) }
//! ```

mod error;
pub mod image_io;
pub mod pdf;
pub mod preprocess;
pub mod prompt;
pub mod resize;
pub mod tokenizer;

pub use error::{panic_message, PromptError, Result};
pub use image::RgbImage;
pub use image_io::{
    load_image, load_image_from_memory, load_image_from_memory_with, load_image_with, LoadOptions, DEFAULT_MAX_PIXELS,
};
pub use pdf::{page_count, render_pdf, PageError, PdfDocument, PdfError, RenderedPage, DEFAULT_DPI};
pub use preprocess::{
    candidate_grids, choose_grid, normalize, normalize_batch, pad_geometry, pad_to_square, preprocess,
    preprocess_with_max_tiles, query_grid, round_half_even, tile_grid, Mode, PreparedImage, DEFAULT_MAX_TILES,
    MIN_TILES, PAD_COLOR, TILE_SIZE,
};
pub use prompt::{build_input_ids, PromptIds, Task};
pub use resize::resize_bicubic;
pub use tokenizer::{PromptTokenizer, StreamDecoder};
