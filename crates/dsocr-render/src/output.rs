//! Output files (spec §8.4, issue 4): names, atomic writes and the per-input writer.
//!
//! For an input named `<name>` (see [`safe_stem`]) in the output folder `DIR`:
//!
//! | file | content |
//! |---|---|
//! | `<name>.mmd` | cleaned markdown ([`crate::markdown::to_markdown`]) |
//! | `<name>_det.mmd` | raw output with the grounding tags, EOS removed |
//! | `<name>.json` | pages → blocks ([`crate::json`]) |
//! | `<name>.txt` | plain text, only with [`WriterOptions::plain_text`] |
//! | `<name>_boxes.jpg` | overlay of a single image ([`crate::draw::draw_overlay`]) |
//! | `<name>_page<N>_boxes.jpg` | overlay of PDF page `N` (1-based) |
//! | `<name>_layouts.pdf` | all PDF page overlays in one PDF, only with [`WriterOptions::layouts_pdf`] |
//! | `images/<name>_<k>.jpg` | figure `k` of a single image |
//! | `images/<name>_<N>_<k>.jpg` | figure `k` of PDF page `N` (1-based) |
//!
//! PDF `.mmd`/`_det.mmd`/`.txt` files hold every page followed by
//! [`PAGE_SPLIT`](crate::markdown::PAGE_SPLIT) (upstream: `content + "\n\n<--- Page Split
//! --->\n"`). Unlike upstream, a page without EOS is kept (and flagged in the JSON), and a page
//! that failed (e.g. did not render) is kept as an empty page with its error in the JSON, so page
//! numbers stay aligned. Page numbers in file names and JSON are 1-based (upstream's `{page}`
//! in figure names is a 0-based index of kept pages).
//!
//! Every file is written atomically ([`write_atomic`]): a temporary file in the same folder,
//! flushed to disk, then renamed over the target, so a file is either absent, the old version,
//! or complete. Names are sanitised ([`sanitize_name`]) so nothing is written outside `DIR`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::RgbImage;

use crate::draw::{draw_overlay, encode_jpeg, figure_crops};
use crate::json::{DocumentJson, DocumentKindJson, FinishReason, PageJson};
use crate::markdown::PAGE_SPLIT;
use crate::page::{render_page, PageKind, PageOutput, PageStats};

/// Errors while writing outputs; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: cannot encode image: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("{}: cannot serialise JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{name}: an image input has exactly one page")]
    TooManyPages { name: String },
}

/// Longest stem we produce, in bytes (suffixes like `_page12345_boxes.jpg` must still fit in
/// the usual 255-byte file-name limit).
pub const MAX_STEM_BYTES: usize = 150;

/// Output name for an input path: the file name without its last extension, sanitised by
/// [`sanitize_name`]. Directories are ignored, so `../../etc/passwd` gives `passwd` and
/// `/abs/x.png` gives `x`.
pub fn safe_stem(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    sanitize_name(&stem)
}

