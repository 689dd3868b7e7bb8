//! The document loop: an image or a PDF through the model, page by page, reporting
//! [`Event`]s. A PDF page that fails is reported and the next page goes on; a page that ends
//! without EOS is kept and flagged by its finish reason, and is run once more in base mode when
//! [`OcrOptions::retry_in_base_mode`] asks for it.
//!
//! The loop draws nothing and writes no file: the CLI turns events into progress bars, streamed
//! text and output files, the server into its answers.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dsocr_input::{load_image_from_memory_with, load_image_with, Mode, PdfDocument, RgbImage};
use dsocr_model::{DeepseekOcr, FinishReason, GenerationConfig, OcrRequest, OcrResult, RepeatGuard};
use dsocr_render::{safe_stem, Document, DocumentKind, GeneratedPage};

use crate::inputs::{sniff_bytes, sniff_kind, InputKind};
use crate::{OcrError, OcrOptions};

/// What to run: a file, or the bytes of one (an upload), told apart from images by content.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    /// An image or PDF file in memory; `name` (a file name) stands for its path in messages
    /// and results. Nothing is read from disk.
    Bytes {
        name: String,
        bytes: Vec<u8>,
    },
}

impl Source {
    /// The path the results and errors name.
    pub fn path(&self) -> PathBuf {
        match self {
            Source::File(path) => path.clone(),
            Source::Bytes { name, .. } => PathBuf::from(name),
        }
    }

    /// Image or PDF: `%PDF-` in the first KiB, or a `.pdf` name.
    pub fn kind(&self) -> InputKind {
        match self {
            Source::File(path) => sniff_kind(path),
            Source::Bytes { name, bytes } => sniff_bytes(bytes, Path::new(name)),
        }
    }
}

/// What the document loop reports, in order: `DocumentStarted`, then per page `PageStarted`,
/// `Note`s, `Text` pieces, maybe `Retrying` and more `Text`, and `PageDone` or `PageFailed`.
#[derive(Debug)]
pub enum Event {
    /// A document was opened; `pages` pages will run (the selected ones of a PDF).
    DocumentStarted { path: PathBuf, kind: InputKind, pages: usize },
    /// Generation of page `page` (1-based) of the document's `pages` starts.
    PageStarted { page: usize, pages: usize },
    /// Something worth telling that does not fail the page (e.g. a PDF renderer warning).
    Note { page: usize, message: String },
    /// A piece of the page's output as it is generated (valid UTF-8, special tokens kept).
    Text { page: usize, piece: String },
    /// The page ended without EOS after `tokens` tokens in `mode`; it runs again in base mode.
    Retrying { page: usize, finish: FinishReason, tokens: usize, mode: Mode },
    /// A page is done (also without EOS: see its `finish`).
    PageDone(Box<PageResult>),
    /// A page of a PDF failed; the document goes on with the next page.
    PageFailed { page: usize, error: OcrError },
}

/// The run of a page that was not kept, when the page was retried in base mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherRun {
    pub mode: Mode,
    pub finish: FinishReason,
    pub tokens: usize,
}

/// The model's result for one page.
#[derive(Debug, Clone)]
pub struct PageResult {
    /// 1-based page number (1 for an image).
    pub page: usize,
    /// The image the boxes refer to (for PDFs the rendered page).
    pub image: RgbImage,
    /// Decoded output, special tokens kept, the final EOS removed.
    pub raw: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The mode of the kept run.
    pub mode: Mode,
    /// With a base-mode retry: the run that was not kept.
    pub other_run: Option<OtherRun>,
    pub vision_time: Duration,
    pub generation_time: Duration,
}

impl PageResult {
    /// The page as the output writers take it.
    pub fn generated(&self) -> GeneratedPage<'_> {
        GeneratedPage {
            image: &self.image,
            raw: &self.raw,
            finish_reason: self.finish,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated_tokens,
        }
    }

    /// Tokens generated for this page, both runs counted when it was retried.
    pub fn tokens_spent(&self) -> usize {
        self.generated_tokens + self.other_run.map_or(0, |r| r.tokens)
    }
}

/// A whole document's result: its text and JSON, and counts.
#[derive(Debug, Clone)]
pub struct DocumentResult {
    pub path: PathBuf,
    pub kind: InputKind,
    /// Markdown, plain text, raw output and the JSON pages (figures not written: no links to
    /// crop files in the blocks).
    pub document: Document,
    pub pages: usize,
    pub pages_done: usize,
    pub pages_failed: usize,
    /// Pages that ended without EOS.
    pub pages_flagged: usize,
    /// Tokens generated, retries included.
    pub tokens: usize,
}

impl DocumentResult {
    /// The cleaned markdown of all pages (PDF pages each followed by the page separator).
    pub fn markdown(&self) -> &str {
        self.document.markdown()
    }

