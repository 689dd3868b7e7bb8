//! What a request can set, and the one home of the official defaults.
//!
//! [`OcrOptions::official()`] is what the official DeepSeek-OCR scripts do: the Gundam mode with
//! at most 6 tiles, 8,192 new tokens, the repeat guard of the image script (n-gram 30 over a
//! window of 90 tokens) and of the PDF script (20 over 50), `<td>`/`</td>` never banned, PDF
//! pages at 144 DPI. Front ends start from it and override what their user set (the CLI maps
//! its flags onto it, the server its JSON); nothing else in dsocr spells these numbers.

use std::fmt;
use std::str::FromStr;

use dsocr_input::{Mode, Task};
use dsocr_input::{DEFAULT_DPI, DEFAULT_MAX_PIXELS};

/// An n-gram repeat rule: an id that would complete an `n`-gram already seen in the last
/// `window` generated tokens is banned (upstream's `NoRepeatNGramLogitsProcessor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramRule {
    pub n: usize,
    pub window: usize,
}

/// The repeat guard of a request: one rule for single images, one for PDF pages (`None`: off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepeatGuardPolicy {
    pub image: Option<NgramRule>,
    pub pdf_page: Option<NgramRule>,
    /// Tokens the guard never bans, looked up by their text in the model's tokenizer (a token
    /// the tokenizer lacks is skipped and reported once per document).
    pub whitelist: Vec<String>,
}

impl RepeatGuardPolicy {
    /// The official scripts' rules: 30/90 for images, 20/50 for PDF pages, `<td>`/`</td>` exempt.
    pub fn official() -> Self {
        Self {
            image: Some(NgramRule { n: 30, window: 90 }),
            pdf_page: Some(NgramRule { n: 20, window: 50 }),
            whitelist: vec!["<td>".to_string(), "</td>".to_string()],
        }
    }

    /// No guard at all.
    pub fn off() -> Self {
        Self { image: None, pdf_page: None, whitelist: Vec::new() }
    }

    /// The official rules with `n` and/or `window` replaced in both.
    pub fn official_with(n: Option<usize>, window: Option<usize>) -> Self {
        let mut policy = Self::official();
        for rule in [&mut policy.image, &mut policy.pdf_page].into_iter().flatten() {
            rule.n = n.unwrap_or(rule.n);
            rule.window = window.unwrap_or(rule.window);
        }
        policy
    }

    /// The rule for a page of this kind.
    pub fn rule(&self, pdf_page: bool) -> Option<NgramRule> {
        if pdf_page {
            self.pdf_page
        } else {
            self.image
        }
    }
}

/// What to ask the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptChoice {
    /// One of the documented tasks (its prompt is [`Task::prompt`]).
    Task(Task),
    /// A raw prompt with exactly one `<image>` ([`PromptChoice::raw`] checks it).
    Raw(String),
}

impl PromptChoice {
    /// A raw prompt, checked to hold `<image>` exactly once.
    pub fn raw(prompt: impl Into<String>) -> Result<Self, String> {
        let prompt = prompt.into();
        let count = prompt.matches("<image>").count();
        if count != 1 {
            return Err(format!("the prompt must contain `<image>` exactly once (it has {count})"));
        }
        Ok(PromptChoice::Raw(prompt))
    }

    /// The prompt text, `<image>` included.
    pub fn text(&self) -> String {
        match self {
            PromptChoice::Task(task) => task.prompt(),
            PromptChoice::Raw(raw) => raw.clone(),
        }
    }
}

/// Which pages of a PDF to run: 1-based pages and ranges, `1-3,5,8-` (`8-`: page 8 to the end).
/// Pages run in document order, each once. Images have one page: a selection must include 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSelection {
    /// Inclusive ranges; `None` as the end: to the last page.
    ranges: Vec<(usize, Option<usize>)>,
}

