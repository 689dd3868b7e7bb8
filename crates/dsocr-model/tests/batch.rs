//! Pages decoded together equal pages decoded alone: on the CPU in f32, pages of different
//! images, modes, prompts, token limits and repeat guards, run with continuous batching in two
//! slots (slots reused as pages finish), give each page the ids, text and finish reason that
//! `run` gives it alone, and stream the same text.

use std::ops::ControlFlow;
use std::path::PathBuf;

use dsocr_input::{load_image, Mode, Task};
use dsocr_model::{Backend, DeepseekOcr, GenerationConfig, LoadOptions, OcrRequest, PageEvent, Precision, RepeatGuard};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

fn requests() -> Vec<OcrRequest> {
    let page = load_image(&fixture().join("images/page.png")).unwrap();
    let small = load_image(&fixture().join("images/small.png")).unwrap();
    let make = |prompt: String, image: &dsocr_input::RgbImage, mode, max_new_tokens, guard: Option<RepeatGuard>| {
        let mut r = OcrRequest::new(prompt, Some(image.clone()), mode);
        r.max_crops = 6;
        r.generation = GenerationConfig { max_new_tokens, repeat_guard: guard, ..GenerationConfig::default() };
        r
    };
    vec![
        make(
            Task::Markdown.prompt(),
            &page,
            Mode::Gundam,
            14,
            Some(RepeatGuard::Window { n: 3, window: 30, whitelist: vec![] }),
        ),
        make(Task::Free.prompt(), &small, Mode::Tiny, 5, None),
        make(Task::Ocr.prompt(), &page, Mode::Base, 21, Some(RepeatGuard::Whole { n: 2 })),
        make(Task::Free.prompt(), &small, Mode::Small, 1, None),
        make(Task::Describe.prompt(), &page, Mode::Tiny, 9, None),
    ]
}

#[test]
fn pages_decoded_together_equal_pages_decoded_alone() {
    let model = DeepseekOcr::load(&fixture(), &LoadOptions::new(Backend::Cpu, Precision::F32)).unwrap();
    let requests = requests();
    let alone: Vec<_> = requests.iter().map(|r| model.run(r, |_| ControlFlow::Continue(())).unwrap()).collect();
    let mut streamed = vec![String::new(); requests.len()];
    let mut done_order = Vec::new();
    let batched = model.run_batched(&requests, 2, |event| {
        match event {
            PageEvent::Text { key, piece } => streamed[*key].push_str(piece),
            PageEvent::Done { key, .. } => done_order.push(*key),
        }
        ControlFlow::Continue(())
    });
    for (k, (a, b)) in alone.iter().zip(&batched).enumerate() {
        let b = b.as_ref().unwrap();
        assert_eq!(b.generated_ids, a.generated_ids, "page {k}");
        assert_eq!((b.finish, &b.text, &b.prompt_ids), (a.finish, &a.text, &a.prompt_ids), "page {k}");
        assert_eq!((b.image_tokens, b.grid), (a.image_tokens, a.grid), "page {k}");
        assert_eq!(streamed[k], a.text, "page {k}: the streamed text");
        assert_eq!(b.generated_tokens(), requests[k].generation.max_new_tokens, "page {k}");
    }
    assert_ne!(done_order, [0, 1, 2, 3, 4], "pages finish out of order (shorter ones first)");
    let mut sorted = done_order.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 1, 2, 3, 4]);

    // Stopping: the pages running end cancelled with their text so far, the rest never start.
    let mut texts = 0;
    let stopped = model.run_batched(&requests, 2, |event| {
        if matches!(event, PageEvent::Text { .. }) {
            texts += 1;
        }
        if texts >= 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(stopped.iter().any(|r| matches!(r, Ok(r) if r.finish == dsocr_model::FinishReason::Cancelled)));
    assert!(matches!(stopped[4], Err(dsocr_model::ModelError::NotStarted)), "{:?}", stopped[4]);
}