    /// The plain text of all pages.
    pub fn text(&self) -> &str {
        self.document.text()
    }
}

/// The loaded model and what the engine needs beside it.
pub struct Ocr {
    model: DeepseekOcr,
}

impl Ocr {
    /// Wraps a loaded model.
    pub fn new(model: DeepseekOcr) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &DeepseekOcr {
        &self.model
    }

    pub fn into_model(self) -> DeepseekOcr {
        self.model
    }

    /// The ids of `tokens` in the model's tokenizer, and the tokens it does not have.
    pub fn token_ids(&self, tokens: &[String]) -> (Vec<u32>, Vec<String>) {
        let mut ids = Vec::new();
        let mut missing = Vec::new();
        for token in tokens {
            match self.model.tokenizer.token_id(token) {
                Some(id) => ids.push(id),
                None => missing.push(token.clone()),
            }
        }
        (ids, missing)
    }

    /// The generation settings of one page.
    pub fn generation_config(&self, options: &OcrOptions, pdf_page: bool) -> GenerationConfig {
        let repeat_guard = options.repeat_guard.rule(pdf_page).map(|rule| RepeatGuard::Window {
            n: rule.n,
            window: rule.window,
            whitelist: self.token_ids(&options.repeat_guard.whitelist).0,
        });
        GenerationConfig {
            max_new_tokens: options.max_new_tokens,
            eos_token_id: options.eos_token_id.unwrap_or(self.model.config.decoder.eos_token_id),
            repeat_guard,
            ..GenerationConfig::default()
        }
    }

    /// Runs an image file or a PDF (told apart by content, then extension), named after the
    /// file's stem.
    pub fn run_file(
        &self,
        path: &Path,
        options: &OcrOptions,
        on_event: impl FnMut(Event) -> ControlFlow<()>,
    ) -> Result<DocumentResult, OcrError> {
        self.run_file_named(path, &safe_stem(path), options, on_event)
    }

    /// Like [`run_file`](Self::run_file); `name` names the figure files the markdown links to.
    pub fn run_file_named(
        &self,
        path: &Path,
        name: &str,
        options: &OcrOptions,
        on_event: impl FnMut(Event) -> ControlFlow<()>,
    ) -> Result<DocumentResult, OcrError> {
        self.run(Source::File(path.to_path_buf()), name, options, on_event)
    }

    /// Runs an image or a PDF, from a file or from memory; `name` names the figure files the
    /// markdown links to.
    ///
    /// `Err` when the document fails as a whole (an image that cannot be read or a model failure
    /// on it, a PDF that cannot be opened, a page selection or page limit it does not meet) or
    /// when `on_event` returned [`ControlFlow::Break`] ([`OcrError::Cancelled`]); a PDF page
    /// that fails is a [`Event::PageFailed`] and an empty page with its error in the result.
    pub fn run(
        &self,
        source: Source,
        name: &str,
        options: &OcrOptions,
        mut on_event: impl FnMut(Event) -> ControlFlow<()>,
    ) -> Result<DocumentResult, OcrError> {
        let doc = self.open(source, name, options)?;
        self.run_document(doc, options, &mut on_event)
    }

    /// Opens a document for running: the options checked, an image decoded or a PDF opened,
    /// the page selection and the page limit applied. Nothing is reported yet.
    pub(crate) fn open(&self, source: Source, name: &str, options: &OcrOptions) -> Result<OpenDocument, OcrError> {
        options.validate().map_err(OcrError::Options)?;
        let path = source.path();
        match source.kind() {
            InputKind::Image => {
                if let Some(selection) = &options.pages {
                    let pages = selection
                        .pages(1)
                        .map_err(|message| OcrError::PageSelection { path: path.clone(), message })?;
                    if pages != [1] {
                        return Err(OcrError::PageSelection {
                            path,
                            message: "an image has one page: the selection must be page 1".to_string(),
                        });
                    }
                }
                let load = dsocr_input::LoadOptions { max_pixels: options.max_image_pixels, ..Default::default() };
                let image = match &source {
                    Source::File(file) => load_image_with(file, &load),
                    Source::Bytes { name, bytes } => load_image_from_memory_with(bytes, name, &load),
                }
                .map_err(|source| OcrError::Image { path: path.clone(), source })?;
                let result = DocumentResult::new(&path, name, DocumentKind::Image, 1);
                Ok(OpenDocument {
                    path,
                    name: name.to_string(),
                    total: 1,
                    pages: vec![1],
                    content: Content::Image(image),
                    result,
                })
            }
            InputKind::Pdf => {
                let pdf = match source {
                    Source::File(file) => PdfDocument::open(file),
                    Source::Bytes { name, bytes } => PdfDocument::from_bytes(bytes, name),
                }
                .map_err(|source| OcrError::Pdf { path: path.clone(), source })?;
                let total = pdf.page_count();
                let pages: Vec<usize> = match &options.pages {
                    Some(selection) => selection
                        .pages(total)
                        .map_err(|message| OcrError::PageSelection { path: path.clone(), message })?,
                    None => (1..=total).collect(),
                };
                if let Some(limit) = options.max_pages.filter(|&limit| pages.len() > limit) {
                    return Err(OcrError::TooManyPages { path, pages: pages.len(), limit });
                }
                let kind = DocumentKind::Pdf { dpi: options.pdf_dpi };
                let result = DocumentResult::new(&path, name, kind, pages.len());
                Ok(OpenDocument { path, name: name.to_string(), total, pages, content: Content::Pdf(pdf), result })
            }
        }
    }