/// Makes `name` safe as a file-name component and as a markdown link target: keeps Unicode
/// letters and digits and `-_.+@=,`; every other character (path separators, whitespace,
/// brackets, quotes, control characters, …) becomes `_`; runs of dots become one dot and
/// leading and trailing dots are removed (no `..`, no hidden files); at most [`MAX_STEM_BYTES`] bytes; an empty result
/// becomes `input`.
pub fn sanitize_name(name: &str) -> String {
    let mapped: String =
        name.chars().map(|c| if c.is_alphanumeric() || "-_.+@=,".contains(c) { c } else { '_' }).collect();
    // Collapse dot runs (no `..` anywhere), then drop leading/trailing dots.
    let mut dotted = String::with_capacity(mapped.len());
    for c in mapped.chars() {
        if !(c == '.' && dotted.ends_with('.')) {
            dotted.push(c);
        }
    }
    let trimmed = dotted.trim_matches('.');
    let mut out = String::new();
    for c in trimmed.chars() {
        if out.len() + c.len_utf8() > MAX_STEM_BYTES {
            break;
        }
        out.push(c);
    }
    let out = out.trim_end_matches('.').to_string();
    if out.is_empty() {
        "input".to_string()
    } else {
        out
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically (temporary file in the same folder, `fsync`, rename).
/// On error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), OutputError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], with the content produced by `write` (streamed through a buffer).
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), OutputError> {
    let path = path.as_ref();
    let io_err = |source| OutputError::Io { path: path.to_path_buf(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| io_err(io::Error::other("no file name")))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = (|| {
        let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    Ok(())
}

/// What the input is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DocumentKind {
    /// A single image: one page, no page separators.
    Image,
    /// A PDF rendered at `dpi` (used for the layouts PDF page size and recorded in the JSON).
    Pdf { dpi: f32 },
}

impl DocumentKind {
    pub fn is_pdf(self) -> bool {
        matches!(self, DocumentKind::Pdf { .. })
    }
}

/// Which optional files to write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriterOptions {
    /// JPEG quality of overlays and crops (upstream's layouts PDF uses 95).
    pub jpeg_quality: u8,
    /// Write `<name>_boxes.jpg` / `<name>_page<N>_boxes.jpg`.
    pub overlays: bool,
    /// Write figure crops under `images/`.
    pub figures: bool,
    /// Also write `<name>.txt` ([`to_plain_text`]).
    pub plain_text: bool,
    /// For PDFs, also write `<name>_layouts.pdf` (needs `overlays`; built from the overlay files).
    pub layouts_pdf: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self { jpeg_quality: 95, overlays: true, figures: true, plain_text: false, layouts_pdf: false }
    }
}

/// The model's result for one page.
#[derive(Debug, Clone, Copy)]
pub struct GeneratedPage<'a> {
    /// The original image (for PDFs the rendered page): boxes refer to it, crops come from it.
    pub image: &'a RgbImage,
    /// Decoded output, special tokens kept (a trailing EOS string is removed here).
    pub raw: &'a str,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
}

impl GeneratedPage<'_> {
    /// The generation facts the JSON records.
    pub fn stats(&self) -> PageStats {
        PageStats {
            finish_reason: self.finish_reason,
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.generated_tokens,
        }
    }
}

/// One page handed to [`DocumentWriter::add_page`].
#[derive(Debug, Clone)]
pub enum PageInput<'a> {
    Generated(GeneratedPage<'a>),
    /// The page has no result (e.g. a PDF page that does not render); kept as an empty page.
    Failed {
        error: String,
    },
}

/// Paths written for one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenFiles {
    pub markdown: PathBuf,
    pub raw: PathBuf,
    pub json: PathBuf,
    pub text: Option<PathBuf>,
    pub overlays: Vec<PathBuf>,
    pub figures: Vec<PathBuf>,
    pub layouts_pdf: Option<PathBuf>,
}

/// One document's text and JSON, page by page, in memory: what stdout, a server's answer and
/// [`DocumentWriter`]'s text files hold. Each page goes through [`render_page`]; PDF pages are
/// each followed by [`PAGE_SPLIT`].
#[derive(Debug, Clone)]
pub struct Document {
    name: String,
    kind: DocumentKind,
    source: Option<String>,
    raw: String,
    markdown: String,
    text: String,
    pages: Vec<PageJson>,
    next_page: usize,
}

impl Document {
    /// An empty document; `name` (passed through [`sanitize_name`]) names its figure files.
    pub fn new(name: &str, kind: DocumentKind) -> Self {
        Self {
            name: sanitize_name(name),
            kind,
            source: None,
            raw: String::new(),
            markdown: String::new(),
            text: String::new(),
            pages: Vec::new(),
            next_page: 1,
        }
    }

