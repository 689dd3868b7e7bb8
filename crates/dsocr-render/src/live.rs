//! The output while it is generated: [`LiveCleaner`] hides the grounding tags
//! (`<|ref|>…<|/ref|><|det|>…<|/det|>`) as soon as they are complete and turns image tags into
//! their figure link, piece by piece (a terminal, a server's text stream). The files and the
//! final text of a page come from [`render_page`](crate::render_page) (upstream's exact
//! cleaning); the live text can differ from it in blank lines only.

use crate::grounding::{IMAGE_MARKER, REF_OPEN};
use crate::markdown::figure_link;

const DET_CLOSE: &str = "<|/det|>";
/// A tag still open after this many bytes is shown as is (the model went off the rails).
const MAX_PENDING_TAG: usize = 4096;

/// Cleans a stream of output pieces (module docs).
#[derive(Debug, Clone)]
pub struct LiveCleaner {
    buf: String,
    /// Bytes of `buf` already handled.
    pos: usize,
    images: usize,
    /// `Some(stem)`: image tags become `![](images/<stem>_<k>.jpg)`; `None`: they vanish.
    figure_stem: Option<String>,
    /// Show everything raw (tags included).
    raw: bool,
}

impl LiveCleaner {
    /// `figure_stem`: `Some(stem)` links image tags as `![](images/<stem>_<k>.jpg)` (markdown),
    /// `None` drops them (plain text).
    pub fn new(figure_stem: Option<String>) -> Self {
        Self { buf: String::new(), pos: 0, images: 0, figure_stem, raw: false }
    }

    /// Passes everything through unchanged.
    pub fn raw() -> Self {
        Self { raw: true, ..Self::new(None) }
    }

    /// Feeds a piece of output; returns what can be shown now.
    pub fn push(&mut self, piece: &str) -> String {
        if self.raw {
            return piece.to_string();
        }
        self.buf.push_str(piece);
        let mut out = String::new();
        loop {
            let rest = &self.buf[self.pos..];
            let Some(start) = rest.find(REF_OPEN) else {
                // Hold back a possible beginning of `<|ref|>`.
                let keep = (1..REF_OPEN.len()).rev().find(|&k| rest.ends_with(&REF_OPEN[..k])).unwrap_or(0);
                let end = rest.len() - keep;
                out.push_str(&rest[..end]);
                self.pos += end;
                break;
            };
            out.push_str(&rest[..start]);
            self.pos += start;
            let tag_rest = &self.buf[self.pos..];
            match tag_rest.find(DET_CLOSE) {
                Some(close) => {
                    let tag = &tag_rest[..close + DET_CLOSE.len()];
                    if tag.contains(IMAGE_MARKER) {
                        if let Some(stem) = &self.figure_stem {
                            out.push_str(&figure_link(stem, self.images));
                        }
                        self.images += 1;
                    }
                    self.pos += tag.len();
                }
                None if tag_rest.len() > MAX_PENDING_TAG => {
                    out.push_str(tag_rest);
                    self.pos = self.buf.len();
                    break;
                }
                None => break,
            }
        }
        // Drop what is done so the buffer stays small.
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        out
    }

    /// The held-back rest at the end of generation.
    pub fn finish(&mut self) -> String {
        let rest = self.buf[self.pos..].to_string();
        self.buf.clear();
        self.pos = 0;
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(cleaner: &mut LiveCleaner, text: &str, chunk: usize) -> String {
        let chars: Vec<char> = text.chars().collect();
        let mut out = String::new();
        for piece in chars.chunks(chunk) {
            out.push_str(&cleaner.push(&piece.iter().collect::<String>()));
        }
        out + &cleaner.finish()
    }

    #[test]
    fn tags_hidden_images_linked_in_any_chunking() {
        let raw = "<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n# T\n\n<|ref|>image<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\n<|ref|>text<|/ref|><|det|>[[5, 6, 7, 8]]<|/det|>\nbody <|re";
        for chunk in [1, 2, 3, 7, 1000] {
            let mut c = LiveCleaner::new(Some("doc".into()));
            assert_eq!(feed(&mut c, raw, chunk), "\n# T\n\n![](images/doc_0.jpg)\n\n\nbody <|re", "chunk {chunk}");
            let mut c = LiveCleaner::new(None);
            assert_eq!(feed(&mut c, raw, chunk), "\n# T\n\n\n\nbody <|re", "chunk {chunk}");
        }
        let mut c = LiveCleaner::raw();
        assert_eq!(feed(&mut c, raw, 3), raw);
    }
}
