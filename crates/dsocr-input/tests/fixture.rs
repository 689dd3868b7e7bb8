//! Parity with the upstream preprocessing and prompt assembly, on the reference-tiny fixture:
//! every view PNG byte for byte, the grid / tile count / N of `cases.json`, and every case's
//! `input_ids` from `golden.safetensors`.

use std::path::{Path, PathBuf};

use dsocr_input::{build_input_ids, load_image, preprocess, Mode, PromptTokenizer, RgbImage};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).expect("read cases.json");
    let json: Value = serde_json::from_str(&text).expect("parse cases.json");
    let cases = json["cases"].as_array().expect("cases array").clone();
    assert!(cases.len() >= 9, "expected the 9 fixture cases, found {}", cases.len());
    cases
}

fn reference_png(path: &Path) -> RgbImage {
    // The reference files are plain 8-bit RGB PNGs; decode them with the image crate directly.
    image::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())).into_rgb8()
}

fn assert_same_pixels(got: &RgbImage, expected: &RgbImage, what: &str) {
    assert_eq!(got.dimensions(), expected.dimensions(), "{what}: size");
    if got.as_raw() != expected.as_raw() {
        let (w, _) = got.dimensions();
        let diffs: Vec<_> =
            got.as_raw().iter().zip(expected.as_raw()).enumerate().filter(|(_, (a, b))| a != b).collect();
        let (i, (a, b)) = diffs[0];
        let px = i / 3;
        panic!(
            "{what}: {} bytes differ; first at pixel ({}, {}) channel {}: got {a}, expected {b}; max diff {}",
            diffs.len(),
            px as u32 % w,
            px as u32 / w,
            i % 3,
            diffs.iter().map(|(_, (a, b))| a.abs_diff(**b)).max().unwrap_or(0)
        );
    }
}

#[test]
fn preprocessing_matches_upstream_byte_for_byte() {
    let dir = fixture_dir();
    let mut checked_views = 0;
    for case in cases() {
        let name = case["name"].as_str().expect("case name");
        let Some(image_name) = case["image"].as_str() else {
            continue;
        };
        let mode: Mode = case["mode"].as_str().expect("mode").parse().expect("valid mode");
        let image = load_image(&dir.join("images").join(format!("{image_name}.png"))).expect("load image");
        let prepared = preprocess(&image, mode).expect("preprocess");

        let grid = case["grid"].as_array().expect("grid");
        let grid = (grid[0].as_u64().unwrap() as u32, grid[1].as_u64().unwrap() as u32);
        assert_eq!(prepared.grid, grid, "{name}: grid [cols, rows]");
        assert_eq!(prepared.num_tiles() as u64, case["num_tiles"].as_u64().unwrap(), "{name}: num_tiles");
        assert_eq!(prepared.image_token_count() as u64, case["image_tokens"].as_u64().unwrap(), "{name}: image_tokens");
        let global_size = case["global_size"].as_array().expect("global_size");
        assert_eq!(
            (prepared.global.width() as u64, prepared.global.height() as u64),
            (global_size[0].as_u64().unwrap(), global_size[1].as_u64().unwrap()),
            "{name}: global size"
        );

        let case_dir = dir.join("preprocess").join(name);
        assert_same_pixels(&prepared.global, &reference_png(&case_dir.join("global.png")), &format!("{name}/global"));
        checked_views += 1;
        for (i, tile) in prepared.tiles.iter().enumerate() {
            let file = case_dir.join(format!("tile_{i}.png"));
            assert_same_pixels(tile, &reference_png(&file), &format!("{name}/tile_{i}"));
            checked_views += 1;
        }
        // No reference tile may be left unchecked.
        assert!(
            !case_dir.join(format!("tile_{}.png", prepared.tiles.len())).exists(),
            "{name}: reference has more tiles than we produced"
        );
    }
    assert_eq!(checked_views, 8 + 3 * 6, "views compared");
}

fn golden_ids(golden: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    let view = golden.tensor(&format!("{name}.input_ids")).unwrap_or_else(|e| panic!("{name}.input_ids: {e}"));
    assert_eq!(view.dtype(), Dtype::I64, "{name}.input_ids dtype");
    view.data()
        .chunks_exact(8)
        .map(|b| {
            let v = i64::from_le_bytes(b.try_into().unwrap());
            u32::try_from(v).expect("id fits u32")
        })
        .collect()
}