    /// Numbers the next page added `page` (1-based): for a selection of a PDF's pages. Pages
    /// added after it count on from there.
    pub fn set_next_page(&mut self, page: usize) {
        self.next_page = page.max(1);
    }

    /// Records the input as given (the JSON's `source`).
    pub fn set_source(&mut self, source: impl Into<String>) {
        self.source = Some(source.into());
    }

    /// The sanitised name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> DocumentKind {
        self.kind
    }

    /// Number of the page the next [`add_page`](Self::add_page) adds (1-based).
    pub fn next_page(&self) -> usize {
        self.next_page
    }

    /// The stem of page `page`'s figure files: `<name>` for an image, `<name>_<page>` for a PDF.
    pub fn figure_stem(&self, page: usize) -> String {
        match self.kind {
            DocumentKind::Image => self.name.clone(),
            DocumentKind::Pdf { .. } => format!("{}_{page}", self.name),
        }
    }

    /// Renders the next page of `self` (no files: blocks have no `figure`).
    pub fn render(&self, raw: &str, size: (u32, u32)) -> PageOutput {
        let kind = if self.kind.is_pdf() { PageKind::PdfPage } else { PageKind::Image };
        render_page(raw, size, &self.figure_stem(self.next_page()), kind)
    }

    /// Adds a generated page, rendered without files.
    pub fn add_page(&mut self, page: GeneratedPage<'_>) -> Result<&PageJson, OutputError> {
        let rendered = self.render(page.raw, page.image.dimensions());
        let json = rendered.to_json(self.next_page(), page.stats(), &[]);
        self.push(json, &rendered.raw, &rendered.text)
    }

    /// Adds a page that has no result, kept as an empty page with its error.
    pub fn add_failed(&mut self, error: String) -> Result<&PageJson, OutputError> {
        let json = PageJson::failed(self.next_page(), error);
        self.push(json, "", "")
    }

    /// Appends a page's JSON, raw output and plain text (its markdown is in the JSON).
    pub fn push(&mut self, json: PageJson, raw: &str, text: &str) -> Result<&PageJson, OutputError> {
        if !self.kind.is_pdf() && !self.pages.is_empty() {
            return Err(OutputError::TooManyPages { name: self.name.clone() });
        }
        if self.kind.is_pdf() {
            for (acc, s) in [(&mut self.raw, raw), (&mut self.markdown, json.markdown.as_str()), (&mut self.text, text)]
            {
                acc.push_str(s);
                acc.push_str(PAGE_SPLIT);
            }
        } else {
            self.raw = raw.to_string();
            self.markdown = json.markdown.clone();
            self.text = text.to_string();
        }
        self.next_page = json.page + 1;
        self.pages.push(json);
        Ok(&self.pages[self.pages.len() - 1])
    }

    /// The raw output of all pages (`_det.mmd`).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The cleaned markdown of all pages (`.mmd`).
    pub fn markdown(&self) -> &str {
        &self.markdown
    }

    /// The plain text of all pages (`.txt`).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn pages(&self) -> &[PageJson] {
        &self.pages
    }

    /// The JSON document of the pages so far.
    pub fn to_json(&self) -> DocumentJson {
        let (kind, dpi) = match self.kind {
            DocumentKind::Image => (DocumentKindJson::Image, None),
            DocumentKind::Pdf { dpi } => (DocumentKindJson::Pdf, Some(dpi)),
        };
        DocumentJson {
            name: self.name.clone(),
            source: self.source.clone(),
            kind,
            dpi,
            finished: None,
            pages: self.pages.clone(),
        }
    }
}

/// Writes the outputs of one input, page by page: figure crops and overlays are written in
/// [`add_page`](Self::add_page), the text files and JSON in [`finish`](Self::finish) (and in
/// [`flush`](Self::flush), for checkpoints during long documents). The text comes from the
/// [`Document`] it fills.
#[derive(Debug)]
pub struct DocumentWriter {
    out_dir: PathBuf,
    options: WriterOptions,
    doc: Document,
    files: WrittenFiles,
    /// Overlay files of PDF pages with their pixel size, for the layouts PDF.
    layout_pages: Vec<(PathBuf, u32, u32)>,
}

