//! `dsocr ocr`: images, folders and PDFs through the model, outputs like the official scripts.
//!
//! The flags become one [`OcrOptions`] (starting from [`OcrOptions::official()`]); the
//! library's document loop runs each input file and reports events, which this module turns
//! into progress bars, streamed text, messages and output files. A file (or page) that fails
//! is reported with its reason and the run goes on; the exit code is 2 when anything failed,
//! and the outputs already written stay as they are (every file is written atomically by
//! `dsocr_render`).

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dsocr::hub::{self, DownloadEvent, ModelSource};
use dsocr::inputs::{self, InputFile, InputKind};
use dsocr::render::{safe_stem, DocumentKind, DocumentWriter, LiveCleaner, PageInput, WriterOptions};
use dsocr::{
    choose_backend, DocumentResult, Event, FinishReason, Mode, Ocr, OcrError, OcrOptions, PageResult, PageSelection,
    PromptChoice, RepeatGuardPolicy, Task,
};
use indicatif::{ProgressBar, ProgressDrawTarget};

use crate::progress::{seconds, write_stdout, Ui};

/// Exit code when some inputs or pages failed (the others were processed).
pub const EXIT_PARTIAL: u8 = 2;
/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Set by the first Ctrl-C / SIGTERM: the page being generated stops, the files of the pages
/// done are completed, no further input starts. A second one ends the process at once.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn watch_interrupts() {
    // Without a handler (e.g. another one is installed) the default behaviour stays.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(EXIT_INTERRUPTED.into());
        }
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// How one input file ended.
enum FileOutcome {
    /// Processed; a short summary for the `ok` line.
    Done(String),
    /// Failed as a whole; the reason names the file.
    Failed(String),
    /// Stopped by Ctrl-C; `kept` pages were written (or printed).
    Interrupted { kept: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Cleaned markdown (grounding tags removed, figures as `![](images/...)` links).
    Md,
    /// Plain text (tags and figure links removed, blank lines collapsed).
    Txt,
    /// The JSON document (pages, blocks with boxes, finish reason, token counts), one line per input.
    Json,
}

/// The flags' defaults, from the one home of the official settings.
fn official() -> OcrOptions {
    OcrOptions::official()
}

#[derive(Args)]
pub struct OcrArgs {
    /// Images (png, jpeg, webp, tiff, bmp, gif), PDFs, or folders (searched recursively).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,

    /// What to ask: markdown, ocr, free, figure, describe or locate:<text>.
    #[arg(long, default_value_t = OcrOptions::OFFICIAL_TASK, value_parser = parse_task, conflicts_with = "prompt")]
    task: Task,

    /// A raw prompt instead of --task; must contain `<image>` once (`\n` is read as a newline).
    #[arg(long, value_name = "RAW")]
    prompt: Option<String>,

    /// Resolution mode: tiny (512), small (640), base (1024), large (1280), gundam (1024 + 640 tiles).
    #[arg(long, default_value_t = OcrOptions::OFFICIAL_MODE, value_parser = parse_mode)]
    mode: Mode,

    /// Largest number of Gundam tiles (2..=9; the official scripts use 6).
    #[arg(long, default_value_t = official().max_crops as u32, value_parser = clap::value_parser!(u32).range(2..=9))]
    max_crops: u32,

    /// Most tokens generated per page (also capped by the model's context).
    #[arg(long, default_value_t = official().max_new_tokens as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_new_tokens: u32,

    /// Repeat guard n-gram size [default: 30 for images, 20 for PDF pages].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    ngram_size: Option<u32>,

