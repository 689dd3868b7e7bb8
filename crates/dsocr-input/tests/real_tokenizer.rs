//! The real DeepSeek-OCR tokenizer (`tests/fixtures/tokenizer-real`, see its README): prompt ids
//! pinned to the Python `tokenizers` package's output (`expected_ids.json`, written by
//! `expected_ids.py`), streaming decode of real byte-level tokens, special tokens by string.

use std::path::PathBuf;

use dsocr_input::{build_input_ids, PromptTokenizer, Task};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer-real")
}

fn tokenizer() -> PromptTokenizer {
    PromptTokenizer::from_file(dir().join("tokenizer.json")).expect("the real tokenizer loads")
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("expected_ids.json")).expect("expected_ids.json");
    serde_json::from_str(&text).expect("expected_ids.json is JSON")
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().expect("an id list").iter().map(|v| v.as_u64().expect("an id") as u32).collect()
}

#[test]
fn every_official_prompt_has_the_reference_ids() {
    let tok = tokenizer();
    let want = expected();
    let tasks = [
        ("markdown", Task::Markdown),
        ("ocr", Task::Ocr),
        ("free", Task::Free),
        ("figure", Task::Figure),
        ("describe", Task::Describe),
        ("locate", Task::Locate("the red car".into())),
    ];
    assert_eq!(want["prompts"].as_object().map(|m| m.len()), Some(tasks.len()));
    let image = tok.image_token_id().unwrap();
    assert_eq!(image, 128815);
    for (name, task) in tasks {
        let case = &want["prompts"][name];
        assert_eq!(case["prompt"].as_str(), Some(task.prompt().as_str()), "{name}: the prompt text changed");
        let n = 7;
        let mut reference = vec![0];
        reference.extend(ids(&case["before_image"]));
        reference.extend(std::iter::repeat_n(image, n));
        reference.extend(ids(&case["after_image"]));
        let got = build_input_ids(&tok, &task.prompt(), Some(n)).unwrap();
        assert_eq!(got.ids, reference, "{name}");
        let start = 1 + case["before_image"].as_array().map_or(0, Vec::len);
        assert_eq!(got.image_range, Some(start..start + n), "{name}");
    }
}

#[test]
fn text_encodes_and_decodes_like_the_reference() {
    let tok = tokenizer();
    for case in expected()["texts"].as_array().expect("texts") {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode_text(text).unwrap(), want, "{text}");
        assert_eq!(tok.decode(&want).unwrap(), case["decoded"].as_str().expect("decoded"), "{text}");
    }
}

#[test]
fn special_tokens_are_found_by_string() {
    let tok = tokenizer();
    for (token, id) in expected()["special"].as_object().expect("special") {
        assert_eq!(tok.token_id(token), id.as_u64().map(|v| v as u32), "{token}");
    }
    assert_eq!((tok.bos_id().unwrap(), tok.eos_id().unwrap()), (0, 1));
    assert!(tok.vocab_size() >= 128_827, "{}", tok.vocab_size());
}

/// Concatenated stream pieces equal the full decode, for any id sequence.
fn assert_stream_matches(tok: &PromptTokenizer, ids: &[u32]) {
    let mut stream = tok.stream_decoder();
    let mut text = String::new();
    for &id in ids {
        if let Some(piece) = stream.step(id).unwrap() {
            assert!(!piece.is_empty(), "an empty piece is not sent");
            text.push_str(&piece);
        }
    }
    if let Some(rest) = stream.finish().unwrap() {
        text.push_str(&rest);
    }
    assert_eq!(text, tok.decode(ids).unwrap(), "{ids:?}");
}

#[test]
fn streaming_decode_of_real_tokens_equals_the_full_decode() {
    let tok = tokenizer();
    // Multi-byte characters split over several byte-level tokens (CJK, €, emoji).
    for case in expected()["texts"].as_array().expect("texts") {
        let ids = ids(&case["ids"]);
        assert_stream_matches(&tok, &ids);
        // A piece never ends inside a character: every prefix of the ids streams to valid text
        // that the full decode starts with, once the held bytes complete.
        let mut stream = tok.stream_decoder();
        let mut so_far = String::new();
        for &id in &ids {
            if let Some(piece) = stream.step(id).unwrap() {
                so_far.push_str(&piece);
            }
            assert!(case["decoded"].as_str().unwrap().starts_with(&so_far), "{so_far:?}");
        }
    }
    // Random ids over the whole vocabulary (byte-level tokens, added and special tokens): a
    // model may produce invalid UTF-8, which both decoders turn into U+FFFD at the same places.
    let vocab = tok.vocab_size() as u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let len = 1 + (next() % 40) as usize;
        let ids: Vec<u32> = (0..len)
            .map(|_| match next() % 4 {
                // Single-byte tokens (ids below 256 hold many of the raw bytes).
                0 => (next() % 256) as u32,
                _ => (next() % vocab) as u32,
            })
            .collect();
        assert_stream_matches(&tok, &ids);
    }
}
