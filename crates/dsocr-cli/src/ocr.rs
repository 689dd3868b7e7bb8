//! `dsocr ocr`: images, folders and PDFs through the model, outputs like the official scripts.
//!
//! One model is loaded, then every input file goes through it in order; PDF pages one after
//! another. A file (or page) that fails is reported with its reason and the run goes on; the
//! exit code is 2 when anything failed, and the outputs already written stay as they are (every
//! file is written atomically by `dsocr_render`).

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dsocr_model::{
    Backend, DeepseekOcr, FinishReason, GenerationConfig, OcrRequest, OcrResult, Precision, RepeatGuard,
};
use dsocr_prompt::{load_image, Mode, RgbImage, Task};
use dsocr_render::json::DocumentKindJson;
use dsocr_render::{
    parse_grounding, safe_stem, strip_eos, to_markdown, to_plain_text, BlockJson, DocumentJson, DocumentKind,
    DocumentWriter, GeneratedPage, PageInput, PageJson, PdfDocument, WriterOptions, DEFAULT_DPI, PAGE_SPLIT,
};

use crate::hub::{self, ModelSource};
use crate::inputs::{self, InputFile, InputKind};
use crate::progress::{seconds, write_stdout, Ui};
use crate::stream::LiveCleaner;

/// The official image script's repeat guard (n-gram size, window).
pub const IMAGE_NGRAM: (usize, usize) = (30, 90);
/// The official PDF script's repeat guard.
pub const PDF_NGRAM: (usize, usize) = (20, 50);
/// Tokens the repeat guard never bans (looked up by string in the tokenizer).
pub const NGRAM_WHITELIST: [&str; 2] = ["<td>", "</td>"];
/// The official scripts' largest Gundam grid (`MAX_CROPS` in the vLLM `config.py`).
pub const DEFAULT_MAX_CROPS: usize = 6;
/// Exit code when some inputs or pages failed (the others were processed).
pub const EXIT_PARTIAL: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Cleaned markdown (grounding tags removed, figures as `![](images/...)` links).
    Md,
    /// Plain text (tags and figure links removed, blank lines collapsed).
    Txt,
    /// The JSON document (pages, blocks with boxes, finish reason, token counts), one line per input.
    Json,
}

#[derive(Args)]
pub struct OcrArgs {
    /// Images (png, jpeg, webp, tiff, bmp, gif), PDFs, or folders (searched recursively).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,

    /// What to ask: markdown, ocr, free, figure, describe or locate:<text>.
    #[arg(long, default_value = "markdown", value_parser = parse_task, conflicts_with = "prompt")]
    task: Task,

    /// A raw prompt instead of --task; must contain `<image>` once (`\n` is read as a newline).
    #[arg(long, value_name = "RAW")]
    prompt: Option<String>,

    /// Resolution mode: tiny (512), small (640), base (1024), large (1280), gundam (1024 + 640 tiles).
    #[arg(long, default_value = "gundam", value_parser = parse_mode)]
    mode: Mode,

    /// Largest number of Gundam tiles (2..=9; the official scripts use 6).
    #[arg(long, default_value_t = DEFAULT_MAX_CROPS as u32, value_parser = clap::value_parser!(u32).range(2..=9))]
    max_crops: u32,

    /// Most tokens generated per page (also capped by the model's context).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
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

    /// A Hugging Face repo id (owner/name[@revision]) or a local model folder.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,

    /// Resolution at which PDF pages are rendered.
    #[arg(long, default_value_t = DEFAULT_DPI)]
    dpi: f32,

    /// Re-run a page that ended without EOS (repeat loop or token limit) once in base mode.
    #[arg(long)]
    retry_loops: bool,

    /// No progress bars, no streaming, no summary (errors and warnings are still shown).
    #[arg(long, short)]
    quiet: bool,
}

fn parse_task(s: &str) -> Result<Task, String> {
    s.parse().map_err(|e: dsocr_prompt::PromptError| e.to_string())
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse().map_err(|e: dsocr_prompt::PromptError| e.to_string())
}