    /// Repeat guard window, in generated tokens [default: 90 for images, 50 for PDF pages].
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..))]
    ngram_window: Option<u32>,

    /// Turn the repeat guard off.
    #[arg(long, conflicts_with_all = ["ngram_size", "ngram_window"])]
    no_repeat_guard: bool,

    /// Write the outputs into this folder (.mmd, _det.mmd, .json, _boxes.jpg, images/);
    /// without it the result goes to stdout.
    #[arg(long, short, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Stdout format [default: md; json for locate tasks]. With --out, txt also writes <name>.txt.
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Backend: cpu, ndarray, wgpu or cuda, among those compiled in [default: the fastest compiled].
    #[arg(long)]
    device: Option<String>,

    /// Float precision: f32, f16 or bf16 [default: bf16 on cuda, f16 on wgpu, f32 on cpu].
    #[arg(long)]
    precision: Option<String>,

    /// Quantize the decoder's weights at load: q8 or q4 (any backend; docs/performance.md,
    /// "Quantized weights"). The vision encoder, embedding and norms keep --precision.
    #[arg(long)]
    quant: Option<dsocr::Quant>,

    /// bf16 on the CPU: copy the decoder's weights into huge-page memory instead of
    /// multiplying the memory-mapped checkpoint in place (decode ~18 % faster at full size,
    /// ~5.5 GB more resident memory, ~15 s more to load).
    #[arg(long)]
    copy_weights: bool,

    /// A Hugging Face repo id (owner/name[@revision]) or a local model folder.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,

    /// Resolution at which PDF pages are rendered.
    #[arg(long, default_value_t = official().pdf_dpi)]
    dpi: f32,

    /// PDF pages to run, e.g. 1-3,5,8- [default: all].
    #[arg(long, value_name = "PAGES", value_parser = parse_pages)]
    pages: Option<PageSelection>,

    /// Re-run a page that ended without EOS (repeat loop or token limit) once in base mode.
    #[arg(long)]
    retry_loops: bool,

    /// No progress bars, no streaming, no summary (errors and warnings are still shown).
    #[arg(long, short)]
    quiet: bool,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse().map_err(|e: dsocr::input::PromptError| e.to_string())
}

fn parse_pages(s: &str) -> Result<PageSelection, String> {
    s.parse()
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse().map_err(|e: dsocr::input::PromptError| e.to_string())
}

impl OcrArgs {
    /// The request the flags describe.
    fn options(&self) -> Result<OcrOptions> {
        if !(self.dpi.is_finite() && self.dpi > 0.0) {
            bail!("--dpi must be a positive number (got {})", self.dpi);
        }
        let prompt = match &self.prompt {
            Some(raw) => PromptChoice::raw(raw.replace("\\n", "\n"))
                .map_err(|e| anyhow::anyhow!("--prompt: {e}, e.g. --prompt '<image>\\nFree OCR.'"))?,
            None => PromptChoice::Task(self.task.clone()),
        };
        let repeat_guard = if self.no_repeat_guard {
            RepeatGuardPolicy::off()
        } else {
            RepeatGuardPolicy::official_with(self.ngram_size.map(|v| v as usize), self.ngram_window.map(|v| v as usize))
        };
        Ok(OcrOptions {
            prompt,
            mode: self.mode,
            max_crops: self.max_crops as usize,
            max_new_tokens: self.max_new_tokens as usize,
            repeat_guard,
            retry_in_base_mode: self.retry_loops,
            pdf_dpi: self.dpi,
            pages: self.pages.clone(),
            ..official()
        })
    }

    /// `--format`, or its default: JSON for a locate task, markdown otherwise.
    fn format(&self) -> Format {
        self.format.unwrap_or(match (&self.prompt, &self.task) {
            (None, Task::Locate(_)) => Format::Json,
            _ => Format::Md,
        })
    }
}

/// Counters of the whole run.
#[derive(Default)]
struct Stats {
    files_ok: usize,
    files_failed: usize,
    pages_ok: usize,
    pages_failed: usize,
    pages_flagged: usize,
    tokens: usize,
}