#[test]
fn input_ids_match_golden() {
    let dir = fixture_dir();
    let bytes = std::fs::read(dir.join("golden.safetensors")).expect("read golden.safetensors");
    let golden = SafeTensors::deserialize(&bytes).expect("parse golden.safetensors");
    let tokenizer = PromptTokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");

    let json: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let image_id = tokenizer.image_token_id().unwrap();
    assert_eq!(u64::from(image_id), json["image_token_id"].as_u64().unwrap());
    assert_eq!(tokenizer.bos_id().unwrap(), 0);
    assert_eq!(tokenizer.eos_id().unwrap(), 1);

    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        let image_tokens = case["image_tokens"].as_u64().map(|n| n as usize);
        let built = build_input_ids(&tokenizer, prompt, image_tokens).expect("build_input_ids");
        let expected = golden_ids(&golden, name);
        assert_eq!(built.ids, expected, "{name}: input_ids");
        assert_eq!(built.len() as u64, case["prompt_len"].as_u64().unwrap(), "{name}: prompt_len");

        // The placeholder range holds exactly the image ids of the golden sequence.
        let golden_positions: Vec<usize> =
            expected.iter().enumerate().filter(|(_, &id)| id == image_id).map(|(i, _)| i).collect();
        match (&built.image_range, image_tokens) {
            (Some(range), Some(n)) => {
                assert_eq!(range.len(), n, "{name}");
                assert_eq!(golden_positions, range.clone().collect::<Vec<_>>(), "{name}: image positions");
            }
            (None, None) => assert!(golden_positions.is_empty(), "{name}"),
            other => panic!("{name}: unexpected image range {other:?}"),
        }
    }
}

#[test]
fn tokenizer_roundtrip_and_special_tokens() {
    let tokenizer = PromptTokenizer::from_file(fixture_dir().join("tokenizer.json")).unwrap();
    let grounding = tokenizer.token_id("<|grounding|>").expect("<|grounding|> token");
    let ids = tokenizer.encode_text("\n<|grounding|>Convert").unwrap();
    assert!(ids.contains(&grounding), "special token matched as one token: {ids:?}");
    assert_eq!(ids.iter().filter(|&&id| id == grounding).count(), 1);
    // Special tokens are kept when decoding.
    assert_eq!(tokenizer.decode(&ids).unwrap(), "\n<|grounding|>Convert");
    let bos = tokenizer.bos_id().unwrap();
    let eos = tokenizer.eos_id().unwrap();
    assert_eq!(tokenizer.decode(&[bos, eos]).unwrap(), "<｜begin▁of▁sentence｜><｜end▁of▁sentence｜>");
    assert!(tokenizer.encode_text("").unwrap().is_empty());
}

/// GPT-2 `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100, U+0101, … in byte order.
fn gpt2_byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(0x100 + n).unwrap()
    }
}

/// A character whose UTF-8 bytes are spread over several byte-level tokens is only emitted once
/// complete; invalid bytes come out as U+FFFD; the pieces concatenate to `decode(all)`.
#[test]
fn stream_decoder_holds_split_characters() {
    let tokenizer = PromptTokenizer::from_file(fixture_dir().join("tokenizer.json")).unwrap();
    // "中" = E4 B8 AD; the tiny vocabulary has single-byte tokens for every byte.
    let text = "a中b";
    let ids = tokenizer.encode_text(text).unwrap();
    let byte_token = |b: u8| tokenizer.token_id(&gpt2_byte_char(b).to_string());
    let split: Vec<u32> = [b'a', 0xE4, 0xB8, 0xAD, b'b']
        .iter()
        .map(|&b| byte_token(b).unwrap_or_else(|| panic!("no single-byte token for {b:#x}")))
        .collect();
    assert_eq!(tokenizer.decode(&split).unwrap(), text);
    assert!(!ids.is_empty());

    let mut stream = tokenizer.stream_decoder();
    let pieces: Vec<Option<String>> = split.iter().map(|&id| stream.step(id).unwrap()).collect();
    assert_eq!(pieces, vec![Some("a".to_string()), None, None, Some("中".to_string()), Some("b".to_string())]);
    assert_eq!(stream.finish().unwrap(), None);

    // Invalid and unfinished sequences: 0xE4 followed by 'b' is invalid → U+FFFD then "b";
    // a dangling 0xE4 0xB8 at the end is flushed by finish().
    let ids: Vec<u32> = [0xE4, b'b', 0xE4, 0xB8].iter().map(|&b| byte_token(b).unwrap()).collect();
    let mut stream = tokenizer.stream_decoder();
    let mut out = String::new();
    let mut steps = Vec::new();
    for &id in &ids {
        let piece = stream.step(id).unwrap();
        steps.push(piece.is_some());
        out.push_str(&piece.unwrap_or_default());
    }
    assert_eq!(steps, vec![false, true, false, false]);
    out.push_str(&stream.finish().unwrap().unwrap_or_default());
    assert_eq!(out, tokenizer.decode(&ids).unwrap());
    assert_eq!(out, "\u{FFFD}b\u{FFFD}");

    // Special tokens stream through unchanged.
    let grounding = tokenizer.token_id("<|grounding|>").unwrap();
    let mut stream = tokenizer.stream_decoder();
    assert_eq!(stream.step(grounding).unwrap().as_deref(), Some("<|grounding|>"));
}

