//! Parsing of grounding output (spec §8.1).
//!
//! With `<|grounding|>` prompts the model interleaves blocks
//! `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>` and their content. Matches are
//! found like upstream's `re.findall(r'(<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>)', text,
//! re.DOTALL)` (leftmost-first, non-greedy: the `regex` crate gives the same matches as Python
//! here). A match whose whole text contains `<|ref|>image<|/ref|>` is an *image match*
//! (upstream's classification, used for figure links and crops alike).
//!
//! The box list is parsed as a nested list of numbers instead of Python `eval`:
//! - `[[x1, y1, x2, y2], ...]` (round brackets and trailing commas accepted, as `eval` would);
//! - a flat `[x1, y1, x2, y2]` is accepted as one box (upstream would skip the whole block);
//! - an inner entry that is not 4 numbers is skipped with a warning (upstream skips the rest
//!   of the block); text that is not a list at all gives a block without boxes and a warning;
//! - coordinates are clamped to 0..=999 (with a warning) and truncated to integers.
//!
//! Nothing here is fatal: a block whose boxes are unusable is kept (label and text) with an
//! empty box list.

use std::ops::Range;
use std::sync::OnceLock;

use regex::Regex;

/// Opening of a grounding tag; the text of a block ends where the next match starts.
pub const REF_OPEN: &str = "<|ref|>";
/// The marker that makes a match an image match (upstream: `'<|ref|>image<|/ref|>' in match`).
pub const IMAGE_MARKER: &str = "<|ref|>image<|/ref|>";
/// Largest normalised coordinate (the model's 1000 bins are 0..=999; upstream divides by 999).
pub const MAX_COORD: u32 = 999;

/// One `<|ref|>..<|/ref|><|det|>..<|/det|>` occurrence in the raw output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagMatch {
    /// Byte range of the whole match.
    pub span: Range<usize>,
    /// Byte range of the label (group 2).
    pub label: Range<usize>,
    /// Byte range of the box list text (group 3).
    pub det: Range<usize>,
    /// Upstream's image classification of the match.
    pub is_image: bool,
}

fn tag_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        #[allow(clippy::unwrap_used)] // constant pattern, covered by tests
        Regex::new(r"(?s)<\|ref\|>(.*?)<\|/ref\|><\|det\|>(.*?)<\|/det\|>").unwrap()
    })
}

/// All grounding tag matches of `text`, in order.
pub fn find_tags(text: &str) -> Vec<TagMatch> {
    tag_regex()
        .captures_iter(text)
        .filter_map(|c| {
            let (whole, label, det) = (c.get(0)?, c.get(1)?, c.get(2)?);
            Some(TagMatch {
                span: whole.range(),
                label: label.range(),
                det: det.range(),
                is_image: whole.as_str().contains(IMAGE_MARKER),
            })
        })
        .collect()
}

/// One grounded block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Reading order: index of the match in the output (0-based).
    pub order: usize,
    /// The label as emitted (`text`, `title`, `image`, `table`, ...).
    pub label: String,
    /// Boxes `[x1, y1, x2, y2]` normalised to 0..=999 on the original image.
    pub boxes: Vec<[u32; 4]>,
    /// The content after the `<|/det|>` tag up to the next match (or the end), whitespace-trimmed.
    pub text: String,
    /// Byte range of `text` in the parsed string.
    pub text_span: Range<usize>,
    /// Byte range of the whole tag match in the parsed string.
    pub tag_span: Range<usize>,
    /// Image index `k` (0-based count of image matches before and including this one) when
    /// this is an image match; the markdown link and the crop file use it.
    pub image_index: Option<usize>,
}

impl Block {
    /// Whether upstream draws this block's boxes with the thick outline.
    pub fn is_title(&self) -> bool {
        self.label == "title"
    }

    /// The boxes in pixels of a `width × height` image (see [`pixel_box`]).
    pub fn pixel_boxes(&self, width: u32, height: u32) -> Vec<[u32; 4]> {
        self.boxes.iter().map(|b| pixel_box(*b, width, height)).collect()
    }
}

/// Maps a normalised box to pixels exactly like upstream: `X = int(x / 999 * W)` in double
/// precision (truncation). So 0 maps to 0 and 999 maps to `W` (`H`): the right/bottom edge is
/// exclusive, as in PIL's `crop((x1, y1, x2, y2))`, and a box `[0, 0, 999, 999]` crops the whole
/// image.
pub fn pixel_box(b: [u32; 4], width: u32, height: u32) -> [u32; 4] {
    let map = |v: u32, size: u32| (v as f64 / 999.0 * size as f64) as u32;
    [map(b[0], width), map(b[1], height), map(b[2], width), map(b[3], height)]
}