/// Runs the command; a fatal error is printed as `error: …` (with its causes, no backtrace)
/// and gives exit code 1.
pub fn run(args: OcrArgs) -> Result<ExitCode> {
    match run_inner(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_inner(args: OcrArgs) -> Result<ExitCode> {
    let ui = Ui::new(args.quiet);
    let options = args.options()?;
    let format = args.format();
    let mut load = choose_backend(args.device.as_deref(), args.precision.as_deref())?;
    load.quant = args.quant;
    load.copy_weights = args.copy_weights;
    let source = ModelSource::parse(&args.model)?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create the output folder {}", out.display()))?;
    }

    let (files, input_errors) = inputs::expand(&args.inputs, args.out.as_deref());
    for e in &input_errors {
        ui.alert(format!("error: {}: {}", e.path.display(), e.reason));
    }
    if files.is_empty() {
        ui.alert("error: no input could be used");
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }

    let model_dir = resolve_with_bars(&source, !args.quiet)?;
    ui.info(format!(
        "loading {} on {} ({}{})",
        model_dir.display(),
        load.backend,
        load.precision,
        load.quant.map(|q| format!(", {q} decoder")).unwrap_or_default()
    ));
    let start = Instant::now();
    let ocr = Ocr::load_dir(&model_dir, &load)?;
    let stored = match (load.quant, ocr.model().quant) {
        (None, Some(q)) => format!(" ({q} decoder, as stored)"),
        _ => String::new(),
    };
    ui.info(format!("model loaded in {}{stored}", seconds(start.elapsed())));
    let (_, missing) = ocr.token_ids(&options.repeat_guard.whitelist);
    for token in missing {
        ui.info(format!("note: the tokenizer has no `{token}` token; the repeat guard cannot exempt it"));
    }

    let stream_stdout = !args.quiet
        && std::io::stdout().is_terminal()
        && format != Format::Json
        && files.len() == 1
        && files[0].kind == InputKind::Image;
    let job = Job {
        out: args.out.as_deref(),
        ocr: &ocr,
        ui: &ui,
        options: &options,
        format,
        stream_stdout,
        stdout_headers: args.out.is_none() && files.len() > 1,
    };

    watch_interrupts();
    let start = Instant::now();
    let mut stats = Stats::default();
    let mut stopped = false;
    let files_bar = ui.files_bar(files.len());
    let mut used_names = HashSet::new();
    for file in &files {
        let name = unique_name(&file.path, &mut used_names);
        if let Some(bar) = &files_bar {
            bar.set_message(file.path.display().to_string());
        }
        let file_start = Instant::now();
        match job.process(file, &name, &mut stats) {
            FileOutcome::Done(summary) => {
                stats.files_ok += 1;
                ui.info(format!("ok    {} {summary} in {}", file.path.display(), seconds(file_start.elapsed())));
            }
            FileOutcome::Failed(reason) => {
                stats.files_failed += 1;
                ui.alert(format!("error: {reason}"));
            }
            FileOutcome::Interrupted { kept } => {
                ui.alert(format!("interrupted: {}: {kept} page(s) done and kept", file.path.display()));
            }
        }
        if let Some(bar) = &files_bar {
            bar.inc(1);
        }
        if interrupted() {
            stopped = true;
            break;
        }
    }
    if let Some(bar) = &files_bar {
        ui.remove(bar);
    }

    let elapsed = start.elapsed();
    let s = &stats;
    let pages = s.pages_ok + s.pages_failed;
    let rate = if elapsed > Duration::ZERO { s.pages_ok as f64 / elapsed.as_secs_f64() } else { 0.0 };
    let files_failed = s.files_failed + input_errors.len();
    ui.info(format!(
        "done: {} file(s){}, {pages} page(s){}{}, {} tokens, {}, {rate:.2} pages/s",
        s.files_ok + s.files_failed,
        if files_failed > 0 { format!(" ({files_failed} failed)") } else { String::new() },
        if s.pages_failed > 0 { format!(" ({} failed)", s.pages_failed) } else { String::new() },
        match (s.pages_flagged, args.retry_loops) {
            (0, _) => String::new(),
            (n, true) => format!(" ({n} without EOS, flagged)"),
            (n, false) => format!(" ({n} without EOS, flagged; --retry-loops re-runs such pages in base mode)"),
        },
        s.tokens,
        seconds(elapsed),
    ));
    if stopped {
        ui.alert("interrupted: the inputs after this one were not started");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if files_failed > 0 || s.pages_failed > 0 {
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves `--model`, drawing a progress bar on stderr for each file downloaded.
pub(crate) fn resolve_with_bars(source: &ModelSource, progress: bool) -> Result<PathBuf> {
    let mut bar: Option<ProgressBar> = None;
    let dir = hub::resolve_model(source, |event| {
        if !progress {
            return;
        }
        match event {
            DownloadEvent::Started { file, bytes } => {
                let b = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
                b.set_message(file);
                bar = Some(b);
            }
            DownloadEvent::Progress { bytes } => {
                if let Some(b) = &bar {
                    b.inc(bytes);
                }
            }
            DownloadEvent::Finished => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
            }
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(dir)
}

/// A file name for `path` not used yet in this run: its sanitised stem, else `<stem>-2`, ...
fn unique_name(path: &Path, used: &mut HashSet<String>) -> String {
    let base = safe_stem(path);
    let mut name = base.clone();
    let mut k = 2;
    // Case-insensitive, for file systems that are.
    while !used.insert(name.to_lowercase()) {
        name = format!("{base}-{k}");
        k += 1;
    }
    name
}

/// Everything fixed for the run.
struct Job<'a> {
    out: Option<&'a Path>,
    ocr: &'a Ocr,
    ui: &'a Ui,
    options: &'a OcrOptions,
    format: Format,
    /// Stream the output to stdout while it is generated (stdout is a terminal, one image).
    stream_stdout: bool,
    /// More than one document goes to stdout: each gets a header line.
    stdout_headers: bool,
}

/// What the terminal shows of the page being generated.
struct PageView {
    spinner: Option<ProgressBar>,
    cleaner: LiveCleaner,
    pieces: usize,
    first_piece: Option<Instant>,
}

impl Job<'_> {
    /// Processes one input file; `Ok` carries a short summary, `Err` the reason it failed as a
    /// whole (pages that fail inside a PDF are counted and reported, not returned).
    fn process(&self, file: &InputFile, name: &str, stats: &mut Stats) -> FileOutcome {
        match self.process_inner(file, name, stats) {
            Ok(outcome) => outcome,
            Err(reason) => FileOutcome::Failed(reason),
        }
    }

    /// [`process`](Self::process); `Err` carries the reason the file failed.
    fn process_inner(&self, file: &InputFile, name: &str, stats: &mut Stats) -> Result<FileOutcome, String> {
        let pdf = file.kind == InputKind::Pdf;
        let at_path = |reason: String| format!("{}: {reason}", file.path.display());
        // Made once the input could be opened, so a broken input leaves nothing behind.
        let mut writer: Option<DocumentWriter> = None;
        let mut write_error: Option<String> = None;
        let mut view: Option<PageView> = None;
        let mut pages_bar: Option<ProgressBar> = None;
        let mut page_count = 1;
        let (mut kept_tokens, mut stdout) = (0, std::io::stdout());

        let outcome = self.ocr.run_file_named(&file.path, name, self.options, |event| {
            match event {
                Event::DocumentStarted { pages, .. } => {
                    page_count = pages;
                    match self.writer(file, name, pdf) {
                        Ok(w) => writer = w,
                        Err(e) => {
                            write_error = Some(e);
                            return ControlFlow::Break(());
                        }
                    }
                    if pdf {
                        pages_bar = Some(self.ui.pages_bar(pages, &file.path.display().to_string()));
                    }
                }
                Event::Note { page, message } => {
                    self.ui.info(format!("note: {}: page {page}: {message}", file.path.display()));
                }
                Event::PageStarted { page, pages } => {
                    page_count = pages;
                    let what = self.what(name, page, page_count, pdf);
                    let spinner = (!self.stream_stdout).then(|| self.ui.page_spinner(&what));
                    view = Some(PageView { spinner, cleaner: self.cleaner(name), pieces: 0, first_piece: None });
                }
                Event::Text { piece, .. } => {
                    if let Some(v) = view.as_mut() {
                        self.show_piece(v, &piece, &mut stdout);
                    }
                }
                Event::Retrying { page, finish, tokens, mode } => {
                    self.end_stream(view.as_mut(), &mut stdout);
                    self.ui.alert(format!(
                        "warn: {}: {} after {tokens} tokens in {mode} mode; retrying in base mode",
                        self.what(name, page, page_count, pdf),
                        finish.describe()
                    ));
                    if let Some(v) = view.as_mut() {
                        (v.pieces, v.first_piece, v.cleaner) = (0, None, self.cleaner(name));
                    }
                }
                Event::PageDone(result) => {
                    self.end_page(view.take(), &mut stdout);
                    stats.tokens += result.tokens_spent();
                    kept_tokens += result.generated_tokens;
                    self.note_page(&file.path, pdf, name, page_count, &result, stats);
                    if let Some(w) = writer.as_mut() {
                        w.set_next_page(result.page);
                        if let Err(e) = w.add_page(PageInput::Generated(result.generated())) {
                            write_error = Some(e.to_string());
                            return ControlFlow::Break(());
                        }
                    }
                    if let Err(e) = self.checkpoint(writer.as_mut(), pdf, pages_bar.as_ref()) {
                        write_error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                Event::PageFailed { page, error } => {
                    self.end_page(view.take(), &mut stdout);
                    stats.pages_failed += 1;
                    self.ui.alert(format!("error: {error}"));
                    if let Some(w) = writer.as_mut() {
                        w.set_next_page(page);
                        if let Err(e) = w.add_page(PageInput::Failed { error: error.page_reason() }) {
                            write_error = Some(e.to_string());
                            return ControlFlow::Break(());
                        }
                    }
                    if let Err(e) = self.checkpoint(writer.as_mut(), pdf, pages_bar.as_ref()) {
                        write_error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
            }
            // Checked after the event is handled: a page that is done is written first.
            if interrupted() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        self.end_page(view.take(), &mut stdout);
        if let Some(bar) = &pages_bar {
            self.ui.remove(bar);
        }
        let doc = match outcome {
            Ok(doc) => doc,
            Err(OcrError::Cancelled { .. }) if write_error.is_none() && interrupted() => {
                // The pages done were written and checkpointed; complete their files.
                let kept = writer.as_ref().map_or(0, |w| w.document().pages().len());
                if let Some(w) = writer.filter(|w| !w.document().pages().is_empty()) {
                    w.finish().map_err(|e| at_path(e.to_string()))?;
                }
                return Ok(FileOutcome::Interrupted { kept });
            }
            Err(OcrError::Cancelled { .. }) => {
                return Err(at_path(write_error.unwrap_or_else(|| "cancelled".to_string())));
            }
            Err(e) => {
                if e.page().is_some() {
                    stats.pages_failed += 1;
                }
                return Err(e.to_string());
            }
        };

        let summary = if pdf {
            let failed_note =
                if doc.pages_failed > 0 { format!(", {} failed", doc.pages_failed) } else { String::new() };
            format!("({}/{} pages{failed_note}, {kept_tokens} tokens)", doc.pages_done, doc.pages)
        } else {
            let finish = doc.document.pages().first().and_then(|p| p.finish_reason).unwrap_or(FinishReason::Stop);
            format!("({kept_tokens} tokens, {finish})")
        };
        if let Some(w) = writer {
            let files = w.finish().map_err(|e| at_path(e.to_string()))?;
            return Ok(FileOutcome::Done(format!("→ {} {summary}", files.markdown.display())));
        }
        self.print_stdout(&doc).map_err(at_path)?;
        Ok(FileOutcome::Done(summary))
    }

    /// The output writer of one input (`None` without `--out`).
    fn writer(&self, file: &InputFile, name: &str, pdf: bool) -> Result<Option<DocumentWriter>, String> {
        let Some(out) = self.out else { return Ok(None) };
        let kind = if pdf { DocumentKind::Pdf { dpi: self.options.pdf_dpi } } else { DocumentKind::Image };
        let options =
            WriterOptions { plain_text: self.format == Format::Txt, layouts_pdf: pdf, ..WriterOptions::default() };
        let mut w = DocumentWriter::new(out, name, kind, options).map_err(|e| e.to_string())?;
        w.set_source(file.path.display().to_string());
        Ok(Some(w))
    }

    /// The live cleaner of the streamed text, for the output format.
    fn cleaner(&self, name: &str) -> LiveCleaner {
        match self.format {
            Format::Md => LiveCleaner::new(Some(name.to_string())),
            Format::Txt => LiveCleaner::new(None),
            Format::Json => LiveCleaner::raw(),
        }
    }

    /// How messages name a page: the image's name, or `page 2/5`.
    fn what(&self, name: &str, page: usize, pages: usize, pdf: bool) -> String {
        if pdf {
            format!("page {page}/{pages}")
        } else {
            name.to_string()
        }
    }

    /// A piece of generated text: streamed to the terminal, counted on the spinner.
    fn show_piece(&self, view: &mut PageView, piece: &str, stdout: &mut std::io::Stdout) {
        view.pieces += 1;
        let started = *view.first_piece.get_or_insert_with(Instant::now);
        if self.stream_stdout {
            let mut out = stdout.lock();
            let _ = out.write_all(view.cleaner.push(piece).as_bytes());
            let _ = out.flush();
        }
        if let Some(s) = &view.spinner {
            // About one piece per token (the stream decoder holds back incomplete UTF-8).
            let secs = started.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { (view.pieces - 1) as f64 / secs } else { 0.0 };
            s.set_message(format!("{} tokens, {rate:.1} tok/s", view.pieces));
        }
    }

    /// Ends the streamed text of one run of a page.
    fn end_stream(&self, view: Option<&mut PageView>, stdout: &mut std::io::Stdout) {
        let Some(view) = view else { return };
        if self.stream_stdout {
            let rest = view.cleaner.finish();
            let mut out = stdout.lock();
            let _ = out.write_all(rest.as_bytes());
            let _ = out.write_all(b"\n");
            let _ = out.flush();
        }
    }

    /// The page is over: the stream ends, the spinner goes.
    fn end_page(&self, view: Option<PageView>, stdout: &mut std::io::Stdout) {
        let Some(mut view) = view else { return };
        self.end_stream(Some(&mut view), stdout);
        if let Some(s) = &view.spinner {
            self.ui.remove(s);
        }
    }

    /// PDFs: the text files and JSON hold every page done so far; the bar moves on.
    fn checkpoint(
        &self,
        writer: Option<&mut DocumentWriter>,
        pdf: bool,
        bar: Option<&ProgressBar>,
    ) -> Result<(), String> {
        if !pdf {
            return Ok(());
        }
        if let Some(w) = writer {
            w.flush().map_err(|e| e.to_string())?;
        }
        if let Some(bar) = bar {
            bar.inc(1);
        }
        Ok(())
    }

    /// Counts a finished page, says what the retry did, and flags a page without EOS.
    fn note_page(&self, path: &Path, pdf: bool, name: &str, pages: usize, r: &PageResult, stats: &mut Stats) {
        stats.pages_ok += 1;
        let at = if pdf { format!("{}: page {}", path.display(), r.page) } else { path.display().to_string() };
        if let Some(other) = r.other_run {
            if r.finish == FinishReason::Stop {
                self.ui.info(format!(
                    "note: {at}: first run {} after {} tokens; kept the {} retry ({} tokens)",
                    other.finish, other.tokens, r.mode, r.generated_tokens
                ));
            } else {
                self.ui.alert(format!(
                    "warn: {}: the base-mode retry also ended without EOS; keeping the {} result",
                    self.what(name, r.page, pages, pdf),
                    r.mode
                ));
            }
        }
        if r.finish != FinishReason::Stop {
            stats.pages_flagged += 1;
            self.ui.alert(format!(
                "warn: {at}: no EOS: {} after {} tokens; kept and flagged (finish_reason \"{}\")",
                r.finish.describe(),
                r.generated_tokens,
                r.finish,
            ));
        }
    }

    /// Prints one document's result to stdout (no `--out`), unless it was streamed there.
    fn print_stdout(&self, doc: &DocumentResult) -> Result<(), String> {
        if self.stream_stdout {
            return Ok(());
        }
        let source = doc.path.display().to_string();
        let body = match self.format {
            Format::Md => {
                let header = if self.stdout_headers { format!("<!-- {source} -->\n") } else { String::new() };
                format!("{header}{}", with_newline(doc.markdown()))
            }
            Format::Txt => {
                let header = if self.stdout_headers { format!("==> {source} <==\n") } else { String::new() };
                format!("{header}{}", with_newline(doc.text()))
            }
            Format::Json => {
                let line = serde_json::to_string(&doc.document.to_json()).map_err(|e| e.to_string())?;
                format!("{line}\n")
            }
        };
        write_stdout(&body, EXIT_PARTIAL.into()).map_err(|e| format!("writing to stdout: {e}"))
    }
}

fn with_newline(s: &str) -> String {
    let mut s = s.to_string();
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_safe() {
        let mut used = HashSet::new();
        assert_eq!(unique_name(Path::new("a/page.png"), &mut used), "page");
        assert_eq!(unique_name(Path::new("b/Page.pdf"), &mut used), "Page-2");
        assert_eq!(unique_name(Path::new("c/page.jpg"), &mut used), "page-3");
        assert_eq!(unique_name(Path::new("../../etc/pass wd.png"), &mut used), "pass_wd");
    }
}
