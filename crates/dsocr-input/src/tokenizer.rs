//! The DeepSeek tokenizer (`tokenizer.json`, byte-level BPE) behind a small API (spec §4.1).
//!
//! Special tokens are always looked up by their string, never by a hard-coded id: the real
//! tokenizer has `<image>` = 128815, the reference-tiny fixture 443.

use std::path::{Path, PathBuf};

use tokenizers::{DecoderWrapper, Tokenizer};

use crate::error::{PromptError, Result};

/// Image placeholder token (ASCII bars).
pub const IMAGE_TOKEN: &str = "<image>";
/// Beginning of sentence (fullwidth bars U+FF5C and U+2581 "▁").
pub const BOS_TOKEN: &str = "<｜begin▁of▁sentence｜>";
/// End of sentence, the generation stop token.
pub const EOS_TOKEN: &str = "<｜end▁of▁sentence｜>";
/// Switches the model to layout output with boxes.
pub const GROUNDING_TOKEN: &str = "<|grounding|>";
/// Grounding label delimiters.
pub const REF_START_TOKEN: &str = "<|ref|>";
pub const REF_END_TOKEN: &str = "<|/ref|>";
/// Box list delimiters.
pub const DET_START_TOKEN: &str = "<|det|>";
pub const DET_END_TOKEN: &str = "<|/det|>";

/// `tokenizer.json` loaded with the `tokenizers` crate, plus the ids the pipeline needs.
#[derive(Clone)]
pub struct PromptTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    bos_fallback: Option<u32>,
    eos_fallback: Option<u32>,
    /// Whether the decoder is plain byte-level, so that [`StreamDecoder`] can work on bytes.
    byte_level: bool,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer").field("path", &self.path).field("vocab_size", &self.vocab_size()).finish()
    }
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PromptError::Io { path: path.to_path_buf(), source })?;
        let inner = Tokenizer::from_bytes(&bytes)
            .map_err(|e| PromptError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(Self::from_tokenizer(inner, path))
    }

    /// Wraps an already loaded tokenizer; `path` is only used in messages.
    pub fn from_tokenizer(inner: Tokenizer, path: impl AsRef<Path>) -> Self {
        let byte_level = matches!(inner.get_decoder(), Some(DecoderWrapper::ByteLevel(_)));
        Self { inner, path: path.as_ref().to_path_buf(), bos_fallback: None, eos_fallback: None, byte_level }
    }

    /// Ids to use for BOS / EOS when the tokenizer lacks the token strings (`bos_token_id` /
    /// `eos_token_id` of `config.json`).
    pub fn with_fallback_ids(mut self, bos: Option<u32>, eos: Option<u32>) -> Self {
        self.bos_fallback = bos;
        self.eos_fallback = eos;
        self
    }

    /// The file this tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Number of entries including added tokens (128,827 for the real tokenizer; the embedding
    /// matrix has padding rows beyond it).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encodes text without adding BOS/EOS; special tokens written in the text (e.g.
    /// `<|grounding|>`) are matched as single tokens.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| PromptError::Encode { text: text.to_string(), message: e.to_string() })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Id of a token string (regular or added).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    fn require(&self, token: &str) -> Result<u32> {
        self.token_id(token).ok_or_else(|| PromptError::MissingSpecialToken { token: token.to_string() })
    }

    /// Id of the `<image>` placeholder.
    pub fn image_token_id(&self) -> Result<u32> {
        self.require(IMAGE_TOKEN)
    }

    /// Id of `<｜begin▁of▁sentence｜>`, else the fallback id.
    pub fn bos_id(&self) -> Result<u32> {
        self.token_id(BOS_TOKEN)
            .or(self.bos_fallback)
            .ok_or_else(|| PromptError::MissingSpecialToken { token: BOS_TOKEN.to_string() })
    }

    /// Id of `<｜end▁of▁sentence｜>`, else the fallback id.
    pub fn eos_id(&self) -> Result<u32> {
        self.token_id(EOS_TOKEN)
            .or(self.eos_fallback)
            .ok_or_else(|| PromptError::MissingSpecialToken { token: EOS_TOKEN.to_string() })
    }

    /// Decodes ids to text, keeping special tokens (as both reference paths do).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| PromptError::Decode { message: e.to_string() })
    }

    /// A decoder for generated ids arriving one at a time.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }

    /// The bytes a byte-level decoder produces for one token: each character mapped back
    /// through the GPT-2 byte↔unicode table, or the token's own UTF-8 if any character is not in
    /// the table (added tokens like `<｜begin▁of▁sentence｜>`) — the rule of `tokenizers`'
    /// `ByteLevel` decoder. Unknown ids give nothing, as in `decode`.
    fn token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let Some(token) = self.inner.id_to_token(id) else {
            return;
        };
        let start = out.len();
        for ch in token.chars() {
            match unicode_to_byte(ch) {
                Some(b) => out.push(b),
                None => {
                    out.truncate(start);
                    out.extend_from_slice(token.as_bytes());
                    return;
                }
            }
        }
    }
}

