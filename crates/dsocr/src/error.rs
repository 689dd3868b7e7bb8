//! The engine's errors. Each names the file (and page) it is about, so a front end can print
//! it as is; [`OcrError::page_reason`] is the same without the file, for a page's JSON entry.

use std::path::{Path, PathBuf};

use dsocr_model::ModelError;

use crate::hub::HubError;

#[derive(Debug, thiserror::Error)]
pub enum OcrError {
    /// The options are not usable (the message names the option).
    #[error("{0}")]
    Options(String),
    /// The backend or precision asked for is unknown or not compiled in.
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("cannot load the model in {}", dir.display())]
    Load {
        dir: PathBuf,
        #[source]
        source: Box<ModelError>,
    },
    /// An image that cannot be read (missing, empty, corrupt, unsupported, too large).
    #[error("{}", with_path(path, &source.to_string()))]
    Image {
        path: PathBuf,
        #[source]
        source: dsocr_input::PromptError,
    },
    /// A PDF that cannot be opened (corrupt, encrypted, no pages).
    #[error("{}", with_path(path, &source.to_string()))]
    Pdf {
        path: PathBuf,
        #[source]
        source: dsocr_input::PdfError,
    },
    /// One PDF page that does not render; the other pages go on.
    #[error("{}", with_path(path, &source.to_string()))]
    PdfPage {
        path: PathBuf,
        page: usize,
        #[source]
        source: dsocr_input::PageError,
    },
    /// The model failed on a page (`what`: the page, as `page 2/5` or the image's name).
    #[error("{}", with_path(path, &format!("{what}: the model failed: {source}")))]
    Model {
        path: PathBuf,
        page: usize,
        what: String,
        #[source]
        source: Box<ModelError>,
    },
    /// The page selection does not fit the document (a page past its end).
    #[error("{}: {message}", path.display())]
    PageSelection { path: PathBuf, message: String },
    /// A PDF with more pages (selected) than [`OcrOptions::max_pages`](crate::OcrOptions::max_pages) allows.
    #[error("{}: the document has {pages} pages to run, more than the limit of {limit}", path.display())]
    TooManyPages { path: PathBuf, pages: usize, limit: usize },
    /// The event handler asked to stop.
    #[error("{}: cancelled", path.display())]
    Cancelled { path: PathBuf },
    /// Code on the engine's thread panicked while running this request (a bug): the request
    /// failed, the engine goes on with the next one.
    #[error("{}: internal error while running this request ({message}); it was stopped", path.display())]
    Panicked { path: PathBuf, message: String },
    /// The request's deadline passed (queued or running) before it was done.
    #[error("{}: not done within the deadline of {:.0} s", path.display(), after.as_secs_f64())]
    TimedOut { path: PathBuf, after: std::time::Duration },
}

impl OcrError {
    /// The file the error is about, if it is about one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            OcrError::Image { path, .. }
            | OcrError::Pdf { path, .. }
            | OcrError::PdfPage { path, .. }
            | OcrError::Model { path, .. }
            | OcrError::PageSelection { path, .. }
            | OcrError::TooManyPages { path, .. }
            | OcrError::TimedOut { path, .. }
            | OcrError::Panicked { path, .. }
            | OcrError::Cancelled { path } => Some(path),
            OcrError::Load { dir, .. } => Some(dir),
            OcrError::Options(_) | OcrError::Backend(_) | OcrError::Hub(_) => None,
        }
    }

    /// The 1-based page the error is about (a page of a PDF, or 1 for an image).
    pub fn page(&self) -> Option<usize> {
        match self {
            OcrError::PdfPage { page, .. } | OcrError::Model { page, .. } => Some(*page),
            _ => None,
        }
    }

    /// The reason of a page-level failure, without the file: what a page's JSON `error` holds.
    pub fn page_reason(&self) -> String {
        match self {
            OcrError::PdfPage { source, .. } => source.to_string(),
            OcrError::Model { what, source, .. } => format!("{what}: the model failed: {source}"),
            other => other.to_string(),
        }
    }
}

/// `path: reason`, unless the reason already starts with the path.
pub(crate) fn with_path(path: &Path, reason: &str) -> String {
    let p = path.display().to_string();
    if reason.starts_with(&p) {
        reason.to_string()
    } else {
        format!("{p}: {reason}")
    }
}