/// The prompt of `--prompt` (`\n` escapes become newlines), checked for one `<image>`.
fn raw_prompt(raw: &str) -> Result<String> {
    let prompt = raw.replace("\\n", "\n");
    let count = prompt.matches("<image>").count();
    if count != 1 {
        bail!("--prompt must contain `<image>` exactly once (it has {count}), e.g. --prompt '<image>\\nFree OCR.'");
    }
    Ok(prompt)
}

/// Chooses the backend and precision from `--device` / `--precision`.
pub fn backend_and_precision(device: Option<&str>, precision: Option<&str>) -> Result<(Backend, Precision)> {
    let compiled = Backend::compiled();
    let backend = match device {
        Some(name) => {
            let backend: Backend = name.parse()?;
            if !backend.is_compiled() {
                let names: Vec<&str> = compiled.iter().map(|b| b.name()).collect();
                bail!(
                    "--device {name}: this dsocr was built without the {backend} backend (compiled in: {}); \
                     rebuild with `--features {}`",
                    names.join(", "),
                    backend.feature()
                );
            }
            backend
        }
        None => *compiled.first().context("this dsocr was built without any backend")?,
    };
    let precision = match precision {
        Some(p) => p.parse().map_err(anyhow::Error::msg)?,
        None => backend.fast_precision(),
    };
    Ok((backend, precision))
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

/// Everything fixed for the run.
struct Job<'a> {
    args: &'a OcrArgs,
    model: &'a DeepseekOcr,
    ui: &'a Ui,
    prompt: String,
    format: Format,
    image_guard: Option<RepeatGuard>,
    pdf_guard: Option<RepeatGuard>,
    /// Stream the output to stdout while it is generated (stdout is a terminal, one image).
    stream_stdout: bool,
    /// More than one document goes to stdout: each gets a header line.
    stdout_headers: bool,
    stats: Stats,
}

/// The model's result for one page, after the optional retry.
struct PageRun {
    result: OcrResult,
    mode: Mode,
    /// The first run's finish reason and token count when the page was re-run.
    first: Option<(FinishReason, usize)>,
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
    if !(args.dpi.is_finite() && args.dpi > 0.0) {
        bail!("--dpi must be a positive number (got {})", args.dpi);
    }
    let prompt = match &args.prompt {
        Some(raw) => raw_prompt(raw)?,
        None => args.task.prompt(),
    };
    let format = args.format.unwrap_or(match (&args.prompt, &args.task) {
        (None, Task::Locate(_)) => Format::Json,
        _ => Format::Md,
    });
    let (backend, precision) = backend_and_precision(args.device.as_deref(), args.precision.as_deref())?;
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

    let model_dir = hub::resolve_model(&source, !args.quiet)?;
    ui.info(format!("loading {} on {backend} ({precision})", model_dir.display()));
    let model = DeepseekOcr::load(&model_dir, backend, precision)
        .with_context(|| format!("cannot load the model in {}", model_dir.display()))?;
    ui.info(format!("model loaded in {}", seconds(model.load_time)));

    let whitelist = whitelist_ids(&model, &ui);
    let guard = |(n, window): (usize, usize)| {
        if args.no_repeat_guard {
            return None;
        }
        let n = args.ngram_size.map_or(n, |v| v as usize);
        let window = args.ngram_window.map_or(window, |v| v as usize);
        Some(RepeatGuard::Window { n, window, whitelist: whitelist.clone() })
    };
    let stream_stdout = !args.quiet
        && std::io::stdout().is_terminal()
        && format != Format::Json
        && files.len() == 1
        && files[0].kind == InputKind::Image;
    let mut job = Job {
        args: &args,
        model: &model,
        ui: &ui,
        prompt,
        format,
        image_guard: guard(IMAGE_NGRAM),
        pdf_guard: guard(PDF_NGRAM),
        stream_stdout,
        stdout_headers: args.out.is_none() && files.len() > 1,
        stats: Stats::default(),
    };