    fn run_document(
        &self,
        doc: OpenDocument,
        options: &OcrOptions,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<DocumentResult, OcrError> {
        let OpenDocument { path, name, total, pages, content, mut result } = doc;
        let path = &path;
        let pdf = matches!(content, Content::Pdf(_));
        emit(on_event, path, content.started(path, pages.len()))?;
        for (&page, rendered) in pages.iter().zip(content.images(path, &pages, options.pdf_dpi)) {
            let outcome = match rendered {
                Ok((image, warnings)) => {
                    for warning in warnings {
                        emit(on_event, path, Event::Note { page, message: format!("renderer: {warning}") })?;
                    }
                    emit(on_event, path, Event::PageStarted { page, pages: total })?;
                    let what = content.what(&name, page, total);
                    self.run_page(path, image, page, &what, pdf, options, on_event)
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(done) => {
                    result.add(&done);
                    emit(on_event, path, Event::PageDone(Box::new(done)))?;
                }
                Err(OcrError::Cancelled { path }) => return Err(OcrError::Cancelled { path }),
                // An image has one page: its failure is the document's.
                Err(error) if !pdf => return Err(error),
                Err(error) => {
                    result.add_failed(&error);
                    emit(on_event, path, Event::PageFailed { page, error })?;
                }
            }
        }
        Ok(result)
    }

    /// One page through the model, with the optional base-mode retry.
    #[allow(clippy::too_many_arguments)]
    fn run_page(
        &self,
        path: &Path,
        image: RgbImage,
        page: usize,
        what: &str,
        pdf_page: bool,
        options: &OcrOptions,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<PageResult, OcrError> {
        let generation = self.generation_config(options, pdf_page);
        let mode = options.mode;
        let first = self.run_model(path, &image, page, what, mode, &generation, options, on_event)?;
        if !wants_retry(options, mode, &first) {
            return Ok(page_result(page, image, first, mode, None));
        }
        let tokens = first.generated_tokens();
        emit(on_event, path, Event::Retrying { page, finish: first.finish, tokens, mode })?;
        let second = self.run_model(path, &image, page, what, Mode::Base, &generation, options, on_event)?;
        Ok(after_retry(page, image, mode, first, second))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_model(
        &self,
        path: &Path,
        image: &RgbImage,
        page: usize,
        what: &str,
        mode: Mode,
        generation: &GenerationConfig,
        options: &OcrOptions,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<OcrResult, OcrError> {
        let request = page_request(image, mode, generation, options);
        let result = self
            .model
            .run(&request, |piece| on_event(Event::Text { page, piece: piece.to_string() }))
            .map_err(|source| OcrError::Model {
                path: path.to_path_buf(),
                page,
                what: what.to_string(),
                source: Box::new(source),
            })?;
        if result.finish == FinishReason::Cancelled {
            return Err(OcrError::Cancelled { path: path.to_path_buf() });
        }
        Ok(result)
    }
}

/// Whether a page's first run is run again in base mode.
pub(crate) fn wants_retry(options: &OcrOptions, mode: Mode, first: &OcrResult) -> bool {
    options.retry_in_base_mode && first.finish != FinishReason::Stop && mode != Mode::Base
}

/// The page after a base-mode retry: the retry if it ended with EOS, else the first run.
pub(crate) fn after_retry(page: usize, image: RgbImage, mode: Mode, first: OcrResult, second: OcrResult) -> PageResult {
    if second.finish == FinishReason::Stop {
        let other = OtherRun { mode, finish: first.finish, tokens: first.generated_tokens() };
        page_result(page, image, second, Mode::Base, Some(other))
    } else {
        // Neither run ended cleanly: keep the first (more detailed) one.
        let other = OtherRun { mode: Mode::Base, finish: second.finish, tokens: second.generated_tokens() };
        page_result(page, image, first, mode, Some(other))
    }
}

/// The model request of one page.
pub(crate) fn page_request(
    image: &RgbImage,
    mode: Mode,
    generation: &GenerationConfig,
    options: &OcrOptions,
) -> OcrRequest {
    let mut request = OcrRequest::new(options.prompt.text(), Some(image.clone()), mode);
    request.max_crops = options.max_crops;
    request.generation = generation.clone();
    request
}

pub(crate) fn page_result(
    page: usize,
    image: RgbImage,
    run: OcrResult,
    mode: Mode,
    other_run: Option<OtherRun>,
) -> PageResult {
    PageResult {
        page,
        image,
        prompt_tokens: run.prompt_ids.len(),
        generated_tokens: run.generated_tokens(),
        raw: run.text,
        finish: run.finish,
        mode,
        other_run,
        vision_time: run.vision_time,
        generation_time: run.generation_time,
    }
}

impl DocumentResult {
    /// An empty result for `path`, named `name`, of `pages` pages.
    fn new(path: &Path, name: &str, kind: DocumentKind, pages: usize) -> Self {
        let mut document = Document::new(name, kind);
        document.set_source(path.display().to_string());
        let kind = if kind.is_pdf() { InputKind::Pdf } else { InputKind::Image };
        Self {
            path: path.to_path_buf(),
            kind,
            document,
            pages,
            pages_done: 0,
            pages_failed: 0,
            pages_flagged: 0,
            tokens: 0,
        }
    }

    /// Records a page that failed: an entry with its reason in the JSON.
    pub(crate) fn add_failed(&mut self, error: &OcrError) {
        self.pages_failed += 1;
        if let Some(page) = error.page() {
            self.document.set_next_page(page);
        }
        // A document of this kind takes any number of pages: this cannot fail.
        let _ = self.document.add_failed(error.page_reason());
    }

    pub(crate) fn add(&mut self, page: &PageResult) {
        self.pages_done += 1;
        self.tokens += page.tokens_spent();
        if page.finish != FinishReason::Stop {
            self.pages_flagged += 1;
        }
        // The document was made for this kind of input: an image gets its one page here.
        self.document.set_next_page(page.page);
        let _ = self.document.add_page(page.generated());
    }
}

/// Hands `event` to the handler; its `Break` becomes [`OcrError::Cancelled`].
fn emit(on_event: &mut dyn FnMut(Event) -> ControlFlow<()>, path: &Path, event: Event) -> Result<(), OcrError> {
    match on_event(event) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(OcrError::Cancelled { path: path.to_path_buf() }),
    }
}

/// A page's image and the renderer's warnings about it.
pub(crate) type PageImage = (RgbImage, Vec<String>);

/// What a document holds to run: its image, or its opened PDF.
pub(crate) enum Content {
    Image(RgbImage),
    Pdf(PdfDocument),
}

/// A document opened by [`Ocr::open`]: its pages to run and the result being built.
pub(crate) struct OpenDocument {
    pub path: PathBuf,
    pub name: String,
    /// Pages of the whole document (1 for an image).
    pub total: usize,
    /// The pages to run (1-based, in order).
    pub pages: Vec<usize>,
    pub content: Content,
    pub result: DocumentResult,
}

impl Content {
    /// The `DocumentStarted` event of a document of `pages` pages to run.
    pub fn started(&self, path: &Path, pages: usize) -> Event {
        let kind = if matches!(self, Content::Pdf(_)) { InputKind::Pdf } else { InputKind::Image };
        Event::DocumentStarted { path: path.to_path_buf(), kind, pages }
    }

    /// How messages name page `page`: `page 2/5` of a PDF, the name of an image.
    pub fn what(&self, name: &str, page: usize, total: usize) -> String {
        match self {
            Content::Pdf(_) => format!("page {page}/{total}"),
            Content::Image(_) => name.to_string(),
        }
    }

    /// The images of `pages` (1-based), in order, with renderer warnings (PDF pages rendered one
    /// at a time as the iterator is advanced, sharing font caches).
    pub fn images<'a>(
        &'a self,
        path: &Path,
        pages: &[usize],
        dpi: f32,
    ) -> Box<dyn Iterator<Item = Result<PageImage, OcrError>> + 'a> {
        match self {
            Content::Image(image) => Box::new(std::iter::once(Ok((image.clone(), Vec::new())))),
            Content::Pdf(pdf) => {
                let indices = pages.iter().map(|p| p - 1).collect();
                let (path, pages) = (path.to_path_buf(), pages.to_vec());
                Box::new(pdf.pages_at(dpi, indices).zip(pages).map(move |(r, page)| {
                    r.map(|r| (r.image, r.warnings)).map_err(|source| OcrError::PdfPage {
                        path: path.clone(),
                        page,
                        source,
                    })
                }))
            }
        }
    }
}

impl OpenDocument {
    pub fn is_pdf(&self) -> bool {
        matches!(self.content, Content::Pdf(_))
    }
}
