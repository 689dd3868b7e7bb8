//! PDF pages to RGB images, natively (pure Rust, [`hayro`]).
//!
//! The official PDF script rasterises with PyMuPDF: `page.get_pixmap(matrix=Matrix(2, 2),
//! alpha=False)`, i.e. 144 DPI on a white background (spec §3.1). The pixel size follows MuPDF's
//! `fz_round_rect` of the scaled page box: `floor(x0·s + 0.001)` .. `ceil(x1·s − 0.001)` with the
//! box starting at 0, so `W = ceil(w_pt·s − 0.001)` (f32), `s = dpi / 72 · UserUnit`. US-Letter
//! gives 1224×1584, A4 (595.276×841.89 pt) 1191×1684, a 595×842 pt page 1190×1684.
//!
//! The page box is the crop box intersected with the media box, rotated by `/Rotate`, as in
//! MuPDF. Pixels differ from MuPDF's (another rasteriser and anti-aliasing); sizes do not.
//!
//! Errors: a file that cannot be read, parsed or decrypted is a [`PdfError`] (naming the file);
//! a page that cannot be rendered is a [`PageError`] (naming the file and the 1-based page), so
//! a caller can skip that page and go on. Renderer panics are caught and turned into errors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hayro::hayro_interpret::util::TransformExt;
use hayro::hayro_interpret::{InterpreterSettings, InterpreterWarning};
use hayro::hayro_syntax::page::Page;
use hayro::hayro_syntax::{LoadPdfError, Pdf};
use hayro::kurbo::Affine;
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::vello_cpu::{Pixmap, RasterizerSettings, RenderContext, Resources, TargetInit};
use hayro::{render_into, RenderCache, RenderSettings};
use image::RgbImage;

use crate::error::panic_message;

/// The official scripts' resolution (`Matrix(2, 2)` = 144 / 72).
pub const DEFAULT_DPI: f32 = 144.0;

/// Largest page we rasterise, in pixels (1 GiB of RGBA). Larger pages give
/// [`PageError::TooLarge`] instead of exhausting memory.
pub const MAX_PAGE_PIXELS: u64 = 1 << 28;

/// A document-level failure: nothing of this file can be rendered.
#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a readable PDF (corrupt, truncated or not a PDF)", path.display())]
    Corrupt { path: PathBuf },
    #[error("{}: encrypted PDF that cannot be opened without a password ({reason})", path.display())]
    Encrypted { path: PathBuf, reason: String },
    #[error("{}: the PDF has no pages", path.display())]
    NoPages { path: PathBuf },
    #[error("{}: the PDF parser panicked: {message}", path.display())]
    Panicked { path: PathBuf, message: String },
    #[error("invalid DPI {dpi} (must be finite and > 0)")]
    InvalidDpi { dpi: f32 },
}

/// A page-level failure; `page` is 1-based.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("{}: page {page} does not exist (the document has {count} pages)", path.display())]
    OutOfRange { path: PathBuf, page: usize, count: usize },
    #[error("{}: page {page}: {width}x{height} px at {dpi} DPI is too large to render", path.display())]
    TooLarge { path: PathBuf, page: usize, width: u64, height: u64, dpi: f32 },
    #[error("{}: page {page}: the content stream cannot be decoded", path.display())]
    UnreadableContent { path: PathBuf, page: usize },
    #[error("{}: page {page}: the renderer panicked: {message}", path.display())]
    Panicked { path: PathBuf, page: usize, message: String },
    #[error("invalid DPI {dpi} (must be finite and > 0)")]
    InvalidDpi { dpi: f32 },
}

/// One rendered page.
#[derive(Debug, Clone)]
pub struct RenderedPage {
    /// 0-based page index.
    pub index: usize,
    /// RGB on white (no alpha), size per [`pixel_size`].
    pub image: RgbImage,
    /// Non-fatal renderer warnings (unsupported font, undecodable image, ...): the page was
    /// rendered, possibly with parts missing.
    pub warnings: Vec<String>,
}

/// Pixel size of a `width_pt × height_pt` page box at `dpi`, rounded like MuPDF's
/// `fz_round_rect` (box origin at 0): `ceil(v · dpi/72 − 0.001)` in f32, at least 1.
pub fn pixel_size(width_pt: f32, height_pt: f32, dpi: f32) -> (u64, u64) {
    let s = dpi / 72.0;
    let round = |v: f32| ((v * s - 0.001).ceil().max(1.0)) as u64;
    (round(width_pt), round(height_pt))
}