/// A non-fatal problem in a block's box list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroundingWarning {
    /// [`Block::order`] of the block concerned.
    pub order: usize,
    pub label: String,
    pub message: String,
}

impl std::fmt::Display for GroundingWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "block {} ({}): {}", self.order, self.label, self.message)
    }
}

/// The parsed blocks of one output, plus warnings about unusable box lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grounding {
    pub blocks: Vec<Block>,
    pub warnings: Vec<GroundingWarning>,
}

/// Parses all grounding blocks of `text` (pass the output with the EOS string removed, see
/// [`crate::markdown::strip_eos`], or it ends up in the last block's text).
pub fn parse_grounding(text: &str) -> Grounding {
    let tags = find_tags(text);
    let mut out = Grounding::default();
    let mut image_count = 0;
    for (order, tag) in tags.iter().enumerate() {
        let label = text[tag.label.clone()].to_string();
        let (boxes, problems) = parse_box_list(&text[tag.det.clone()]);
        out.warnings.extend(problems.into_iter().map(|message| GroundingWarning {
            order,
            label: label.clone(),
            message,
        }));

        let end = tags.get(order + 1).map_or(text.len(), |next| next.span.start);
        let text_span = trim_span(text, tag.span.end..end);
        let image_index = tag.is_image.then(|| {
            image_count += 1;
            image_count - 1
        });
        out.blocks.push(Block {
            order,
            label,
            boxes,
            text: text[text_span.clone()].to_string(),
            text_span,
            tag_span: tag.span.clone(),
            image_index,
        });
    }
    out
}

fn trim_span(text: &str, span: Range<usize>) -> Range<usize> {
    let s = &text[span.clone()];
    let start = span.start + (s.len() - s.trim_start().len());
    let end = span.end - (s.len() - s.trim_end().len());
    if start >= end {
        start..start
    } else {
        start..end
    }
}

/// Parses a box list (see the module docs). Returns the boxes and warning messages.
pub fn parse_box_list(s: &str) -> (Vec<[u32; 4]>, Vec<String>) {
    let mut warnings = Vec::new();
    let value = match ListParser::new(s).parse_document() {
        Ok(v) => v,
        Err(e) => {
            warnings.push(format!("box list {:?} is not a list of numbers ({e}); no boxes", abbreviate(s)));
            return (Vec::new(), warnings);
        }
    };
    let Value::List(items) = value else {
        warnings.push(format!("box list {:?} is a single number, not a list; no boxes", abbreviate(s)));
        return (Vec::new(), warnings);
    };

    let mut boxes = Vec::new();
    if items.len() == 4 && items.iter().all(|v| matches!(v, Value::Num(_))) {
        // Flat `[x1, y1, x2, y2]`: one box.
        if let Some(b) = to_box(&items, &mut warnings) {
            boxes.push(b);
        }
        return (boxes, warnings);
    }
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::List(coords) if coords.len() == 4 && coords.iter().all(|v| matches!(v, Value::Num(_))) => {
                if let Some(b) = to_box(coords, &mut warnings) {
                    boxes.push(b);
                }
            }
            _ => warnings.push(format!("box {i} of {:?} is not 4 numbers; skipped", abbreviate(s))),
        }
    }
    (boxes, warnings)
}

fn to_box(coords: &[Value], warnings: &mut Vec<String>) -> Option<[u32; 4]> {
    let mut b = [0u32; 4];
    let mut clamped = false;
    for (slot, v) in b.iter_mut().zip(coords) {
        let Value::Num(x) = v else { return None };
        let c = x.clamp(0.0, MAX_COORD as f64);
        clamped |= c != *x;
        *slot = c as u32; // truncation toward zero, like int()
    }
    if clamped {
        warnings.push(format!("coordinates {coords:?} clamped to 0..=999"));
    }
    Some(b)
}

fn abbreviate(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Num(f64),
    List(Vec<Value>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Num(x) => write!(f, "{x}"),
            Value::List(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
        }
    }
}

/// A recursive-descent parser for Python-literal-like nested lists of numbers.
struct ListParser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 16;

impl<'a> ListParser<'a> {
    fn new(s: &'a str) -> Self {
        Self { s: s.as_bytes(), pos: 0, depth: 0 }
    }

