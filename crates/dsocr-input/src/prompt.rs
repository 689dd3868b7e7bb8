//! Task prompts (spec §4.4) and the token sequence the decoder is prefilled with (spec §4.2–§4.3).

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::error::{PromptError, Result};
use crate::tokenizer::{PromptTokenizer, IMAGE_TOKEN};

/// The documented tasks; each maps to the completion-style prompt the model was trained on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Task {
    /// Document → markdown with layout boxes.
    Markdown,
    /// OCR of any image, with boxes.
    Ocr,
    /// OCR without layout.
    Free,
    /// Deep parsing of a figure (chart, chemical structure, geometry) cropped from a document.
    Figure,
    /// General image description.
    Describe,
    /// Referring / grounding: find the given text or object and return its boxes.
    Locate(String),
}

impl Task {
    /// The prompt string (with the `<image>` placeholder; `\n` is a real newline).
    pub fn prompt(&self) -> String {
        match self {
            Task::Markdown => "<image>\n<|grounding|>Convert the document to markdown.".to_string(),
            Task::Ocr => "<image>\n<|grounding|>OCR this image.".to_string(),
            Task::Free => "<image>\nFree OCR.".to_string(),
            Task::Figure => "<image>\nParse the figure.".to_string(),
            Task::Describe => "<image>\nDescribe this image in detail.".to_string(),
            Task::Locate(text) => format!("<image>\nLocate <|ref|>{text}<|/ref|> in the image."),
        }
    }

    /// Whether the output contains `<|ref|>…<|/ref|><|det|>[[x1, y1, x2, y2], …]<|/det|>` blocks
    /// (grounding prompts and Locate).
    pub fn uses_grounding(&self) -> bool {
        matches!(self, Task::Markdown | Task::Ocr | Task::Locate(_))
    }
}

impl fmt::Display for Task {
    /// The form [`FromStr`] accepts: `markdown`, `ocr`, `free`, `figure`, `describe`,
    /// `locate:<text>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Task::Markdown => f.write_str("markdown"),
            Task::Ocr => f.write_str("ocr"),
            Task::Free => f.write_str("free"),
            Task::Figure => f.write_str("figure"),
            Task::Describe => f.write_str("describe"),
            Task::Locate(text) => write!(f, "locate:{text}"),
        }
    }
}

impl FromStr for Task {
    type Err = PromptError;

    /// Parses `markdown|ocr|free|figure|describe|locate:<text>` (keywords ASCII
    /// case-insensitive; the text after `locate:` is taken verbatim and must not be empty).
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || PromptError::InvalidTask { value: s.to_string() };
        if let Some((keyword, text)) = s.split_once(':') {
            if keyword.trim().eq_ignore_ascii_case("locate") && !text.trim().is_empty() {
                return Ok(Task::Locate(text.to_string()));
            }
            return Err(invalid());
        }
        match s.trim().to_ascii_lowercase().as_str() {
            "markdown" => Ok(Task::Markdown),
            "ocr" => Ok(Task::Ocr),
            "free" => Ok(Task::Free),
            "figure" => Ok(Task::Figure),
            "describe" => Ok(Task::Describe),
            _ => Err(invalid()),
        }
    }
}

/// The prefill sequence: token ids and where the image placeholders are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptIds {
    /// BOS, the text before `<image>`, N × the `<image>` id, the text after.
    pub ids: Vec<u32>,
    /// Positions of the N image placeholders in `ids` (`None` for a text-only prompt); the
    /// vision embeddings are written there in order.
    pub image_range: Option<Range<usize>>,
}

impl PromptIds {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// HF `images_seq_mask`: true exactly at the image placeholder positions.
    pub fn image_mask(&self) -> Vec<bool> {
        let mut mask = vec![false; self.ids.len()];
        if let Some(range) = &self.image_range {
            mask[range.clone()].fill(true);
        }
        mask
    }
}