/// An opened PDF.
pub struct PdfDocument {
    path: PathBuf,
    pdf: Pdf,
}

impl std::fmt::Debug for PdfDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PdfDocument").field("path", &self.path).field("pages", &self.page_count()).finish()
    }
}

impl PdfDocument {
    /// Reads and parses `path`. Encrypted files open when the user password is empty (as
    /// MuPDF does); otherwise [`PdfError::Encrypted`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PdfError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PdfError::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(bytes, path)
    }

    /// Parses PDF bytes; `path` is only used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, path: impl Into<PathBuf>) -> Result<Self, PdfError> {
        let path = path.into();
        let loaded = catch_unwind(AssertUnwindSafe(|| Pdf::new(bytes)));
        let pdf = match loaded {
            Ok(Ok(pdf)) => pdf,
            Ok(Err(LoadPdfError::Decryption(e))) => {
                return Err(PdfError::Encrypted { path, reason: format!("{e:?}") });
            }
            Ok(Err(LoadPdfError::Invalid)) => return Err(PdfError::Corrupt { path }),
            Err(payload) => return Err(PdfError::Panicked { path, message: panic_message(payload.as_ref()) }),
        };
        let doc = Self { path, pdf };
        if doc.page_count() == 0 {
            return Err(PdfError::NoPages { path: doc.path });
        }
        Ok(doc)
    }

    /// The path given at opening.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn page_count(&self) -> usize {
        self.pdf.pages().len()
    }

    /// Page box in points after crop box, `/Rotate` and `/UserUnit` (what MuPDF's
    /// `page.rect` reports).
    pub fn page_size_points(&self, index: usize) -> Result<(f32, f32), PageError> {
        let page = self.page(index)?;
        let (w, h) = page.render_dimensions();
        let unit = user_unit(page);
        Ok((w * unit, h * unit))
    }

    /// Pixel size of page `index` at `dpi` (see [`pixel_size`]).
    pub fn page_pixel_size(&self, index: usize, dpi: f32) -> Result<(u32, u32), PageError> {
        check_dpi(dpi).map_err(|dpi| PageError::InvalidDpi { dpi })?;
        let (w, h) = self.page_size_points(index)?;
        let (pw, ph) = pixel_size(w, h, dpi);
        self.check_size(index, pw, ph, dpi)
    }

    /// Renders page `index` (0-based) at `dpi`.
    pub fn render_page(&self, index: usize, dpi: f32) -> Result<RenderedPage, PageError> {
        let cache = RenderCache::new();
        self.render_with_cache(index, dpi, &cache)
    }

    /// Renders all pages in order, sharing font caches between pages. A failing page yields an
    /// `Err` item and the iteration goes on.
    pub fn pages(&self, dpi: f32) -> PageIter<'_> {
        self.pages_at(dpi, (0..self.page_count()).collect())
    }

    /// Renders the pages `indices` (0-based), in the order given, sharing font caches like
    /// [`pages`](Self::pages). An index past the end yields [`PageError::OutOfRange`].
    pub fn pages_at(&self, dpi: f32, indices: Vec<usize>) -> PageIter<'_> {
        PageIter { doc: self, dpi, indices, next: 0, cache: RenderCache::new() }
    }

    fn page(&self, index: usize) -> Result<&Page<'_>, PageError> {
        let pages = self.pdf.pages();
        pages.get(index).ok_or_else(|| PageError::OutOfRange {
            path: self.path.clone(),
            page: index + 1,
            count: pages.len(),
        })
    }

    fn check_size(&self, index: usize, w: u64, h: u64, dpi: f32) -> Result<(u32, u32), PageError> {
        if w > u16::MAX as u64 || h > u16::MAX as u64 || w * h > MAX_PAGE_PIXELS {
            return Err(PageError::TooLarge { path: self.path.clone(), page: index + 1, width: w, height: h, dpi });
        }
        Ok((w as u32, h as u32))
    }

    fn render_with_cache<'a>(
        &'a self,
        index: usize,
        dpi: f32,
        cache: &RenderCache<'a>,
    ) -> Result<RenderedPage, PageError> {
        let (w, h) = self.page_pixel_size(index, dpi)?;
        let page = self.page(index)?;
        let page_no = index + 1;
        let path = || self.path.clone();

        let warnings: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = warnings.clone();
        let settings = InterpreterSettings {
            warning_sink: Arc::new(move |w: InterpreterWarning| {
                if let Ok(mut v) = sink.lock() {
                    let msg = format!("{w:?}");
                    if !v.contains(&msg) {
                        v.push(msg);
                    }
                }
            }),
            ..Default::default()
        };

        let result = catch_unwind(AssertUnwindSafe(|| {
            // A /Contents entry that does not decode renders as a blank page in hayro; MuPDF
            // reports an error for it. Report it rather than return a silent blank page.
            if page.raw().contains_key(b"Contents") && page.page_stream().is_none() {
                return None;
            }
            let s = (dpi / 72.0 * user_unit(page)) as f64;
            let transform = Affine::scale(s) * page.initial_transform(true).to_kurbo();
            let mut ctx = RenderContext::new(w as u16, h as u16);
            render_into(page, cache, &settings, &RenderSettings::default(), &mut ctx, transform);
            ctx.flush();
            let mut pixmap = Pixmap::new(w as u16, h as u16);
            ctx.render_with(
                &mut pixmap,
                &mut Resources::default(),
                RasterizerSettings { target_init: TargetInit::Clear(WHITE), ..Default::default() },
            );
            Some(pixmap)
        }));
        let pixmap = match result {
            Ok(Some(p)) => p,
            Ok(None) => return Err(PageError::UnreadableContent { path: path(), page: page_no }),
            Err(payload) => {
                return Err(PageError::Panicked {
                    path: path(),
                    page: page_no,
                    message: panic_message(payload.as_ref()),
                });
            }
        };

        // Premultiplied RGBA over an opaque white clear: alpha is 255 everywhere, so the colour
        // channels are the straight RGB values.
        let rgba = pixmap.data_as_u8_slice();
        let mut rgb = Vec::with_capacity(w as usize * h as usize * 3);
        for px in rgba.chunks_exact(4) {
            rgb.extend_from_slice(&px[..3]);
        }
        let image = RgbImage::from_raw(w, h, rgb).ok_or_else(|| PageError::Panicked {
            path: path(),
            page: page_no,
            message: "pixmap size mismatch".into(),
        })?;
        let warnings = warnings.lock().map(|v| v.clone()).unwrap_or_default();
        Ok(RenderedPage { index, image, warnings })
    }
}

