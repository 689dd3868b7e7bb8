//! The `dsocr` library driven directly (no binary) on the tiny reference fixture: the events of
//! the document loop, the page results, and the upstream reference's own text where a fixture
//! case asks the same question.

use std::ops::ControlFlow;
use std::path::PathBuf;

use dsocr::{
    Backend, Event, FinishReason, LoadOptions, Mode, Ocr, OcrError, OcrOptions, Precision, PromptChoice, Task,
};
use dsocr_testkit::fixtures::{fixture_image, golden_text, make_pdf, make_pdf_ext, reference_tiny};

/// The events of a run, without the pieces' text (kept separately per page).
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Started { pages: usize },
    Page { page: usize, pages: usize },
    Text { page: usize },
    Retrying { page: usize, mode: Mode },
    Done { page: usize },
    Failed { page: usize },
}

struct Recorder {
    seen: Vec<Seen>,
    /// Per page, the streamed text.
    text: Vec<String>,
    results: Vec<dsocr::PageResult>,
    errors: Vec<OcrError>,
}

impl Recorder {
    fn new() -> Self {
        Self { seen: Vec::new(), text: Vec::new(), results: Vec::new(), errors: Vec::new() }
    }

    /// The events without the `Text` runs (random weights often produce ids that decode to
    /// nothing, and then no piece is sent).
    fn structure(&self) -> Vec<&Seen> {
        self.seen.iter().filter(|s| !matches!(s, Seen::Text { .. })).collect()
    }

    fn on(&mut self, event: Event) -> ControlFlow<()> {
        match event {
            Event::DocumentStarted { pages, .. } => self.seen.push(Seen::Started { pages }),
            Event::PageStarted { page, pages } => {
                self.seen.push(Seen::Page { page, pages });
                self.text.push(String::new());
            }
            Event::Note { .. } => {}
            Event::Text { page, piece } => {
                // One `Text` entry per run of pieces.
                if self.seen.last() != Some(&Seen::Text { page }) {
                    self.seen.push(Seen::Text { page });
                }
                if let Some(t) = self.text.last_mut() {
                    t.push_str(&piece);
                }
            }
            Event::Retrying { page, mode, .. } => self.seen.push(Seen::Retrying { page, mode }),
            Event::PageDone(result) => {
                self.seen.push(Seen::Done { page: result.page });
                self.results.push(*result);
            }
            Event::PageFailed { page, error } => {
                self.seen.push(Seen::Failed { page });
                self.errors.push(error);
            }
        }
        ControlFlow::Continue(())
    }
}

