//! Markdown cleaning (spec §8.2) and the plain-text rendering.
//!
//! [`to_markdown`] replays upstream's string operations in the same order:
//! 1. each image match (in match order, index `k`) is replaced, with `str.replace` semantics
//!    (every identical occurrence), by `![](images/<stem>_<k>.jpg)\n`;
//! 2. each other match is deleted, and inside that loop `\coloneqq` → `:=` and
//!    `\eqqcolon` → `=:`. As upstream, the two LaTeX rewrites therefore only happen when the
//!    output has at least one non-image match (spec pitfall 33) — deliberate parity, even if
//!    it looks accidental upstream.
//!
//! Deviations, all deliberate:
//! - figure links use `images/<stem>_<k>.jpg` (upstream `images/<k>.jpg`, PDF
//!   `images/<page>_<k>.jpg`), with `<stem>` chosen by the caller so that outputs of several
//!   inputs can share one `images/` folder;
//! - for PDFs, runs of 3 or more `\n` collapse to `\n\n` ([`collapse_blank_lines`]) whether or
//!   not a non-image match exists; upstream's `.replace('\n\n\n\n', '\n\n').replace('\n\n\n',
//!   '\n\n')` inside the non-image loop only partly collapses long runs;
//! - a trailing EOS string is removed first ([`strip_eos`]).

use crate::grounding::find_tags;

/// The EOS token's text (`<｜end▁of▁sentence｜>`, fullwidth bars and `▁`), as decoded with
/// special tokens kept.
pub const EOS: &str = "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>";

/// What the official PDF script appends to each page of both `.mmd` files:
/// `content + "\n" + "\n<--- Page Split --->" + "\n"`.
pub const PAGE_SPLIT: &str = "\n\n<--- Page Split --->\n";

/// Removes one trailing EOS string (trailing whitespace after it is tolerated and removed with
/// it). Returns the text before it and whether it was there (= the page finished normally).
pub fn strip_eos(raw: &str) -> (&str, bool) {
    match raw.trim_end().strip_suffix(EOS) {
        Some(before) => (before, true),
        None => (raw, false),
    }
}

/// The markdown link upstream puts in place of image match `k`, with our file naming.
pub fn figure_link(figure_stem: &str, k: usize) -> String {
    format!("![](images/{figure_stem}_{k}.jpg)\n")
}

/// Cleans raw grounding output into markdown (see the module docs). `figure_stem` names the
/// figure files: `images/<figure_stem>_<k>.jpg`. `collapse` turns on the PDF blank-line
/// collapsing.
pub fn to_markdown(raw: &str, figure_stem: &str, collapse: bool) -> String {
    clean(raw, Some(figure_stem), collapse)
}

/// Plain text for `--format txt`: like [`to_markdown`] but figures are dropped (image matches
/// deleted, no links) and blank-line runs are always collapsed; the result is trimmed and ends
/// with one newline (empty output stays empty).
pub fn to_plain_text(raw: &str) -> String {
    let text = clean(raw, None, true);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}\n")
    }
}

fn clean(raw: &str, figure_stem: Option<&str>, collapse: bool) -> String {
    let (text, _) = strip_eos(raw);
    let tags = find_tags(text);
    let images: Vec<&str> = tags.iter().filter(|t| t.is_image).map(|t| &text[t.span.clone()]).collect();
    let others: Vec<&str> = tags.iter().filter(|t| !t.is_image).map(|t| &text[t.span.clone()]).collect();

    let mut out = text.to_string();
    for (k, m) in images.iter().enumerate() {
        let replacement = figure_stem.map(|stem| figure_link(stem, k)).unwrap_or_default();
        out = out.replace(m, &replacement);
    }
    for m in &others {
        out = out.replace(m, "").replace("\\coloneqq", ":=").replace("\\eqqcolon", "=:");
    }
    if collapse {
        out = collapse_blank_lines(&out);
    }
    out
}

/// Replaces every run of 3 or more `\n` by `\n\n`.
pub fn collapse_blank_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = 0;
    for c in s.chars() {
        if c == '\n' {
            run += 1;
            if run <= 2 {
                out.push('\n');
            }
        } else {
            run = 0;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_is_stripped_only_at_the_end() {
        assert_eq!(strip_eos(&format!("abc{EOS}")), ("abc", true));
        assert_eq!(strip_eos(&format!("abc{EOS}\n")), ("abc", true));
        assert_eq!(strip_eos("abc"), ("abc", false));
        assert_eq!(EOS, "<｜end▁of▁sentence｜>");
    }

    #[test]
    fn coloneqq_only_with_a_non_image_match() {
        let img = "<|ref|>image<|/ref|><|det|>[[1,2,3,4]]<|/det|>";
        let txt = "<|ref|>text<|/ref|><|det|>[[1,2,3,4]]<|/det|>";
        assert_eq!(
            to_markdown(&format!("{img}\n$a \\coloneqq b$"), "d", false),
            "![](images/d_0.jpg)\n\n$a \\coloneqq b$"
        );
        assert_eq!(to_markdown(&format!("{txt}\n$a \\coloneqq b \\eqqcolon c$"), "d", false), "\n$a := b =: c$");
    }

    #[test]
    fn identical_image_matches_share_the_first_index() {
        // str.replace replaces all occurrences: both become link 0 (upstream behaviour).
        let img = "<|ref|>image<|/ref|><|det|>[[1,2,3,4]]<|/det|>";
        assert_eq!(to_markdown(&format!("{img}{img}"), "x", false), "![](images/x_0.jpg)\n![](images/x_0.jpg)\n");
    }

    #[test]
    fn collapse() {
        assert_eq!(collapse_blank_lines("a\n\n\n\n\n\n\nb\nc\n\nd\n\n\n"), "a\n\nb\nc\n\nd\n\n");
    }
}