impl PageSelection {
    /// The selected 1-based pages of a document of `count` pages, in order. A page named
    /// explicitly past the end is an error (an open range only reaches the end).
    pub fn pages(&self, count: usize) -> Result<Vec<usize>, String> {
        let mut pages = Vec::new();
        for &(start, end) in &self.ranges {
            let last = match end {
                Some(end) if end > count => {
                    return Err(format!("page {end} does not exist (the document has {count} pages)"));
                }
                Some(end) => end,
                None if start > count => {
                    return Err(format!("page {start} does not exist (the document has {count} pages)"));
                }
                None => count,
            };
            pages.extend(start..=last);
        }
        pages.sort_unstable();
        pages.dedup();
        Ok(pages)
    }
}

impl FromStr for PageSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |part: &str| format!("invalid page selection `{part}` (expected pages and ranges like 1-3,5,8-)");
        let page = |v: &str, part: &str| match v.trim().parse::<usize>() {
            Ok(0) => Err(format!("invalid page selection `{part}`: pages are numbered from 1")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad(part)),
        };
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(bad(s));
            }
            let range = match part.split_once('-') {
                None => {
                    let n = page(part, part)?;
                    (n, Some(n))
                }
                Some((a, b)) if b.trim().is_empty() => (page(a, part)?, None),
                Some((a, b)) => {
                    let (a, b) = (page(a, part)?, page(b, part)?);
                    if b < a {
                        return Err(format!("invalid page selection `{part}`: the range ends before it starts"));
                    }
                    (a, Some(b))
                }
            };
            ranges.push(range);
        }
        Ok(Self { ranges })
    }
}

impl fmt::Display for PageSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|&(a, b)| match b {
                Some(b) if b == a => a.to_string(),
                Some(b) => format!("{a}-{b}"),
                None => format!("{a}-"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Everything one OCR request can set.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrOptions {
    pub prompt: PromptChoice,
    pub mode: Mode,
    /// Largest number of Gundam tiles (2..=9).
    pub max_crops: usize,
    /// Most tokens generated per page (also capped by the model's context).
    pub max_new_tokens: usize,
    pub repeat_guard: RepeatGuardPolicy,
    /// Run a page that ended without EOS (repeat loop or token limit) once more in base mode,
    /// keeping the retry when it ends with EOS.
    pub retry_in_base_mode: bool,
    /// Resolution at which PDF pages are rendered.
    pub pdf_dpi: f32,
    /// The id that ends generation; `None`: the model config's `eos_token_id`. (`dsocr bench`
    /// sets an id outside the vocabulary to force a fixed length.)
    pub eos_token_id: Option<u32>,
    /// The PDF pages to run (`None`: all).
    pub pages: Option<PageSelection>,
    /// Refuse a PDF with more pages than this (after the selection); `None`: no limit.
    pub max_pages: Option<usize>,
    /// Refuse images with more pixels than this, judged from the header before decoding
    /// (`None`: no limit). PDF pages are bounded by the renderer's own limit.
    pub max_image_pixels: Option<u64>,
}

impl OcrOptions {
    /// The official task: markdown with layout boxes.
    pub const OFFICIAL_TASK: Task = Task::Markdown;
    /// The official mode: Gundam (1024 global view + 640 tiles).
    pub const OFFICIAL_MODE: Mode = Mode::Gundam;

    /// The official scripts' settings (module docs): markdown task, Gundam, 6 tiles, 8,192
    /// tokens, the official repeat guards, no retry, 144 DPI; all pages, Pillow's
    /// decompression-bomb limit on image pixels.
    pub fn official() -> Self {
        Self {
            prompt: PromptChoice::Task(Self::OFFICIAL_TASK),
            mode: Self::OFFICIAL_MODE,
            max_crops: 6,
            max_new_tokens: 8192,
            repeat_guard: RepeatGuardPolicy::official(),
            retry_in_base_mode: false,
            pdf_dpi: DEFAULT_DPI,
            eos_token_id: None,
            pages: None,
            max_pages: None,
            max_image_pixels: Some(DEFAULT_MAX_PIXELS),
        }
    }

    /// Checks the values a caller can get wrong; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=9).contains(&self.max_crops) {
            return Err(format!("max_crops must be between 2 and 9 (got {})", self.max_crops));
        }
        if self.max_new_tokens == 0 {
            return Err("max_new_tokens must be at least 1".to_string());
        }
        if !(self.pdf_dpi.is_finite() && self.pdf_dpi > 0.0) {
            return Err(format!("the PDF dpi must be a positive number (got {})", self.pdf_dpi));
        }
        for rule in [self.repeat_guard.image, self.repeat_guard.pdf_page].into_iter().flatten() {
            if rule.n == 0 || rule.window == 0 {
                return Err(format!("repeat guard n-gram size and window must be at least 1 (got {rule:?})"));
            }
        }
        if let PromptChoice::Raw(raw) = &self.prompt {
            PromptChoice::raw(raw.clone())?;
        }
        if self.max_pages == Some(0) {
            return Err("max_pages must be at least 1".to_string());
        }
        Ok(())
    }
}