impl DocumentWriter {
    /// Prepares `out_dir` (created if missing, with `images/` when figures are on). `name` is
    /// passed through [`sanitize_name`].
    pub fn new(
        out_dir: impl AsRef<Path>,
        name: &str,
        kind: DocumentKind,
        options: WriterOptions,
    ) -> Result<Self, OutputError> {
        let out_dir = out_dir.as_ref().to_path_buf();
        let create =
            |p: &Path| fs::create_dir_all(p).map_err(|source| OutputError::Io { path: p.to_path_buf(), source });
        create(&out_dir)?;
        if options.figures {
            create(&out_dir.join("images"))?;
        }
        let doc = Document::new(name, kind);
        let name = doc.name();
        let files = WrittenFiles {
            markdown: out_dir.join(format!("{name}.mmd")),
            raw: out_dir.join(format!("{name}_det.mmd")),
            json: out_dir.join(format!("{name}.json")),
            ..Default::default()
        };
        Ok(Self { out_dir, options, doc, files, layout_pages: Vec::new() })
    }

    /// Records the input as given (the JSON's `source`).
    pub fn set_source(&mut self, source: impl Into<String>) {
        self.doc.set_source(source);
    }

    /// The sanitised output name.
    pub fn name(&self) -> &str {
        self.doc.name()
    }

    /// Numbers the next page `page` (see [`Document::set_next_page`]).
    pub fn set_next_page(&mut self, page: usize) {
        self.doc.set_next_page(page);
    }

    /// The text and JSON of the pages so far.
    pub fn document(&self) -> &Document {
        &self.doc
    }

    /// Processes the next page (pages are numbered 1, 2, … in call order unless
    /// [`set_next_page`](Self::set_next_page) says otherwise): writes its figure
    /// crops and overlay now, keeps its text and JSON for [`finish`](Self::finish).
    pub fn add_page(&mut self, page: PageInput<'_>) -> Result<&PageJson, OutputError> {
        match page {
            PageInput::Failed { error } => self.doc.add_failed(error),
            PageInput::Generated(g) => {
                if !self.doc.kind().is_pdf() && !self.doc.pages().is_empty() {
                    return Err(OutputError::TooManyPages { name: self.doc.name().to_string() });
                }
                let page_no = self.doc.next_page();
                let rendered = self.doc.render(g.raw, g.image.dimensions());
                let (figures, crop_warnings) = self.write_page_files(page_no, g.image, &rendered)?;
                let mut json = rendered.to_json(page_no, g.stats(), &figures);
                json.warnings.extend(crop_warnings);
                self.doc.push(json, &rendered.raw, &rendered.text)
            }
        }
    }

    /// Writes a page's figure crops and overlay; returns the crop file linked to each block and
    /// the warnings of crops that could not be made.
    fn write_page_files(
        &mut self,
        page_no: usize,
        image: &RgbImage,
        rendered: &PageOutput,
    ) -> Result<(Vec<Option<String>>, Vec<String>), OutputError> {
        let blocks = &rendered.blocks;
        // Figure crops: images/<figure_stem>_<k>.jpg (+ _<j> for further boxes of one match).
        let mut linked: Vec<Option<String>> = vec![None; blocks.len()];
        let mut warnings = Vec::new();
        if self.options.figures {
            let figure_stem = self.doc.figure_stem(page_no);
            let (crops, crop_warnings) = figure_crops(image, blocks);
            warnings = crop_warnings;
            for crop in crops {
                let rel = format!("images/{}", crop.file_name(&figure_stem));
                let path = self.out_dir.join(&rel);
                let bytes = encode_jpeg(&crop.image, self.options.jpeg_quality)
                    .map_err(|source| OutputError::Image { path: path.clone(), source })?;
                write_atomic(&path, &bytes)?;
                self.files.figures.push(path);
                if crop.box_index == 0 {
                    if let Some(b) = blocks.iter().position(|b| b.image_index == Some(crop.image_index)) {
                        linked[b] = Some(rel);
                    }
                }
            }
        }

        if self.options.overlays {
            let name = self.doc.name();
            let file = match self.doc.kind() {
                DocumentKind::Image => format!("{name}_boxes.jpg"),
                DocumentKind::Pdf { .. } => format!("{name}_page{page_no}_boxes.jpg"),
            };
            let path = self.out_dir.join(file);
            let overlay = draw_overlay(image, blocks);
            let bytes = encode_jpeg(&overlay, self.options.jpeg_quality)
                .map_err(|source| OutputError::Image { path: path.clone(), source })?;
            write_atomic(&path, &bytes)?;
            self.files.overlays.push(path.clone());
            self.layout_pages.push((path, rendered.width, rendered.height));
        }
        Ok((linked, warnings))
    }

