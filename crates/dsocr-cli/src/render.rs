//! `dsocr render`: rebuild the output files from a saved raw model output, without the model.
//!
//! The raw file is what `dsocr ocr` writes as `<name>_det.mmd` (or any text with the grounding
//! tags, e.g. saved from the official scripts); the image is the original input. For a PDF
//! the raw file holds the pages separated by `<--- Page Split --->`, and the PDF is rendered
//! again at `--dpi`. Finish reasons and token counts come from the JSON of the earlier run
//! (`--json`, or `<name>.json` next to a `<name>_det.mmd`); without it pages count as finished
//! normally with 0 tokens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use dsocr::input::{load_image, PdfDocument};
use dsocr::render::{
    safe_stem, sanitize_name, DocumentJson, DocumentKind, DocumentWriter, FinishReason, GeneratedPage, PageInput,
    PageJson, WriterOptions, PAGE_SPLIT,
};

use crate::progress::write_stdout;
use dsocr::inputs::{sniff_kind, InputKind};

#[derive(Args)]
pub struct RenderArgs {
    /// The raw model output (`<name>_det.mmd`, grounding tags kept).
    #[arg(long, value_name = "FILE")]
    raw: PathBuf,

    /// The original input the output belongs to: an image, or a PDF (pages split by `<--- Page Split --->`).
    #[arg(long, value_name = "IMG")]
    image: PathBuf,

    /// Output folder.
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// Output name [default: the image's file stem].
    #[arg(long)]
    name: Option<String>,

    /// JSON of the earlier run, for finish reasons and token counts [default: <name>.json next to <name>_det.mmd].
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Resolution at which PDF pages are rendered (use the one of the original run).
    #[arg(long, default_value_t = dsocr::OcrOptions::official().pdf_dpi)]
    dpi: f32,

    /// Also write <name>.txt (plain text).
    #[arg(long)]
    txt: bool,
}

/// Finish reason and token counts of a page from an earlier JSON, or "finished, 0 tokens".
fn page_meta(prior: Option<&DocumentJson>, page: usize) -> Option<&PageJson> {
    prior.and_then(|d| d.pages.iter().find(|p| p.page == page))
}

fn generated<'a>(image: &'a image::RgbImage, raw: &'a str, meta: Option<&PageJson>) -> GeneratedPage<'a> {
    GeneratedPage {
        image,
        raw,
        finish_reason: meta.and_then(|m| m.finish_reason).unwrap_or(FinishReason::Stop),
        prompt_tokens: meta.map_or(0, |m| m.prompt_tokens),
        generated_tokens: meta.map_or(0, |m| m.generated_tokens),
    }
}