/// Iterator over rendered pages (see [`PdfDocument::pages`]).
pub struct PageIter<'a> {
    doc: &'a PdfDocument,
    dpi: f32,
    indices: Vec<usize>,
    next: usize,
    cache: RenderCache<'a>,
}

impl Iterator for PageIter<'_> {
    type Item = Result<RenderedPage, PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let index = *self.indices.get(self.next)?;
        self.next += 1;
        Some(self.doc.render_with_cache(index, self.dpi, &self.cache))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.indices.len().saturating_sub(self.next);
        (n, Some(n))
    }
}

/// Number of pages of the PDF at `path`.
pub fn page_count(path: impl AsRef<Path>) -> Result<usize, PdfError> {
    Ok(PdfDocument::open(path)?.page_count())
}

/// Renders every page of `path` at `dpi`. The outer error is about the file; each page has its
/// own result. Holds all pages in memory: prefer [`PdfDocument::pages`] for long documents.
pub fn render_pdf(path: impl AsRef<Path>, dpi: f32) -> Result<Vec<Result<RgbImage, PageError>>, PdfError> {
    check_dpi(dpi).map_err(|dpi| PdfError::InvalidDpi { dpi })?;
    let doc = PdfDocument::open(path)?;
    Ok(doc.pages(dpi).map(|r| r.map(|p| p.image)).collect())
}

fn check_dpi(dpi: f32) -> Result<(), f32> {
    if dpi.is_finite() && dpi > 0.0 {
        Ok(())
    } else {
        Err(dpi)
    }
}

/// `/UserUnit` (PDF 1.6): size of a user-space unit in points, default 1.
fn user_unit(page: &Page<'_>) -> f32 {
    match page.raw().get::<f32>(b"UserUnit") {
        Some(u) if u.is_finite() && u > 0.0 => u,
        _ => 1.0,
    }
}