    /// The JSON document of the pages so far.
    pub fn document_json(&self) -> DocumentJson {
        self.doc.to_json()
    }

    /// Writes `.mmd`, `_det.mmd`, `.txt` (if enabled) and `.json` with the pages so far (a
    /// checkpoint: the JSON says `"finished": false`).
    pub fn flush(&mut self) -> Result<(), OutputError> {
        self.write_text_and_json(false)
    }

    fn write_text_and_json(&mut self, finished: bool) -> Result<(), OutputError> {
        write_atomic(&self.files.raw, self.doc.raw().as_bytes())?;
        write_atomic(&self.files.markdown, self.doc.markdown().as_bytes())?;
        if self.options.plain_text {
            let path = self.out_dir.join(format!("{}.txt", self.doc.name()));
            write_atomic(&path, self.doc.text().as_bytes())?;
            self.files.text = Some(path);
        }
        let json = DocumentJson { finished: Some(finished), ..self.document_json() };
        let json = serde_json::to_vec_pretty(&json)
            .map_err(|source| OutputError::Json { path: self.files.json.clone(), source })?;
        write_atomic(&self.files.json, &json)
    }

    /// Writes the text files, the JSON (`"finished": true`: every page of the input is in) and
    /// (PDFs, if enabled) the layouts PDF.
    pub fn finish(self) -> Result<WrittenFiles, OutputError> {
        self.complete(true)
    }

    /// [`finish`](Self::finish) for a document that stopped early (interrupted): the same
    /// files, with `"finished": false` in the JSON.
    pub fn finish_incomplete(self) -> Result<WrittenFiles, OutputError> {
        self.complete(false)
    }

    fn complete(mut self, finished: bool) -> Result<WrittenFiles, OutputError> {
        self.write_text_and_json(finished)?;
        if let DocumentKind::Pdf { dpi } = self.doc.kind() {
            if self.options.layouts_pdf && self.options.overlays && !self.layout_pages.is_empty() {
                let path = self.out_dir.join(format!("{}_layouts.pdf", self.doc.name()));
                write_layouts_pdf(&path, &self.layout_pages, dpi)?;
                self.files.layouts_pdf = Some(path);
            }
        }
        Ok(self.files)
    }
}

/// Writes all outputs of a single image.
pub fn write_image_result(
    out_dir: impl AsRef<Path>,
    name: &str,
    page: GeneratedPage<'_>,
    options: WriterOptions,
) -> Result<WrittenFiles, OutputError> {
    let mut w = DocumentWriter::new(out_dir, name, DocumentKind::Image, options)?;
    w.add_page(PageInput::Generated(page))?;
    w.finish()
}