    let start = Instant::now();
    let files_bar = ui.files_bar(files.len());
    let mut used_names = HashSet::new();
    for file in &files {
        let name = unique_name(&file.path, &mut used_names);
        if let Some(bar) = &files_bar {
            bar.set_message(file.path.display().to_string());
        }
        let file_start = Instant::now();
        match job.process(file, &name) {
            Ok(summary) => {
                job.stats.files_ok += 1;
                ui.info(format!("ok    {} {summary} in {}", file.path.display(), seconds(file_start.elapsed())));
            }
            Err(reason) => {
                job.stats.files_failed += 1;
                ui.alert(format!("error: {}", with_path(&file.path, &reason)));
            }
        }
        if let Some(bar) = &files_bar {
            bar.inc(1);
        }
    }
    if let Some(bar) = &files_bar {
        ui.remove(bar);
    }

    let elapsed = start.elapsed();
    let s = &job.stats;
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
    if files_failed > 0 || s.pages_failed > 0 {
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// `<td>`, `</td>` ids in this tokenizer (missing ones are left out with a note).
fn whitelist_ids(model: &DeepseekOcr, ui: &Ui) -> Vec<u32> {
    let mut ids = Vec::new();
    for token in NGRAM_WHITELIST {
        match model.tokenizer.token_id(token) {
            Some(id) => ids.push(id),
            None => ui.info(format!("note: the tokenizer has no `{token}` token; the repeat guard cannot exempt it")),
        }
    }
    ids
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

/// `path: reason`, unless the reason already starts with the path.
fn with_path(path: &Path, reason: &str) -> String {
    let p = path.display().to_string();
    if reason.starts_with(&p) {
        reason.to_string()
    } else {
        format!("{p}: {reason}")
    }
}

fn finish_json(f: FinishReason) -> dsocr_render::FinishReason {
    match f {
        FinishReason::Stop => dsocr_render::FinishReason::Stop,
        FinishReason::Length => dsocr_render::FinishReason::Length,
        FinishReason::Repetition => dsocr_render::FinishReason::Repetition,
        FinishReason::Cancelled => dsocr_render::FinishReason::Cancelled,
    }
}

fn finish_words(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "end of text",
        FinishReason::Length => "token limit reached",
        FinishReason::Repetition => "repetition loop (token limit reached while the repeat guard was banning repeats)",
        FinishReason::Cancelled => "cancelled",
    }
}

/// What stdout receives for one document when there is no `--out`.
struct StdoutDoc {
    markdown: String,
    text: String,
    pages: Vec<PageJson>,
}

impl Job<'_> {
    /// Processes one input file; `Ok` carries a short summary, `Err` the reason it failed as a
    /// whole (pages that fail inside a PDF are counted and reported, not returned).
    fn process(&mut self, file: &InputFile, name: &str) -> Result<String, String> {
        match file.kind {
            InputKind::Image => self.process_image(file, name),
            InputKind::Pdf => self.process_pdf(file, name),
        }
    }

    fn writer(&self, file: &InputFile, name: &str, kind: DocumentKind) -> Result<Option<DocumentWriter>, String> {
        let Some(out) = &self.args.out else { return Ok(None) };
        let options = WriterOptions {
            plain_text: self.format == Format::Txt,
            layouts_pdf: matches!(kind, DocumentKind::Pdf { .. }),
            ..WriterOptions::default()
        };
        let mut w = DocumentWriter::new(out, name, kind, options).map_err(|e| e.to_string())?;
        w.set_source(file.path.display().to_string());
        Ok(Some(w))
    }

    fn process_image(&mut self, file: &InputFile, name: &str) -> Result<String, String> {
        let image = load_image(&file.path).map_err(|e| e.to_string())?;
        let mut writer = self.writer(file, name, DocumentKind::Image)?;
        let spinner = if self.stream_stdout { None } else { Some(self.ui.page_spinner(name)) };
        let guard = self.image_guard.clone();
        let run = self.generate_page(&image, guard, spinner.as_ref(), name);
        if let Some(s) = &spinner {
            self.ui.remove(s);
        }
        let run = match run {
            Ok(run) => run,
            Err(e) => {
                self.stats.pages_failed += 1;
                return Err(e);
            }
        };
        self.note_page(&file.path, None, &run);
        let page = generated(&image, &run.result);
        let mut doc = StdoutDoc { markdown: String::new(), text: String::new(), pages: Vec::new() };
        let written = match writer.as_mut() {
            Some(w) => {
                w.add_page(PageInput::Generated(page)).map_err(|e| e.to_string())?;
                None
            }
            None => {
                doc.push_page(page, name, false, 1);
                Some(doc)
            }
        };
        let summary = format!("({} tokens, {})", run.result.generated_tokens(), finish_json_name(run.result.finish));
        if let Some(w) = writer {
            let files = w.finish().map_err(|e| e.to_string())?;
            return Ok(format!("→ {} {summary}", files.markdown.display()));
        }
        if let Some(doc) = written {
            self.print_stdout(file, name, DocumentKindJson::Image, doc)?;
        }
        Ok(summary)
    }

    fn process_pdf(&mut self, file: &InputFile, name: &str) -> Result<String, String> {
        let dpi = self.args.dpi;
        let doc = PdfDocument::open(&file.path).map_err(|e| e.to_string())?;
        let count = doc.page_count();
        let mut writer = self.writer(file, name, DocumentKind::Pdf { dpi })?;
        let mut stdout_doc = StdoutDoc { markdown: String::new(), text: String::new(), pages: Vec::new() };
        let bar = self.ui.pages_bar(count, &file.path.display().to_string());
        let (mut ok, mut failed, mut tokens) = (0, 0, 0);
        let guard = self.pdf_guard.clone();
        for (index, page) in doc.pages(dpi).enumerate() {
            let page_no = index + 1;
            let result: Result<(RgbImage, PageRun), String> = page.map_err(|e| e.to_string()).and_then(|p| {
                for w in &p.warnings {
                    self.ui.info(format!("note: {}: page {page_no}: renderer: {w}", file.path.display()));
                }
                let what = format!("page {page_no}/{count}");
                let spinner = self.ui.page_spinner(&what);
                let run = self.generate_page(&p.image, guard.clone(), Some(&spinner), &what);
                self.ui.remove(&spinner);
                run.map(|run| (p.image, run))
            });
            match result {
                Ok((image, run)) => {
                    ok += 1;
                    tokens += run.result.generated_tokens();
                    self.note_page(&file.path, Some(page_no), &run);
                    let page = generated(&image, &run.result);
                    match writer.as_mut() {
                        Some(w) => {
                            w.add_page(PageInput::Generated(page)).map_err(|e| e.to_string())?;
                        }
                        None => stdout_doc.push_page(page, name, true, page_no),
                    }
                }
                Err(reason) => {
                    failed += 1;
                    self.stats.pages_failed += 1;
                    self.ui.alert(format!("error: {}", with_path(&file.path, &reason)));
                    match writer.as_mut() {
                        Some(w) => {
                            w.add_page(PageInput::Failed { error: reason }).map_err(|e| e.to_string())?;
                        }
                        None => stdout_doc.push_failed(page_no, reason),
                    }
                }
            }
            // Checkpoint: the text files and JSON hold every page done so far.
            if let Some(w) = writer.as_mut() {
                w.flush().map_err(|e| e.to_string())?;
            }
            bar.inc(1);
        }
        self.ui.remove(&bar);
        let failed_note = if failed > 0 { format!(", {failed} failed") } else { String::new() };
        let summary = format!("({ok}/{count} pages{failed_note}, {tokens} tokens)");
        if let Some(w) = writer {
            let files = w.finish().map_err(|e| e.to_string())?;
            return Ok(format!("→ {} {summary}", files.markdown.display()));
        }
        self.print_stdout(file, name, DocumentKindJson::Pdf, stdout_doc)?;
        Ok(summary)
    }

    /// Runs the model on one page, streaming the text to the terminal, with the optional
    /// base-mode retry of a page that ended without EOS.
    fn generate_page(
        &mut self,
        image: &RgbImage,
        guard: Option<RepeatGuard>,
        spinner: Option<&indicatif::ProgressBar>,
        what: &str,
    ) -> Result<PageRun, String> {
        let mode = self.args.mode;
        let first = self.run_model(image, mode, guard.clone(), spinner, what)?;
        let retry = self.args.retry_loops && first.finish != FinishReason::Stop && mode != Mode::Base;
        if !retry {
            return Ok(PageRun { result: first, mode, first: None });
        }
        self.ui.alert(format!(
            "warn: {what}: {} after {} tokens in {mode} mode; retrying in base mode",
            finish_words(first.finish),
            first.generated_tokens()
        ));
        let first_info = (first.finish, first.generated_tokens());
        let second = self.run_model(image, Mode::Base, guard, spinner, what)?;
        if second.finish == FinishReason::Stop {
            Ok(PageRun { result: second, mode: Mode::Base, first: Some(first_info) })
        } else {
            // Neither run ended cleanly: keep the first (more detailed) one.
            self.ui
                .alert(format!("warn: {what}: the base-mode retry also ended without EOS; keeping the {mode} result"));
            Ok(PageRun { result: first, mode, first: Some(first_info) })
        }
    }

    fn run_model(
        &mut self,
        image: &RgbImage,
        mode: Mode,
        guard: Option<RepeatGuard>,
        spinner: Option<&indicatif::ProgressBar>,
        what: &str,
    ) -> Result<OcrResult, String> {
        let mut request = OcrRequest::new(self.prompt.clone(), Some(image.clone()), mode);
        request.max_crops = self.args.max_crops as usize;
        request.generation = GenerationConfig {
            max_new_tokens: self.args.max_new_tokens as usize,
            eos_token_id: self.model.config.decoder.eos_token_id,
            repeat_guard: guard,
            ..GenerationConfig::default()
        };
        let mut cleaner = match self.format {
            Format::Md => LiveCleaner::new(Some(what.to_string())),
            Format::Txt => LiveCleaner::new(None),
            Format::Json => LiveCleaner::raw(),
        };
        let stream = self.stream_stdout;
        let mut stdout = std::io::stdout().lock();
        let mut pieces = 0usize;
        let mut first_piece: Option<Instant> = None;
        let result = self.model.run(&request, |piece| {
            pieces += 1;
            let started = *first_piece.get_or_insert_with(Instant::now);
            if stream {
                let _ = stdout.write_all(cleaner.push(piece).as_bytes());
                let _ = stdout.flush();
            }
            if let Some(s) = spinner {
                // About one piece per token (the stream decoder holds back incomplete UTF-8).
                let secs = started.elapsed().as_secs_f64();
                let rate = if secs > 0.0 { (pieces - 1) as f64 / secs } else { 0.0 };
                s.set_message(format!("{pieces} tokens, {rate:.1} tok/s"));
            }
        });
        if stream {
            let rest = cleaner.finish();
            let _ = stdout.write_all(rest.as_bytes());
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
        }
        let result = result.map_err(|e| format!("{what}: the model failed: {e}"))?;
        self.stats.tokens += result.generated_tokens();
        Ok(result)
    }

    /// Counts a finished page and flags one that ended without EOS.
    fn note_page(&mut self, path: &Path, page: Option<usize>, run: &PageRun) {
        self.stats.pages_ok += 1;
        let r = &run.result;
        let at = match page {
            Some(p) => format!("{}: page {p}", path.display()),
            None => path.display().to_string(),
        };
        if let Some((finish, tokens)) = run.first {
            if r.finish == FinishReason::Stop {
                self.ui.info(format!(
                    "note: {at}: first run {} after {tokens} tokens; kept the {} retry ({} tokens)",
                    finish_json_name(finish),
                    run.mode,
                    r.generated_tokens()
                ));
            }
        }
        if r.finish != FinishReason::Stop {
            self.stats.pages_flagged += 1;
            self.ui.alert(format!(
                "warn: {at}: no EOS: {} after {} tokens; kept and flagged (finish_reason \"{}\")",
                finish_words(r.finish),
                r.generated_tokens(),
                finish_json_name(r.finish),
            ));
        }
    }

    /// Prints one document's result to stdout (no `--out`), unless it was streamed there.
    fn print_stdout(&self, file: &InputFile, name: &str, kind: DocumentKindJson, doc: StdoutDoc) -> Result<(), String> {
        if self.stream_stdout {
            return Ok(());
        }
        let source = file.path.display().to_string();
        let body = match self.format {
            Format::Md => {
                let header = if self.stdout_headers { format!("<!-- {source} -->\n") } else { String::new() };
                format!("{header}{}", ensure_newline(doc.markdown))
            }
            Format::Txt => {
                let header = if self.stdout_headers { format!("==> {source} <==\n") } else { String::new() };
                format!("{header}{}", ensure_newline(doc.text))
            }
            Format::Json => {
                let dpi = (kind == DocumentKindJson::Pdf).then_some(self.args.dpi);
                let json = DocumentJson { name: name.to_string(), source: Some(source), kind, dpi, pages: doc.pages };
                let line = serde_json::to_string(&json).map_err(|e| e.to_string())?;
                format!("{line}\n")
            }
        };
        write_stdout(&body, EXIT_PARTIAL.into()).map_err(|e| format!("writing to stdout: {e}"))
    }
}

fn finish_json_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Repetition => "repetition",
        FinishReason::Cancelled => "cancelled",
    }
}