impl Default for OcrOptions {
    fn default() -> Self {
        Self::official()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_defaults_are_the_scripts_settings() {
        let o = OcrOptions::official();
        assert_eq!(o.prompt.text(), "<image>\n<|grounding|>Convert the document to markdown.");
        assert_eq!((o.mode, o.max_crops, o.max_new_tokens, o.pdf_dpi), (Mode::Gundam, 6, 8192, 144.0));
        assert_eq!(o.repeat_guard.rule(false), Some(NgramRule { n: 30, window: 90 }));
        assert_eq!(o.repeat_guard.rule(true), Some(NgramRule { n: 20, window: 50 }));
        assert_eq!(o.repeat_guard.whitelist, ["<td>", "</td>"]);
        assert!(!o.retry_in_base_mode && o.eos_token_id.is_none());
        assert!(o.validate().is_ok());
    }

    #[test]
    fn overrides_and_checks() {
        let p = RepeatGuardPolicy::official_with(Some(3), None);
        assert_eq!(
            (p.rule(false), p.rule(true)),
            (Some(NgramRule { n: 3, window: 90 }), Some(NgramRule { n: 3, window: 50 }))
        );
        assert_eq!(RepeatGuardPolicy::off().rule(false), None);
        assert!(PromptChoice::raw("Free OCR.").is_err());
        assert!(PromptChoice::raw("<image><image>").is_err());
        assert_eq!(PromptChoice::raw("<image>\nFree OCR.").unwrap().text(), "<image>\nFree OCR.");
        for bad in [
            OcrOptions { max_crops: 1, ..OcrOptions::official() },
            OcrOptions { max_new_tokens: 0, ..OcrOptions::official() },
            OcrOptions { pdf_dpi: f32::NAN, ..OcrOptions::official() },
            OcrOptions { repeat_guard: RepeatGuardPolicy::official_with(Some(0), None), ..OcrOptions::official() },
            OcrOptions { prompt: PromptChoice::Raw("no image".into()), ..OcrOptions::official() },
            OcrOptions { max_pages: Some(0), ..OcrOptions::official() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn page_selections() {
        let sel = |s: &str| s.parse::<PageSelection>();
        assert_eq!(sel("1-3,5,8-").unwrap().pages(10).unwrap(), [1, 2, 3, 5, 8, 9, 10]);
        assert_eq!(sel("5, 2-3 ,2").unwrap().pages(5).unwrap(), [2, 3, 5]);
        assert_eq!(sel("3-").unwrap().pages(3).unwrap(), [3]);
        assert_eq!(sel("1-3,5,8-").unwrap().to_string(), "1-3,5,8-");
        assert!(sel("4-").unwrap().pages(3).unwrap_err().contains("page 4 does not exist"));
        assert!(sel("2-9").unwrap().pages(3).unwrap_err().contains("page 9"));
        for bad in ["", "0", "3-1", "a", "1,,2", "-3", "1-2-3"] {
            assert!(sel(bad).is_err(), "{bad:?}");
        }
    }
}