/// Writes all outputs of a document from its pages in order.
pub fn write_document<'a>(
    out_dir: impl AsRef<Path>,
    name: &str,
    kind: DocumentKind,
    pages: impl IntoIterator<Item = PageInput<'a>>,
    options: WriterOptions,
) -> Result<WrittenFiles, OutputError> {
    let mut w = DocumentWriter::new(out_dir, name, kind, options)?;
    for page in pages {
        w.add_page(page)?;
    }
    w.finish()
}

/// A minimal PDF with one JPEG (DCTDecode) image per page, each page `px · 72 / dpi` points
/// (the size of the original PDF page), like upstream's img2pdf layouts file.
fn write_layouts_pdf(path: &Path, pages: &[(PathBuf, u32, u32)], dpi: f32) -> Result<(), OutputError> {
    // Read the JPEGs first so that a missing file is reported with its own path.
    let mut jpegs = Vec::with_capacity(pages.len());
    for (p, w, h) in pages {
        let bytes = fs::read(p).map_err(|source| OutputError::Io { path: p.clone(), source })?;
        jpegs.push((bytes, *w, *h));
    }
    write_atomic_with(path, |out| {
        let mut w = CountingWriter { inner: out, written: 0 };
        let mut offsets: Vec<u64> = Vec::new();
        w.write_all(b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n")?;
        let n = jpegs.len();
        // Objects: 1 catalog, 2 pages, then per page i: 3+3i page, 4+3i content, 5+3i image.
        offsets.push(w.written);
        w.write_all(b"1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n")?;
        offsets.push(w.written);
        let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 3 * i)).collect();
        write!(w, "2 0 obj\n<< /Type /Pages /Kids [{}] /Count {n} >>\nendobj\n", kids.join(" "))?;
        let scale = 72.0 / dpi as f64;
        for (i, (jpeg, pw, ph)) in jpegs.iter().enumerate() {
            let (page_obj, content_obj, image_obj) = (3 + 3 * i, 4 + 3 * i, 5 + 3 * i);
            let (wpt, hpt) = (*pw as f64 * scale, *ph as f64 * scale);
            offsets.push(w.written);
            write!(
                w,
                "{page_obj} 0 obj\n<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {wpt:.4} {hpt:.4}] \
                 /Resources << /XObject << /Im0 {image_obj} 0 R >> >> /Contents {content_obj} 0 R >>\nendobj\n"
            )?;
            let content = format!("q {wpt:.4} 0 0 {hpt:.4} 0 0 cm /Im0 Do Q");
            offsets.push(w.written);
            write!(w, "{content_obj} 0 obj\n<< /Length {} >>\nstream\n{content}\nendstream\nendobj\n", content.len())?;
            offsets.push(w.written);
            write!(
                w,
                "{image_obj} 0 obj\n<< /Type /XObject /Subtype /Image /Width {pw} /Height {ph} \
                 /ColorSpace /DeviceRGB /BitsPerComponent 8 /Filter /DCTDecode /Length {} >>\nstream\n",
                jpeg.len()
            )?;
            w.write_all(jpeg)?;
            w.write_all(b"\nendstream\nendobj\n")?;
        }
        let xref = w.written;
        write!(w, "xref\n0 {}\n0000000000 65535 f \n", offsets.len() + 1)?;
        for off in &offsets {
            writeln!(w, "{off:010} 00000 n ")?;
        }
        writeln!(w, "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF", offsets.len() + 1)?;
        Ok(())
    })
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize() {
        assert_eq!(sanitize_name(".."), "input");
        assert_eq!(sanitize_name("a/b\\c:d"), "a_b_c_d");
        assert_eq!(sanitize_name("...hidden."), "hidden");
        assert_eq!(sanitize_name("../../evil"), "_._evil");
        assert_eq!(sanitize_name("a..b...c"), "a.b.c");
        assert_eq!(sanitize_name("x\u{0}y\nz"), "x_y_z");
        let long = "é".repeat(200);
        let s = sanitize_name(&long);
        assert!(s.len() <= MAX_STEM_BYTES && s.chars().all(|c| c == 'é'));
    }
}
