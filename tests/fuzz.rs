//! Fuzzing on stable Rust: property-based tests (proptest) that feed every parser of untrusted
//! input with generated and mutated data and require an answer (a value or a typed error),
//! never a panic, a hang or a result that breaks its own invariants.
//!
//! Targets: the grounding parser and page rendering, the live cleaner, image decoding +
//! preprocessing, PDF open + first-page render, `config.json` parsing, safetensors headers and
//! data. (The streaming UTF-8 decoder over random real-vocabulary ids is in
//! `crates/dsocr-input/tests/real_tokenizer.rs`.)
//!
//! Each target runs `DSOCR_FUZZ_CASES` cases (default 256; CI uses the default, seconds
//! in all). To fuzz longer: `DSOCR_FUZZ_CASES=20000 cargo test --release -p dsocr-tests --test
//! fuzz`. A failing case is printed shrunk; add it to the regression tests at the end of this
//! file.

use std::io::Cursor;
use std::sync::OnceLock;

use dsocr_input::{load_image_from_memory, preprocess, Mode, PdfDocument, RgbImage};
use dsocr_model::ModelConfig;
use dsocr_render::{parse_grounding, render_page, LiveCleaner, PageKind};
use dsocr_weights::SafetensorsFiles;
use image::{DynamicImage, ImageFormat};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("DSOCR_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    // Shrunk failures are reported in the test output and kept as regression tests below, not in
    // files next to the sources.
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Pieces the model's output is made of, to build strings that reach deep into the parser.
const FRAGMENTS: &[&str] = &[
    "<|ref|>",
    "<|/ref|>",
    "<|det|>",
    "<|/det|>",
    "<|grounding|>",
    "[[",
    "]]",
    "[",
    "]",
    ", ",
    ",",
    "0",
    "999",
    "1000",
    "-3",
    "12.5",
    "4294967296",
    "image",
    "title",
    "table",
    "text",
    "\n",
    "\n\n",
    " ",
    "é",
    "東京",
    "🙂",
    "<td>",
    "</td>",
    "<table>",
    "![](",
    ")",
    "<｜end▁of▁sentence｜>",
    "\\(",
    "\\]",
    "#",
];

fn model_output() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(FRAGMENTS).prop_map(str::to_string),
        1 => ".{0,6}",
    ];
    proptest::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn grounding_and_rendering_hold_their_invariants(raw in model_output(), w in 1u32..5000, h in 1u32..5000) {
        let grounding = parse_grounding(&raw);
        for block in &grounding.blocks {
            prop_assert!(raw.get(block.text_span.clone()).is_some(), "text span on char boundaries");
            prop_assert!(raw.get(block.tag_span.clone()).is_some(), "tag span on char boundaries");
            for b in block.pixel_boxes(w, h) {
                prop_assert!(b[0] <= w && b[2] <= w && b[1] <= h && b[3] <= h, "{b:?} inside {w}x{h}");
            }
        }
        for kind in [PageKind::Image, PageKind::PdfPage] {
            let page = render_page(&raw, (w, h), "doc", kind);
            prop_assert!(page.raw.len() <= raw.len());
            let _ = page.to_json(1, dsocr_render::PageStats {
                finish_reason: dsocr_render::FinishReason::Length, prompt_tokens: 0, generated_tokens: 0,
            }, &[]);
        }
    }

    #[test]
    fn the_live_cleaner_takes_any_chunking(raw in model_output(), cuts in proptest::collection::vec(0usize..64, 0..20)) {
        let chars: Vec<char> = raw.chars().collect();
        for mut cleaner in [LiveCleaner::new(Some("doc".into())), LiveCleaner::new(None), LiveCleaner::raw()] {
            let mut out = String::new();
            let mut at = 0;
            for cut in &cuts {
                let end = (at + cut).min(chars.len());
                out.push_str(&cleaner.push(&chars[at..end].iter().collect::<String>()));
                at = end;
            }
            out.push_str(&cleaner.push(&chars[at..].iter().collect::<String>()));
            out.push_str(&cleaner.finish());
            prop_assert!(out.len() <= raw.len() + 64 * (raw.matches("<|ref|>").count() + 1));
        }
    }

    #[test]
    fn mutated_images_decode_or_fail_cleanly(
        format in 0usize..9,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (name, bytes) = &encoded_images()[format];
        let mut bytes = bytes.clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(image) = load_image_from_memory(&bytes, name) {
            prop_assert!(image.width() > 0 && image.height() > 0);
            for mode in Mode::ALL {
                let prepared = preprocess(&image, mode);
                prop_assert!(prepared.is_ok(), "{mode}: {prepared:?}");
            }
        }
    }

    #[test]
    fn mutated_pdfs_open_and_render_or_fail_cleanly(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = dsocr_testkit::fixtures::make_pdf(&["Fuzz page", "Two"], 200, 100);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        if let Ok(doc) = PdfDocument::from_bytes(bytes, "fuzz.pdf") {
            if doc.page_count() > 0 {
                // A low resolution keeps each case fast; the pixel limits are tested elsewhere.
                let _ = doc.render_page(0, 18.0);
            }
        }
    }

    #[test]
    fn any_config_json_parses_or_fails_cleanly(path in proptest::collection::vec(0usize..40, 1..4), value in json_value()) {
        let mut config = dsocr_testkit::random_checkpoint::real_config();
        replace_somewhere(&mut config, &path, value);
        let _ = ModelConfig::from_json(&config);
    }

    #[test]
    fn mutated_safetensors_open_and_read_or_fail_cleanly(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut bytes = small_safetensors().clone();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = std::env::temp_dir().join(format!("dsocr-fuzz-st-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(files) = SafetensorsFiles::open(&path) {
            for name in files.names() {
                if let Ok((shape, values)) = files.to_f32_vec(name) {
                    prop_assert_eq!(shape.iter().product::<usize>(), values.len(), "{}", name);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A small picture in six formats (PNG, JPEG, GIF, BMP, TIFF, WebP), encoded once.
/// The seed images, each with the name it is loaded under (TGA is recognised by its extension).
fn encoded_images() -> &'static [(String, Vec<u8>)] {
    static IMAGES: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let image = RgbImage::from_fn(23, 17, |x, y| image::Rgb([(x * 11) as u8, (y * 15) as u8, ((x + y) * 7) as u8]));
        let dynamic = DynamicImage::ImageRgb8(image);
        [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::WebP,
            ImageFormat::Pnm,
            ImageFormat::Tga,
            ImageFormat::Ico,
        ]
        .into_iter()
        .map(|format| {
            let mut out = Cursor::new(Vec::new());
            let encoded = match format {
                // The WebP encoder of `image` writes RGBA/RGB lossless; GIF needs RGBA.
                ImageFormat::Gif => DynamicImage::ImageRgba8(dynamic.to_rgba8()).write_to(&mut out, format),
                _ => dynamic.write_to(&mut out, format),
            };
            encoded.unwrap_or_else(|e| panic!("encoding {format:?}: {e}"));
            (format!("fuzz.{}", format.extensions_str()[0]), out.into_inner())
        })
        .collect()
    })
}

/// A safetensors file with an f32, a bf16 and an i64 tensor.
fn small_safetensors() -> &'static Vec<u8> {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        use safetensors::tensor::{serialize, Dtype, TensorView};
        let f32s: Vec<u8> = (0..12).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
        let bf16s: Vec<u8> = (0..6u16).flat_map(|i| (0x3f80 + i).to_le_bytes()).collect();
        let i64s: Vec<u8> = (0..4i64).flat_map(|i| (i * 1000).to_le_bytes()).collect();
        let views = vec![
            ("a.weight", TensorView::new(Dtype::F32, vec![3, 4], &f32s).unwrap()),
            ("b.bias", TensorView::new(Dtype::BF16, vec![6], &bf16s).unwrap()),
            ("c.ids", TensorView::new(Dtype::I64, vec![2, 2], &i64s).unwrap()),
        ];
        serialize(views, None).unwrap()
    })
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(u64::MAX)),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value reached by following `path` (each step picks an entry by index, modulo
/// the object's or array's size; a leaf ends the walk early) with `value`.
fn replace_somewhere(json: &mut serde_json::Value, path: &[usize], value: serde_json::Value) {
    let Some((&step, rest)) = path.split_first() else {
        *json = value;
        return;
    };
    let child = match json {
        serde_json::Value::Object(map) if !map.is_empty() => {
            let n = map.len();
            map.values_mut().nth(step % n)
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            items.get_mut(step % n)
        }
        _ => None,
    };
    match child {
        Some(child) => replace_somewhere(child, rest, value),
        None => *json = value,
    }
}

// Regression cases: inputs that once crashed a parser, kept as plain tests.

#[test]
fn regression_tiled_planar_tiff_with_partial_tiles() {
    // Crashed the `tiff` 0.11.3 decoder (an assertion on the planar tile buffer) and, before the
    // decoders were guarded, the whole process.
    let bytes = dsocr_testkit::fixtures::tiled_planar_tiff(40, 40, 16);
    let err = load_image_from_memory(&bytes, "scan.tif").expect_err("the decoder cannot read it");
    assert!(err.to_string().contains("scan.tif"), "{err}");
}