    fn parse_document(mut self) -> Result<Value, String> {
        let v = self.value()?;
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(format!("unexpected text at byte {}", self.pos));
        }
        Ok(v)
    }

    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn value(&mut self) -> Result<Value, String> {
        self.skip_ws();
        match self.peek() {
            Some(open @ (b'[' | b'(')) => {
                let close = if open == b'[' { b']' } else { b')' };
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err("nested too deeply".into());
                }
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value()?);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(c) if c == close => {
                            self.pos += 1;
                            break;
                        }
                        Some(c) => return Err(format!("unexpected {:?} at byte {}", c as char, self.pos)),
                        None => return Err("unterminated list".into()),
                    }
                }
                self.depth -= 1;
                Ok(Value::List(items))
            }
            Some(c) if c == b'-' || c == b'+' || c == b'.' || c.is_ascii_digit() => self.number(),
            Some(c) => Err(format!("unexpected {:?} at byte {}", c as char, self.pos)),
            None => Err("empty".into()),
        }
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            let sign_after_exp =
                (c == b'-' || c == b'+') && self.pos > start && matches!(self.s[self.pos - 1], b'e' | b'E');
            if c.is_ascii_digit()
                || c == b'.'
                || c == b'e'
                || c == b'E'
                || c == b'_'
                || sign_after_exp
                || (self.pos == start && (c == b'-' || c == b'+'))
            {
                self.pos += 1;
            } else {
                break;
            }
        }
        let text: String = String::from_utf8_lossy(&self.s[start..self.pos]).replace('_', "");
        text.parse::<f64>().ok().filter(|x| !x.is_nan()).map(Value::Num).ok_or_else(|| format!("bad number {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_list_forms() {
        assert_eq!(parse_box_list("[[1, 2, 3, 4]]"), (vec![[1, 2, 3, 4]], vec![]));
        assert_eq!(parse_box_list(" [[1,2,3,4], [5, 6, 7, 8],] ").0, vec![[1, 2, 3, 4], [5, 6, 7, 8]]);
        assert_eq!(parse_box_list("[(1, 2, 3, 4)]").0, vec![[1, 2, 3, 4]]);
        assert_eq!(parse_box_list("[1, 2, 3, 4]").0, vec![[1, 2, 3, 4]]);
        assert_eq!(parse_box_list("[]"), (vec![], vec![]));
        // Floats truncate, out-of-range values clamp (with a warning).
        let (b, w) = parse_box_list("[[10.9, -5, 1200, 999]]");
        assert_eq!(b, vec![[10, 0, 999, 999]]);
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn malformed_box_lists_warn() {
        for bad in ["", "[[1, 2, 3, 4]", "[[1, 2, x, 4]]", "[[1, 2, 3, 4]] junk", "7", "[[1,2,3]]", "[[1,2,3,4,5]]"] {
            let (boxes, warnings) = parse_box_list(bad);
            assert!(boxes.is_empty(), "{bad:?} gave {boxes:?}");
            assert!(!warnings.is_empty(), "{bad:?} gave no warning");
        }
        // A bad entry next to good ones: only the bad one is dropped.
        let (boxes, warnings) = parse_box_list("[[1, 2, 3, 4], [5, 6], [7, 8, 9, 10]]");
        assert_eq!(boxes, vec![[1, 2, 3, 4], [7, 8, 9, 10]]);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn pixel_box_edges() {
        // trunc(v / 999 * W): 0 -> 0, 999 -> W (exclusive edge), 500 -> trunc(500.5005) = 500.
        assert_eq!(pixel_box([0, 0, 999, 999], 1000, 700), [0, 0, 1000, 700]);
        assert_eq!(pixel_box([500, 1, 998, 998], 1000, 700), [500, 0, 998, 699]);
        // Double rounding as in Python: int(63 / 999 * 111) == 6 although 63 * 111 / 999 == 7
        // exactly; int(1 / 999 * 999) == 1.
        assert_eq!(pixel_box([63, 1, 1, 0], 111, 999), [6, 1, 0, 0]);
    }

    #[test]
    fn non_greedy_dotall_matching() {
        let t = "<|ref|>a\nb<|/ref|><|det|>[[1,\n2,3,4]]<|/det|>x<|ref|>image<|/ref|><|det|>[[0,0,9,9]]<|/det|>";
        let tags = find_tags(t);
        assert_eq!(tags.len(), 2);
        assert_eq!(&t[tags[0].label.clone()], "a\nb");
        assert_eq!(&t[tags[0].det.clone()], "[[1,\n2,3,4]]");
        assert!(!tags[0].is_image && tags[1].is_image);
    }
}