#[test]
fn prompt_errors() {
    let tokenizer = PromptTokenizer::from_file(fixture_dir().join("tokenizer.json")).unwrap();
    use dsocr_input::PromptError::*;
    assert!(matches!(
        build_input_ids(&tokenizer, "<image>\n<image>x", Some(10)),
        Err(TooManyImagePlaceholders { count: 2 })
    ));
    assert!(matches!(build_input_ids(&tokenizer, "Free OCR.", Some(10)), Err(MissingImagePlaceholder)));
    assert!(matches!(build_input_ids(&tokenizer, "<image>\nFree OCR.", None), Err(UnexpectedImagePlaceholder)));
    // HF strips the prompt: surrounding whitespace does not change the ids.
    let a = build_input_ids(&tokenizer, "  <image>\nFree OCR. \n", Some(3)).unwrap();
    let b = build_input_ids(&tokenizer, "<image>\nFree OCR.", Some(3)).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.image_range, Some(1..4));
    assert_eq!(a.image_mask().iter().filter(|&&m| m).count(), 3);

    let missing = fixture_dir().join("no-such-tokenizer.json");
    let err = PromptTokenizer::from_file(&missing).unwrap_err();
    assert!(err.to_string().contains("no-such-tokenizer.json"), "{err}");
    let not_json = fixture_dir().join("cases.json");
    let err = PromptTokenizer::from_file(&not_json).unwrap_err();
    assert!(matches!(err, Tokenizer { .. }), "{err:?}");
    assert!(err.to_string().contains("cases.json"), "{err}");
}

/// Decoders other than plain ByteLevel go through the string-diff fallback; wrapping the same
/// ByteLevel decoder in a Sequence must give the same pieces.
#[test]
fn stream_decoder_generic_fallback() {
    let path = fixture_dir().join("tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let byte_level = json["decoder"].clone();
    json["decoder"] = serde_json::json!({"type": "Sequence", "decoders": [byte_level]});
    let inner = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
    let tokenizer = PromptTokenizer::from_tokenizer(inner, &path);
    let byte_token = |b: u8| tokenizer.token_id(&gpt2_byte_char(b).to_string()).unwrap();

    let mut ids = tokenizer.encode_text("Free OCR.<|grounding|>").unwrap();
    ids.extend([0xE4, 0xB8, 0xAD, b'!'].map(byte_token));
    let mut stream = tokenizer.stream_decoder();
    let mut out = String::new();
    let mut emitted = Vec::new();
    for &id in &ids {
        let piece = stream.step(id).unwrap();
        emitted.push(piece.is_some());
        out.push_str(&piece.unwrap_or_default());
    }
    out.push_str(&stream.finish().unwrap().unwrap_or_default());
    assert_eq!(out, "Free OCR.<|grounding|>中!");
    assert_eq!(out, tokenizer.decode(&ids).unwrap());
    // The two continuation bytes of 中 produce nothing on their own.
    let n = emitted.len();
    assert_eq!(&emitted[n - 4..], &[false, false, true, true]);
}