fn ensure_newline(mut s: String) -> String {
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn generated<'a>(image: &'a RgbImage, result: &'a OcrResult) -> GeneratedPage<'a> {
    GeneratedPage {
        image,
        raw: &result.text,
        finish_reason: finish_json(result.finish),
        prompt_tokens: result.prompt_ids.len(),
        generated_tokens: result.generated_tokens(),
    }
}

impl StdoutDoc {
    /// Adds a page the way `DocumentWriter` renders it, without writing files (no figure crops,
    /// so `figure` stays empty).
    fn push_page(&mut self, page: GeneratedPage<'_>, name: &str, pdf: bool, page_no: usize) {
        let (raw, _) = strip_eos(page.raw);
        let figure_stem = if pdf { format!("{name}_{page_no}") } else { name.to_string() };
        let markdown = to_markdown(raw, &figure_stem, pdf);
        let text = to_plain_text(raw);
        let grounding = parse_grounding(raw);
        let (w, h) = page.image.dimensions();
        self.pages.push(PageJson {
            page: page_no,
            width: w,
            height: h,
            finish_reason: Some(page.finish_reason),
            complete: page.finish_reason == dsocr_render::FinishReason::Stop,
            prompt_tokens: page.prompt_tokens,
            generated_tokens: page.generated_tokens,
            markdown: markdown.clone(),
            blocks: grounding.blocks.iter().map(|b| BlockJson::from_block(b, w, h, None)).collect(),
            warnings: grounding.warnings.iter().map(ToString::to_string).collect(),
            error: None,
        });
        self.push_text(&markdown, &text, pdf);
    }

    fn push_failed(&mut self, page_no: usize, error: String) {
        self.pages.push(PageJson::failed(page_no, error));
        self.push_text("", "", true);
    }

    fn push_text(&mut self, markdown: &str, text: &str, pdf: bool) {
        self.markdown.push_str(markdown);
        self.text.push_str(text);
        if pdf {
            self.markdown.push_str(PAGE_SPLIT);
            self.text.push_str(PAGE_SPLIT);
        }
    }
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

    #[test]
    fn raw_prompts_need_one_image() {
        assert_eq!(raw_prompt("<image>\\nFree OCR.").unwrap(), "<image>\nFree OCR.");
        assert!(raw_prompt("Free OCR.").is_err());
        assert!(raw_prompt("<image><image>").is_err());
    }

    #[test]
    fn device_must_be_compiled() {
        let (b, p) = backend_and_precision(None, None).unwrap();
        assert!(b.is_compiled());
        assert_eq!(p, b.fast_precision());
        assert!(backend_and_precision(Some("nonsense"), None).is_err());
        assert!(backend_and_precision(None, Some("f8")).is_err());
    }
}