/// Python's `str.strip()` whitespace: Unicode White_Space plus the ASCII separators
/// U+001C..U+001F, which Python also counts.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Builds the prefill ids (spec §4.3): the prompt is stripped of surrounding whitespace (HF
/// `plain` template), split on `<image>`, and assembled as
/// `[BOS] + enc(before) + [image_id] * image_tokens + enc(after)`; no EOS, no roles.
///
/// `image_tokens` is N of the image ([`PreparedImage::image_token_count`]), or `None` for a
/// text-only prompt. Exactly one image per prompt: more than one `<image>` is an error, and so
/// is an image without a placeholder or a placeholder without an image.
///
/// [`PreparedImage::image_token_count`]: crate::PreparedImage::image_token_count
pub fn build_input_ids(tokenizer: &PromptTokenizer, prompt: &str, image_tokens: Option<usize>) -> Result<PromptIds> {
    let prompt = prompt.trim_matches(is_python_whitespace);
    let parts: Vec<&str> = prompt.split(IMAGE_TOKEN).collect();
    let placeholders = parts.len() - 1;
    if placeholders > 1 {
        return Err(PromptError::TooManyImagePlaceholders { count: placeholders });
    }

    let mut ids = vec![tokenizer.bos_id()?];
    let image_range = match (image_tokens, placeholders) {
        (Some(n), 1) => {
            let image_id = tokenizer.image_token_id()?;
            ids.extend(tokenizer.encode_text(parts[0])?);
            let start = ids.len();
            ids.extend(std::iter::repeat_n(image_id, n));
            ids.extend(tokenizer.encode_text(parts[1])?);
            Some(start..start + n)
        }
        (None, 0) => {
            ids.extend(tokenizer.encode_text(parts[0])?);
            None
        }
        (Some(_), _) => return Err(PromptError::MissingImagePlaceholder),
        (None, _) => return Err(PromptError::UnexpectedImagePlaceholder),
    };
    Ok(PromptIds { ids, image_range })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_prompts() {
        assert_eq!(Task::Markdown.prompt(), "<image>\n<|grounding|>Convert the document to markdown.");
        assert_eq!(Task::Ocr.prompt(), "<image>\n<|grounding|>OCR this image.");
        assert_eq!(Task::Free.prompt(), "<image>\nFree OCR.");
        assert_eq!(Task::Figure.prompt(), "<image>\nParse the figure.");
        assert_eq!(Task::Describe.prompt(), "<image>\nDescribe this image in detail.");
        assert_eq!(
            Task::Locate("the red car".into()).prompt(),
            "<image>\nLocate <|ref|>the red car<|/ref|> in the image."
        );
        assert!(Task::Markdown.uses_grounding());
        assert!(Task::Ocr.uses_grounding());
        assert!(Task::Locate("x".into()).uses_grounding());
        assert!(!Task::Free.uses_grounding());
        assert!(!Task::Figure.uses_grounding());
        assert!(!Task::Describe.uses_grounding());
    }

    #[test]
    fn task_parsing() {
        for task in [Task::Markdown, Task::Ocr, Task::Free, Task::Figure, Task::Describe, Task::Locate("a: b".into())] {
            assert_eq!(task.to_string().parse::<Task>().unwrap(), task);
        }
        assert_eq!("OCR".parse::<Task>().unwrap(), Task::Ocr);
        assert_eq!("locate:the title".parse::<Task>().unwrap(), Task::Locate("the title".into()));
        for bad in ["", "markdown2", "locate", "locate:", "locate:  ", "free:x"] {
            assert!(matches!(bad.parse::<Task>(), Err(PromptError::InvalidTask { .. })), "{bad:?}");
        }
    }

    #[test]
    fn python_strip() {
        let s = " \t\n\u{1f}\u{3000}text \u{a0}\u{2028}";
        assert_eq!(s.trim_matches(is_python_whitespace), "text");
        assert_eq!("\u{200b}x".trim_matches(is_python_whitespace), "\u{200b}x");
    }
}