fn ocr() -> Ocr {
    Ocr::load(reference_tiny().to_str().expect("utf-8 path"), &LoadOptions::new(Backend::Cpu, Precision::F32), |_| {})
        .expect("the fixture model loads")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsocr-lib-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The official options; only the token limit is lowered, so that random weights (which never
/// say EOS) stop after a few tokens instead of filling the 4,096-position context.
fn official(max_new_tokens: usize) -> OcrOptions {
    OcrOptions { max_new_tokens, ..OcrOptions::official() }
}

#[test]
fn a_pdf_of_two_pages_and_an_image_through_the_official_options() {
    let ocr = ocr();
    let dir = temp_dir("official");
    let pdf = dir.join("two.pdf");
    std::fs::write(&pdf, make_pdf(&["First page", "Second page"], 300, 200)).unwrap();

    let mut rec = Recorder::new();
    let doc = ocr.run_file(&pdf, &official(6), |e| rec.on(e)).expect("the PDF runs");
    assert_eq!(
        rec.structure(),
        [
            &Seen::Started { pages: 2 },
            &Seen::Page { page: 1, pages: 2 },
            &Seen::Done { page: 1 },
            &Seen::Page { page: 2, pages: 2 },
            &Seen::Done { page: 2 },
        ]
    );
    // Pieces of a page only come between its start and its end.
    for (k, s) in rec.seen.iter().enumerate() {
        if let Seen::Text { page } = s {
            assert!(rec.seen[..k].contains(&Seen::Page { page: *page, pages: 2 }), "{:?}", rec.seen);
            assert!(!rec.seen[..k].contains(&Seen::Done { page: *page }), "{:?}", rec.seen);
        }
    }
    assert_eq!((doc.pages, doc.pages_done, doc.pages_failed, doc.tokens), (2, 2, 0, 12));
    for (i, page) in rec.results.iter().enumerate() {
        assert_eq!(page.page, i + 1);
        // 300×200 pt at the official 144 DPI; both sides ≤ 640: Gundam uses no tiles.
        assert_eq!(page.image.dimensions(), (600, 400));
        assert_eq!(page.mode, Mode::Gundam);
        assert_eq!(page.generated_tokens, 6);
        assert!(matches!(page.finish, FinishReason::Length | FinishReason::Repetition), "{:?}", page.finish);
        assert_eq!(page.prompt_tokens, rec.results[0].prompt_tokens);
        assert!(page.prompt_tokens > 273, "BOS + 273 image tokens + the markdown prompt");
        assert_eq!(rec.text[i], page.raw, "the streamed pieces are the page's output");
        assert!(page.other_run.is_none());
    }
    // The document's text and JSON are those pages, each followed by the page separator.
    let json = doc.document.to_json();
    assert_eq!(json.dpi, Some(144.0));
    assert_eq!(json.pages.len(), 2);
    assert_eq!(doc.markdown().matches(dsocr::render::PAGE_SPLIT).count(), 2);
    for (p, r) in json.pages.iter().zip(&rec.results) {
        assert_eq!((p.page, p.generated_tokens, p.finish_reason), (r.page, 6, Some(r.finish)));
        assert!(!p.complete);
    }

    // The image: upstream's case `gundam_small` asks this (small.png, Gundam without tiles,
    // `Free OCR.`, 8 tokens); within 8 tokens the official guard (n = 30) cannot ban anything,
    // so the official options give the reference's own text.
    let small = fixture_image("small.png");
    let options = OcrOptions { prompt: PromptChoice::Task(Task::Free), ..official(8) };
    let mut rec = Recorder::new();
    let doc = ocr.run_file(&small, &options, |e| rec.on(e)).expect("the image runs");
    assert_eq!(
        rec.seen,
        [Seen::Started { pages: 1 }, Seen::Page { page: 1, pages: 1 }, Seen::Text { page: 1 }, Seen::Done { page: 1 }]
    );
    let page = &rec.results[0];
    assert_eq!(page.raw, golden_text("gundam_small").expect("case gundam_small"));
    assert_eq!((page.prompt_tokens, page.generated_tokens), (278, 8));
    assert_eq!(page.finish, FinishReason::Length);
    assert_eq!(doc.markdown(), page.raw, "no grounding tags: the markdown is the raw text");
    assert_eq!(doc.document.to_json().pages[0].width, 600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_page_that_does_not_render_fails_alone() {
    let ocr = ocr();
    let dir = temp_dir("broken-page");
    let pdf = dir.join("doc.pdf");
    std::fs::write(&pdf, make_pdf_ext(&[Some("One"), None, Some("Three")], 300, 200, false)).unwrap();
    let options = OcrOptions { mode: Mode::Tiny, ..official(2) };
    let mut rec = Recorder::new();
    let doc = ocr.run_file(&pdf, &options, |e| rec.on(e)).expect("the PDF opens");
    assert_eq!(
        rec.structure(),
        [
            &Seen::Started { pages: 3 },
            &Seen::Page { page: 1, pages: 3 },
            &Seen::Done { page: 1 },
            &Seen::Failed { page: 2 },
            &Seen::Page { page: 3, pages: 3 },
            &Seen::Done { page: 3 },
        ]
    );
    let error = &rec.errors[0];
    assert!(matches!(error, OcrError::PdfPage { page: 2, .. }), "{error:?}");
    assert_eq!(error.path(), Some(pdf.as_path()));
    assert!(error.to_string().starts_with(&pdf.display().to_string()), "{error}");
    let json = doc.document.to_json();
    assert_eq!(json.pages[1].error.as_deref(), Some(error.page_reason().as_str()));
    assert_eq!((doc.pages_done, doc.pages_failed), (2, 1));

    // A file that is no PDF and no image fails as a whole, naming the file.
    let bad = dir.join("bad.pdf");
    std::fs::write(&bad, b"%PDF-1.4\nnothing else").unwrap();
    let err = ocr.run_file(&bad, &options, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, OcrError::Pdf { .. }) && err.to_string().contains("bad.pdf"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn retry_cancel_and_bad_options() {
    let ocr = ocr();
    let page = fixture_image("page.png");
    // Tiny mode without EOS: re-run in base mode; neither ends with EOS, the first is kept.
    let options = OcrOptions { mode: Mode::Tiny, retry_in_base_mode: true, ..official(4) };
    let mut rec = Recorder::new();
    let doc = ocr.run_file(&page, &options, |e| rec.on(e)).unwrap();
    assert_eq!(
        rec.structure(),
        [
            &Seen::Started { pages: 1 },
            &Seen::Page { page: 1, pages: 1 },
            &Seen::Retrying { page: 1, mode: Mode::Tiny },
            &Seen::Done { page: 1 },
        ]
    );
    let kept = &rec.results[0];
    assert_eq!(kept.mode, Mode::Tiny);
    let other = kept.other_run.expect("the retry is reported");
    assert_eq!((other.mode, other.tokens), (Mode::Base, 4));
    assert_eq!((kept.tokens_spent(), doc.tokens), (8, 8));

    // The handler stops the run: the document is cancelled, nothing else is reported.
    let mut events = 0;
    let err = ocr
        .run_file(&page, &official(50), |e| {
            events += 1;
            if matches!(e, Event::Text { .. }) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_err();
    assert!(matches!(err, OcrError::Cancelled { .. }), "{err:?}");
    assert_eq!(events, 3, "DocumentStarted, PageStarted, the first Text");

    // Options are checked before anything runs.
    let bad = OcrOptions { max_crops: 12, ..OcrOptions::official() };
    let err = ocr.run_file(&page, &bad, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, OcrError::Options(_)) && err.to_string().contains("12"), "{err}");
}

#[test]
fn page_selection_limits_and_uploads_in_memory() {
    let ocr = ocr();
    let pdf = make_pdf(&["One", "Two", "Three"], 300, 200);
    let source = || dsocr::Source::Bytes { name: "upload.pdf".to_string(), bytes: pdf.clone() };
    let options = OcrOptions { mode: Mode::Tiny, pages: Some("2-".parse().unwrap()), ..official(2) };
    let mut rec = Recorder::new();
    let doc = ocr.run(source(), "upload", &options, |e| rec.on(e)).expect("pages 2 and 3 run");
    assert_eq!(
        rec.structure(),
        [
            &Seen::Started { pages: 2 },
            &Seen::Page { page: 2, pages: 3 },
            &Seen::Done { page: 2 },
            &Seen::Page { page: 3, pages: 3 },
            &Seen::Done { page: 3 },
        ]
    );
    let numbers: Vec<usize> = doc.document.to_json().pages.iter().map(|p| p.page).collect();
    assert_eq!(numbers, [2, 3], "the JSON keeps the document's page numbers");
    assert_eq!(doc.document.to_json().source.as_deref(), Some("upload.pdf"));

    // A page past the end, and more pages than the limit, fail before any page runs.
    let past = OcrOptions { pages: Some("4".parse().unwrap()), ..options.clone() };
    let err = ocr.run(source(), "upload", &past, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(err, OcrError::PageSelection { .. }) && err.to_string().contains("page 4"), "{err}");
    let limited = OcrOptions { pages: None, max_pages: Some(2), ..options.clone() };
    let err = ocr.run(source(), "upload", &limited, |_| panic!("nothing runs")).unwrap_err();
    assert!(matches!(err, OcrError::TooManyPages { pages: 3, limit: 2, .. }), "{err:?}");

    // An image in memory gives what the file gives; the pixel limit is checked from the header.
    let path = fixture_image("small.png");
    let bytes = std::fs::read(&path).unwrap();
    let options = OcrOptions { mode: Mode::Tiny, ..official(3) };
    let from_file = ocr.run_file(&path, &options, |_| ControlFlow::Continue(())).unwrap();
    let upload = dsocr::Source::Bytes { name: "small.png".into(), bytes: bytes.clone() };
    let from_memory = ocr.run(upload, "small", &options, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(from_memory.document.raw(), from_file.document.raw());
    let tight = OcrOptions { max_image_pixels: Some(1000), ..options };
    let upload = dsocr::Source::Bytes { name: "small.png".into(), bytes };
    let err = ocr.run(upload, "small", &tight, |_| ControlFlow::Continue(())).unwrap_err();
    assert!(matches!(&err, OcrError::Image { source: dsocr::input::PromptError::TooManyPixels { .. }, .. }), "{err:?}");
    assert!(err.to_string().starts_with("small.png: "), "{err}");
}

#[test]
fn the_scripted_model_says_its_script_with_a_box_and_eos() {
    use dsocr_testkit::scripted::{self, OCR_SCRIPT, OCR_SCRIPT_TEXT, SCRIPT_GUARD};
    let dir = temp_dir("scripted");
    scripted::write(&dir, OCR_SCRIPT).expect("the scripted model is written");
    let ocr = Ocr::load_dir(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)).expect("it loads");
    let options = OcrOptions {
        repeat_guard: dsocr::RepeatGuardPolicy::official_with(Some(SCRIPT_GUARD.0), Some(SCRIPT_GUARD.1)),
        ..OcrOptions::official()
    };
    let doc = ocr.run_file(&fixture_image("page.png"), &options, |_| ControlFlow::Continue(())).unwrap();
    let page = &doc.document.to_json().pages[0];
    assert_eq!(doc.document.raw(), OCR_SCRIPT_TEXT);
    assert_eq!((page.finish_reason, page.complete), (Some(FinishReason::Stop), true));
    assert_eq!(page.generated_tokens, OCR_SCRIPT.len(), "the script and its EOS");
    assert_eq!(page.blocks.len(), 1);
    assert_eq!((page.blocks[0].label.as_str(), page.blocks[0].boxes.as_slice()), ("text", &[[125, 346, 789, 905]][..]));
    assert_eq!(page.blocks[0].text, "Hello world");
    // Without the n = 2 guard the script loops at its first repeated token.
    let loose = OcrOptions { max_new_tokens: 20, ..OcrOptions::official() };
    let doc = ocr.run_file(&fixture_image("page.png"), &loose, |_| ControlFlow::Continue(())).unwrap();
    assert_ne!(doc.document.raw(), OCR_SCRIPT_TEXT);
    let _ = std::fs::remove_dir_all(&dir);
}
