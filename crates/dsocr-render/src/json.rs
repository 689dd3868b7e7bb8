//! The `<name>.json` model: document → pages → blocks (serde).
//!
//! ```json
//! {
//!   "name": "scan", "source": "in/scan.pdf", "kind": "pdf", "dpi": 144.0, "finished": true,
//!   "pages": [{
//!     "page": 1, "width": 1224, "height": 1584,
//!     "finish_reason": "stop", "complete": true,
//!     "prompt_tokens": 913, "generated_tokens": 412,
//!     "markdown": "...",
//!     "blocks": [{
//!       "order": 0, "label": "title",
//!       "boxes": [[100, 50, 900, 90]], "pixel_boxes": [[122, 79, 1102, 142]],
//!       "text": "# Heading", "text_span": [60, 69]
//!     }]
//!   }]
//! }
//! ```
//! `page` is 1-based; `boxes` are the model's 0..=999 coordinates, `pixel_boxes` the same
//! mapped to the original image (for PDFs the rendered page) by `trunc(v / 999 · W)`;
//! `text_span` is the byte range of `text` in the page's raw output (the `_det.mmd` page text);
//! `figure` is the crop file of an image block (relative to the output folder). A page that did
//! not end with EOS is kept with `complete: false` and its `finish_reason` (`length`,
//! `repetition`, `cancelled`); a page that failed before generation has `error` and no blocks.

use serde::{Deserialize, Serialize};

use crate::grounding::Block;

/// Why generation of a page stopped: the decoder's type, serialised as `stop`, `length`,
/// `repetition`, `cancelled`.
pub use dsocr_decoder::FinishReason;

/// Input kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKindJson {
    Image,
    Pdf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentJson {
    /// The output name (file stem used for all files of this input).
    pub name: String,
    /// The input as given by the caller, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub kind: DocumentKindJson,
    /// Rasterisation resolution of PDF pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpi: Option<f32>,
    /// In files written by [`crate::DocumentWriter`]: `true` once every page of the input is
    /// in, `false` in the checkpoints of a document still running (or interrupted). What
    /// `dsocr ocr --skip-existing` reads. Absent elsewhere (stdout, the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<bool>,
    pub pages: Vec<PageJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageJson {
    /// 1-based page number (1 for a single image).
    pub page: usize,
    /// Size of the image the boxes refer to (0 for a failed page).
    pub width: u32,
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// True when generation ended with EOS.
    pub complete: bool,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The cleaned markdown of this page.
    pub markdown: String,
    pub blocks: Vec<BlockJson>,
    /// Non-fatal problems (malformed box lists, empty crops, renderer warnings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Why the page has no result (render failure and the like).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PageJson {
    /// The entry of a page that could not be rendered or run: only its number and the error.
    pub fn failed(page: usize, error: String) -> Self {
        Self {
            page,
            width: 0,
            height: 0,
            finish_reason: None,
            complete: false,
            prompt_tokens: 0,
            generated_tokens: 0,
            markdown: String::new(),
            blocks: Vec::new(),
            warnings: Vec::new(),
            error: Some(error),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockJson {
    /// Reading order (index of the block in the output).
    pub order: usize,
    pub label: String,
    /// Normalised 0..=999 boxes `[x1, y1, x2, y2]`.
    pub boxes: Vec<[u32; 4]>,
    /// Pixel boxes on the original image, `trunc(v / 999 · W)` (x2, y2 exclusive).
    pub pixel_boxes: Vec<[u32; 4]>,
    pub text: String,
    /// Byte range `[start, end)` of `text` in the page's raw output.
    pub text_span: [usize; 2],
    /// Figure crop (first box) of an image block, relative to the output folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figure: Option<String>,
}

impl BlockJson {
    /// The JSON view of `block` on a `width × height` image; `figure` as written by the caller.
    pub fn from_block(block: &Block, width: u32, height: u32, figure: Option<String>) -> Self {
        Self {
            order: block.order,
            label: block.label.clone(),
            boxes: block.boxes.clone(),
            pixel_boxes: block.pixel_boxes(width, height),
            text: block.text.clone(),
            text_span: [block.text_span.start, block.text_span.end],
            figure,
        }
    }
}