/// Inverse of GPT-2's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other
/// 68 bytes to U+0100.. in increasing byte order.
fn unicode_to_byte(ch: char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let c = ch as u32;
    if c < 0x100 {
        return printable(c).then_some(c as u8);
    }
    let n = c - 0x100;
    // The n-th non-printable byte.
    (0u32..=255).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
}

/// Incremental decoder for generation: feed ids with [`step`](Self::step), get back only
/// complete, valid text pieces. Byte-level BPE can split one character over several tokens; the
/// incomplete bytes are held until the character completes. Invalid bytes (which a model may
/// well produce) come out as U+FFFD exactly where a full `decode` would put them, so the
/// concatenated pieces equal `decode(all ids)`. Call [`finish`](Self::finish) at the end for
/// anything still held.
pub struct StreamDecoder<'a> {
    tokenizer: &'a PromptTokenizer,
    /// Byte-level mode: bytes not yet emitted (an incomplete UTF-8 sequence).
    pending: Vec<u8>,
    /// Generic mode (other decoders): ids since the last emission point and the text they
    /// decoded to, which the next decode must start with.
    ids: Vec<u32>,
    prefix_ids: usize,
    prefix: String,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a PromptTokenizer) -> Self {
        Self { tokenizer, pending: Vec::new(), ids: Vec::new(), prefix_ids: 0, prefix: String::new() }
    }

    /// Adds one id; returns the text that became complete, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        if self.tokenizer.byte_level {
            self.tokenizer.token_bytes(id, &mut self.pending);
            Ok(self.take_complete())
        } else {
            self.step_generic(id)
        }
    }

    /// Flushes whatever is held (an unfinished character becomes U+FFFD, as in `decode`).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.tokenizer.byte_level {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            Ok((!text.is_empty()).then_some(text))
        } else {
            let text = self.tokenizer.decode(&self.ids)?;
            let new = text.strip_prefix(&self.prefix).unwrap_or(&text).to_string();
            self.ids.clear();
            self.prefix_ids = 0;
            self.prefix.clear();
            Ok((!new.is_empty()).then_some(new))
        }
    }

    /// Emits the longest prefix of `pending` that `from_utf8_lossy` would decode the same way
    /// whatever bytes follow: valid text, plus U+FFFD for byte runs that are already invalid.
    /// Only a trailing incomplete-but-possibly-valid sequence stays pending.
    fn take_complete(&mut self) -> Option<String> {
        let mut text = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // The first `valid_up_to` bytes are valid UTF-8 by definition.
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after; // incomplete sequence at the end: wait for more
                            break;
                        }
                    }
                }
            }
        }
        let consumed = self.pending.len() - rest.len();
        self.pending.drain(..consumed);
        (!text.is_empty()).then_some(text)
    }

    /// For non-byte-level decoders: decode the recent ids and emit what follows the previous
    /// text, unless the result ends in U+FFFD (probably an incomplete character).
    fn step_generic(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids)?;
        if text.len() <= self.prefix.len() || text.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        let new = match text.strip_prefix(&self.prefix) {
            Some(new) => new.to_string(),
            None => text.clone(),
        };
        // Keep the ids after the previous prefix as context for the next step.
        self.ids.drain(..self.prefix_ids);
        self.prefix_ids = self.ids.len();
        self.prefix = self.tokenizer.decode(&self.ids)?;
        Ok(Some(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_inverts_gpt2_mapping() {
        assert_eq!(unicode_to_byte('a'), Some(b'a'));
        assert_eq!(unicode_to_byte('Ġ'), Some(b' ')); // U+0120
        assert_eq!(unicode_to_byte('Ċ'), Some(b'\n')); // U+010A
        assert_eq!(unicode_to_byte('\u{100}'), Some(0));
        assert_eq!(unicode_to_byte('\u{143}'), Some(0xad)); // the last non-printable byte
        assert_eq!(unicode_to_byte('\u{144}'), None);
        assert_eq!(unicode_to_byte(' '), None);
        assert_eq!(unicode_to_byte('｜'), None);
        let mut all: Vec<u8> = (0u32..0x144).filter_map(|c| char::from_u32(c).and_then(unicode_to_byte)).collect();
        all.sort();
        assert_eq!(all, (0..=255).collect::<Vec<u8>>());
    }
}