/// The JSON of the earlier run: `--json`, else `<stem>.json` next to a `<stem>_det.mmd`.
fn prior_json(args: &RenderArgs) -> Result<Option<DocumentJson>> {
    let path = match &args.json {
        Some(p) => p.clone(),
        None => {
            let Some(file) = args.raw.file_name().map(|n| n.to_string_lossy().into_owned()) else { return Ok(None) };
            let Some(stem) = file.strip_suffix("_det.mmd") else { return Ok(None) };
            let candidate = args.raw.with_file_name(format!("{stem}.json"));
            if !candidate.is_file() {
                return Ok(None);
            }
            candidate
        }
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc =
        serde_json::from_str(&text).with_context(|| format!("{} is not a dsocr JSON document", path.display()))?;
    eprintln!("finish reasons and token counts from {}", path.display());
    Ok(Some(doc))
}

/// Runs the command; a fatal error is printed as `error: …` (with its causes, no backtrace)
/// and gives exit code 1.
pub fn run(args: RenderArgs) -> Result<ExitCode> {
    match run_inner(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_inner(args: RenderArgs) -> Result<ExitCode> {
    if !(args.dpi.is_finite() && args.dpi > 0.0) {
        bail!("--dpi must be a positive number (got {})", args.dpi);
    }
    let raw = std::fs::read_to_string(&args.raw).with_context(|| format!("cannot read {}", args.raw.display()))?;
    let prior = prior_json(&args)?;
    let name = match &args.name {
        Some(n) => sanitize_name(n),
        None => safe_stem(&args.image),
    };
    let options = |pdf: bool| WriterOptions { plain_text: args.txt, layouts_pdf: pdf, ..WriterOptions::default() };
    let files = match sniff_kind(&args.image) {
        InputKind::Image => {
            let image = load_image(&args.image)?;
            if raw.contains(PAGE_SPLIT) {
                eprintln!(
                    "note: {} contains page separators but {} is an image: rendered as one page",
                    args.raw.display(),
                    args.image.display()
                );
            }
            let mut w = DocumentWriter::new(&args.out, &name, DocumentKind::Image, options(false))?;
            w.set_source(args.image.display().to_string());
            w.add_page(PageInput::Generated(generated(&image, &raw, page_meta(prior.as_ref(), 1))))?;
            w.finish()?
        }
        InputKind::Pdf => {
            let doc = PdfDocument::open(&args.image)?;
            let pages = split_pages(&raw);
            if pages.len() > doc.page_count() {
                bail!(
                    "{} has {} pages but {} has only {}",
                    args.raw.display(),
                    pages.len(),
                    args.image.display(),
                    doc.page_count()
                );
            }
            if pages.len() < doc.page_count() {
                eprintln!(
                    "note: {} has {} pages, {} has {}: rendering the first {}",
                    args.raw.display(),
                    pages.len(),
                    args.image.display(),
                    doc.page_count(),
                    pages.len()
                );
            }
            let mut w = DocumentWriter::new(&args.out, &name, DocumentKind::Pdf { dpi: args.dpi }, options(true))?;
            w.set_source(args.image.display().to_string());
            for (index, page_raw) in pages.iter().enumerate() {
                let meta = page_meta(prior.as_ref(), index + 1);
                if let Some(error) = meta.and_then(|m| m.error.clone()) {
                    w.add_page(PageInput::Failed { error })?;
                    continue;
                }
                match doc.render_page(index, args.dpi) {
                    Ok(page) => {
                        w.add_page(PageInput::Generated(generated(&page.image, page_raw, meta)))?;
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        w.add_page(PageInput::Failed { error: e.to_string() })?;
                    }
                }
            }
            w.finish()?
        }
    };
    print_files(
        &files.markdown,
        &files.raw,
        &files.json,
        files.text.as_deref(),
        &files.overlays,
        &files.figures,
        files.layouts_pdf.as_deref(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The pages of a PDF's raw output: each page is followed by the separator.
fn split_pages(raw: &str) -> Vec<&str> {
    let mut pages: Vec<&str> = raw.split(PAGE_SPLIT).collect();
    if pages.len() > 1 && pages.last().is_some_and(|p| p.trim().is_empty()) {
        pages.pop();
    }
    pages
}

fn print_files(
    markdown: &Path,
    raw: &Path,
    json: &Path,
    text: Option<&Path>,
    overlays: &[PathBuf],
    figures: &[PathBuf],
    layouts: Option<&Path>,
) -> std::io::Result<()> {
    let mut list = String::new();
    let all = [markdown, raw, json].into_iter().chain(text).chain(overlays.iter().map(PathBuf::as_path)).chain(layouts);
    for p in all.chain(figures.iter().map(PathBuf::as_path)) {
        list += &format!("{}\n", p.display());
    }
    write_stdout(&list, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_on_the_separator() {
        assert_eq!(split_pages("a\n\n<--- Page Split --->\nb\n\n<--- Page Split --->\n"), ["a", "b"]);
        assert_eq!(split_pages("only"), ["only"]);
        assert_eq!(split_pages("\n\n<--- Page Split --->\n"), [""]);
    }
}
