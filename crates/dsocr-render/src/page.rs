//! One page's raw output → everything a front end shows of it, without writing a file
//! (spec §8): markdown, plain text, grounding blocks and warnings. [`DocumentWriter`] calls
//! [`render_page`] and then writes crops and overlays; [`Document`] and a server call it and
//! keep the text. There is no second rendering path.
//!
//! [`DocumentWriter`]: crate::DocumentWriter
//! [`Document`]: crate::Document

use crate::grounding::{parse_grounding, Block};
use crate::json::{BlockJson, FinishReason, PageJson};
use crate::markdown::{strip_eos, to_markdown, to_plain_text};

/// What a page belongs to: a single image, or a page of a PDF (upstream collapses blank lines
/// in PDF markdown; figure files of PDF pages are named `<name>_<page>_<k>.jpg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Image,
    PdfPage,
}

/// A page rendered from its raw output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutput {
    /// The raw output with a trailing EOS removed (what `_det.mmd` holds).
    pub raw: String,
    /// Upstream's markdown cleaning, figures linked as `images/<figure_stem>_<k>.jpg`.
    pub markdown: String,
    /// Plain text (tags and figure links removed, blank lines collapsed).
    pub text: String,
    /// Grounding blocks in reading order, with the model's 0..=999 boxes.
    pub blocks: Vec<Block>,
    /// Problems met while parsing the grounding tags (malformed boxes, …).
    pub warnings: Vec<String>,
    /// Size of the image the boxes refer to.
    pub width: u32,
    pub height: u32,
}

/// Renders one page: `raw` is the decoded model output (special tokens kept), `size` the
/// pixel size of the image the boxes refer to (for PDFs the rendered page), `figure_stem` the
/// stem of its figure files.
pub fn render_page(raw: &str, size: (u32, u32), figure_stem: &str, kind: PageKind) -> PageOutput {
    let (raw, _) = strip_eos(raw);
    let grounding = parse_grounding(raw);
    PageOutput {
        raw: raw.to_string(),
        markdown: to_markdown(raw, figure_stem, kind == PageKind::PdfPage),
        text: to_plain_text(raw),
        blocks: grounding.blocks,
        warnings: grounding.warnings.iter().map(ToString::to_string).collect(),
        width: size.0,
        height: size.1,
    }
}

/// The generation facts of a page that the JSON records beside the rendered text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageStats {
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

impl PageOutput {
    /// The page's JSON entry (`page` is 1-based). `figures[i]`: the crop file of block `i`,
    /// when one was written (an empty slice: none).
    pub fn to_json(&self, page: usize, stats: PageStats, figures: &[Option<String>]) -> PageJson {
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| BlockJson::from_block(b, self.width, self.height, figures.get(i).cloned().flatten()))
            .collect();
        PageJson {
            page,
            width: self.width,
            height: self.height,
            finish_reason: Some(stats.finish_reason),
            complete: stats.finish_reason.is_complete(),
            prompt_tokens: stats.prompt_tokens,
            generated_tokens: stats.generated_tokens,
            markdown: self.markdown.clone(),
            blocks,
            warnings: self.warnings.clone(),
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 499]]<|/det|>\n# Title\n\n\
                       <|ref|>image<|/ref|><|det|>[[0, 500, 999, 999]]<|/det|>\n\n\n\ntail<｜end▁of▁sentence｜>";

    #[test]
    fn a_page_renders_to_markdown_text_and_blocks() {
        let page = render_page(RAW, (200, 100), "doc", PageKind::Image);
        assert!(page.raw.ends_with("tail"), "EOS removed: {:?}", page.raw);
        assert_eq!(page.markdown, "\n# Title\n\n![](images/doc_0.jpg)\n\n\n\n\ntail");
        assert_eq!(page.text, "# Title\n\ntail\n");
        assert_eq!(page.blocks.len(), 2);
        assert_eq!(page.blocks[1].label, "image");
        assert!(page.warnings.is_empty());

        // PDF pages collapse blank-line runs in the markdown (upstream's PDF script).
        let pdf = render_page(RAW, (200, 100), "doc_3", PageKind::PdfPage);
        assert!(pdf.markdown.contains("![](images/doc_3_0.jpg)"), "{:?}", pdf.markdown);
        assert!(!pdf.markdown.contains("\n\n\n"), "{:?}", pdf.markdown);

        let stats = PageStats { finish_reason: FinishReason::Length, prompt_tokens: 7, generated_tokens: 9 };
        let json = page.to_json(1, stats, &[None, Some("images/doc_0.jpg".into())]);
        assert!(!json.complete);
        assert_eq!(json.blocks[1].pixel_boxes, vec![[0, 50, 200, 100]]);
        assert_eq!(json.blocks[1].figure.as_deref(), Some("images/doc_0.jpg"));
        assert_eq!(json.blocks[0].figure, None);
    }
}
