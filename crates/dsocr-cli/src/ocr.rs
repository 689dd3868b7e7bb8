//! `dsocr ocr`: images, folders and PDFs through the model, outputs like the official scripts.
//!
//! The flags become one [`OcrOptions`] (starting from [`OcrOptions::official()`]); the
//! library's document loop runs each input file and reports events, which this module turns
//! into progress bars, streamed text, messages and output files. A file (or page) that fails
//! is reported with its reason and the run goes on; the exit code is 2 when anything failed,
//! and the outputs already written stay as they are (every file is written atomically by
//! `dsocr_render`).

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use dsocr::engine::{DoneSink, EventSink};
use dsocr::hub::{self, DownloadEvent, ModelSource};
use dsocr::inputs::{self, InputFile, InputKind};
use dsocr::render::{safe_stem, DocumentKind, DocumentWriter, LiveCleaner, PageInput, WriterOptions};
use dsocr::{
    choose_backend, DocumentResult, Engine, EngineOptions, Event, FinishReason, Mode, Ocr, OcrError, OcrOptions,
    PageResult, PageSelection, PromptChoice, RepeatGuardPolicy, Source, Task, Ticket,
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

    /// Pages decoding together: the pages of all inputs, PDF pages included, go through the
    /// model's batch (continuous batching); 1 runs the inputs one by one, page by page, as
    /// before [default: 16 on a GPU, 1 on the CPU].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch: Option<usize>,

    /// With --out: skip the inputs whose outputs there are complete (their JSON says
    /// `"finished": true` for the same input), so an interrupted run can be resumed.
    #[arg(long, requires = "out")]
    skip_existing: bool,

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
    /// Tokens of the pages done (both runs of a retried page).
    tokens: usize,
    /// Text pieces seen so far (about one per generated token), for the live rate.
    live_tokens: usize,
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

    // Output names in input order (the same on every run over the same inputs).
    let mut used_names = HashSet::new();
    let mut named: Vec<(InputFile, String)> = files
        .into_iter()
        .map(|file| {
            let name = unique_name(&file.path, &mut used_names);
            (file, name)
        })
        .collect();
    let mut skipped = 0;
    if args.skip_existing {
        let out = args.out.as_deref().context("--skip-existing needs --out")?;
        named.retain(|(file, name)| {
            let complete = outputs_complete(out, file, name);
            if complete {
                ui.info(format!("skip  {} (its outputs in {} are complete)", file.path.display(), out.display()));
                skipped += 1;
            }
            !complete
        });
        if named.is_empty() {
            ui.info(format!("done: all {skipped} input(s) skipped: their outputs are complete (--skip-existing)"));
            return Ok(if input_errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_PARTIAL) });
        }
    }
    let batch = args.batch.unwrap_or(EngineOptions::default_batch(load.backend));
    // One image has one page: nothing to batch (and its text can stream to the terminal).
    let batched = batch > 1 && (named.len() > 1 || named[0].0.kind == InputKind::Pdf);

    let model_dir = resolve_with_bars(&source, !args.quiet)?;
    ui.info(format!(
        "loading {} on {} ({}{}){}",
        model_dir.display(),
        load.backend,
        load.precision,
        load.quant.map(|q| format!(", {q} decoder")).unwrap_or_default(),
        if batched { format!("; up to {batch} pages at once") } else { String::new() },
    ));

    let stream_stdout = !args.quiet
        && !batched
        && std::io::stdout().is_terminal()
        && format != Format::Json
        && named.len() == 1
        && named[0].0.kind == InputKind::Image;
    let job = Job {
        out: args.out.as_deref(),
        ui: &ui,
        options: &options,
        format,
        stream_stdout,
        stdout_headers: args.out.is_none() && named.len() > 1,
    };

    watch_interrupts();
    let mut stats = Stats::default();
    let load_start = Instant::now();
    let (elapsed, not_started) = if batched {
        let (notes_tx, notes_rx) = mpsc::channel();
        let (dir, whitelist) = (model_dir.clone(), options.repeat_guard.whitelist.clone());
        let engine = Engine::start(
            move || {
                let ocr = Ocr::load_dir(&dir, &load)?;
                let _ = notes_tx.send(load_notes(&ocr, load.quant, &whitelist));
                Ok(ocr)
            },
            EngineOptions { max_queue: 2 * batch, batch },
        )?;
        report_load(&ui, load_start, notes_rx.try_recv().unwrap_or_default());
        run_batched(&job, &engine, &named, batch, &mut stats)
    } else {
        let ocr = Ocr::load_dir(&model_dir, &load)?;
        report_load(&ui, load_start, load_notes(&ocr, load.quant, &options.repeat_guard.whitelist));
        run_one_by_one(&job, &ocr, &named, &mut stats)
    };

    let s = &stats;
    let pages = s.pages_ok + s.pages_failed;
    let secs = elapsed.as_secs_f64();
    let (rate, token_rate) = if secs > 0.0 { (s.pages_ok as f64 / secs, s.tokens as f64 / secs) } else { (0.0, 0.0) };
    let files_failed = s.files_failed + input_errors.len();
    ui.info(format!(
        "done: {} file(s){}{}, {pages} page(s){}{}, {} tokens, {}, {rate:.2} pages/s, {token_rate:.0} tokens/s",
        s.files_ok + s.files_failed,
        if files_failed > 0 { format!(" ({files_failed} failed)") } else { String::new() },
        if skipped > 0 { format!(" ({skipped} skipped, complete)") } else { String::new() },
        if s.pages_failed > 0 { format!(" ({} failed)", s.pages_failed) } else { String::new() },
        match (s.pages_flagged, args.retry_loops) {
            (0, _) => String::new(),
            (n, true) => format!(" ({n} without EOS, flagged)"),
            (n, false) => format!(" ({n} without EOS, flagged; --retry-loops re-runs such pages in base mode)"),
        },
        s.tokens,
        seconds(elapsed),
    ));
    if let Some(not_started) = not_started {
        ui.alert(format!("interrupted: {not_started} input(s) not started"));
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    if files_failed > 0 || s.pages_failed > 0 {
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}

/// What to say once the model is loaded: a quantization read from the checkpoint, and the
/// repeat guard's exempt tokens the tokenizer lacks.
fn load_notes(ocr: &Ocr, asked: Option<dsocr::Quant>, whitelist: &[String]) -> (String, Vec<String>) {
    let stored = match (asked, ocr.model().quant) {
        (None, Some(q)) => format!(" ({q} decoder, as stored)"),
        _ => String::new(),
    };
    let (_, missing) = ocr.token_ids(whitelist);
    let notes = missing
        .into_iter()
        .map(|token| format!("note: the tokenizer has no `{token}` token; the repeat guard cannot exempt it"))
        .collect();
    (stored, notes)
}

fn report_load(ui: &Ui, start: Instant, (stored, notes): (String, Vec<String>)) {
    ui.info(format!("model loaded in {}{stored}", seconds(start.elapsed())));
    for note in notes {
        ui.info(note);
    }
}

/// Whether `--skip-existing` may skip `file`: its JSON in `out` says every page is in
/// (`"finished": true`, written only when the document completed) for this same input, and
/// its markdown is there.
fn outputs_complete(out: &Path, file: &InputFile, name: &str) -> bool {
    let Ok(bytes) = std::fs::read(out.join(format!("{name}.json"))) else { return false };
    let Ok(json) = serde_json::from_slice::<dsocr::render::DocumentJson>(&bytes) else { return false };
    json.finished == Some(true)
        && json.source.as_deref() == Some(file.path.display().to_string().as_str())
        && out.join(format!("{name}.mmd")).is_file()
}

/// Says how one input ended and counts it; `rate` is appended to the `ok` line.
fn report(ui: &Ui, file: &InputFile, outcome: FileOutcome, took: Duration, rate: &str, stats: &mut Stats) {
    match outcome {
        FileOutcome::Done(summary) => {
            stats.files_ok += 1;
            ui.info(format!("ok    {} {summary} in {}{rate}", file.path.display(), seconds(took)));
        }
        FileOutcome::Failed(reason) => {
            stats.files_failed += 1;
            ui.alert(format!("error: {reason}"));
        }
        FileOutcome::Interrupted { kept } => {
            ui.alert(format!("interrupted: {}: {kept} page(s) done and kept", file.path.display()));
        }
    }
}

/// `--batch 1` (and a single image): each input through the document loop in turn. Returns
/// the time spent and, after Ctrl-C, how many inputs were not started.
fn run_one_by_one(job: &Job, ocr: &Ocr, named: &[(InputFile, String)], stats: &mut Stats) -> (Duration, Option<usize>) {
    let start = Instant::now();
    let files_bar = job.ui.files_bar(named.len());
    let mut not_started = None;
    for (k, (file, name)) in named.iter().enumerate() {
        if let Some(bar) = &files_bar {
            bar.set_message(file.path.display().to_string());
        }
        let file_start = Instant::now();
        let outcome = job.process(ocr, file, name, stats);
        report(job.ui, file, outcome, file_start.elapsed(), "", stats);
        if let Some(bar) = &files_bar {
            bar.inc(1);
        }
        if interrupted() {
            not_started = Some(named.len() - k - 1);
            break;
        }
    }
    if let Some(bar) = &files_bar {
        job.ui.remove(bar);
    }
    (start.elapsed(), not_started)
}

/// What the engine's callbacks send to the main thread.
enum Message {
    Event(usize, Event),
    Done(usize, Result<DocumentResult, OcrError>),
}

/// `--batch N`: every input submitted to the engine (at most `2 N` documents open at once), so
/// the pages of all of them, PDF pages included, decode together. Each document's files are
/// written as its pages finish and completed when it is done; without `--out` the documents
/// reach stdout in input order. Returns the time spent and, after Ctrl-C, how many inputs
/// were not started.
fn run_batched(
    job: &Job,
    engine: &Engine,
    named: &[(InputFile, String)],
    batch: usize,
    stats: &mut Stats,
) -> (Duration, Option<usize>) {
    let start = Instant::now();
    let ui = job.ui;
    let files_bar = ui.files_bar(named.len());
    let (tx, rx) = mpsc::channel::<Message>();
    let n = named.len();
    let mut runs: Vec<Option<FileRun>> = (0..n).map(|_| None).collect();
    let mut tickets: Vec<Option<Ticket>> = (0..n).map(|_| None).collect();
    // Without --out: finished documents wait here for the ones before them.
    let mut finished: BTreeMap<usize, (FileRun, Result<DocumentResult, OcrError>)> = BTreeMap::new();
    let mut next_out = 0;
    // Inputs the engine did not take (reported at once).
    let mut refused = vec![false; n];
    let (mut next, mut open, mut cancelling) = (0, 0, false);
    let rate = |stats: &Stats| {
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        format!(
            " ({:.2} pages/s, {:.0} tokens/s so far)",
            stats.pages_ok as f64 / secs,
            stats.live_tokens as f64 / secs
        )
    };
    loop {
        while !cancelling && next < n && open < 2 * batch {
            let (file, name) = &named[next];
            let i = next;
            next += 1;
            let events = tx.clone();
            let done = tx.clone();
            let request = dsocr::Job {
                source: Source::File(file.path.clone()),
                name: name.clone(),
                options: job.options.clone(),
                timeout: None,
            };
            let on_event: EventSink = Box::new(move |event| {
                let _ = events.send(Message::Event(i, event));
                ControlFlow::Continue(())
            });
            let on_done: DoneSink = Box::new(move |result| {
                let _ = done.send(Message::Done(i, result));
            });
            runs[i] = Some(FileRun::new(job, file, name, false));
            match engine.submit(request, on_event, on_done) {
                Ok(ticket) => {
                    tickets[i] = Some(ticket);
                    open += 1;
                }
                Err(e) => {
                    runs[i] = None;
                    report(
                        ui,
                        file,
                        FileOutcome::Failed(format!("{}: {e}", file.path.display())),
                        Duration::ZERO,
                        "",
                        stats,
                    );
                    refused[i] = true;
                }
            }
        }
        if open == 0 {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Message::Event(i, event)) => {
                if let Some(run) = runs[i].as_mut() {
                    if run.on_event(event, stats).is_break() {
                        if let Some(ticket) = &tickets[i] {
                            ticket.cancel();
                        }
                    }
                }
            }
            Ok(Message::Done(i, result)) => {
                open -= 1;
                if let Some(run) = runs[i].take() {
                    finished.insert(i, (run, result));
                }
                // With --out every document completes at once; stdout takes them in order.
                let ready: Vec<usize> = if job.out.is_some() {
                    finished.keys().copied().collect()
                } else {
                    let mut ready = Vec::new();
                    while next_out < next && (refused[next_out] || finished.contains_key(&next_out)) {
                        if !refused[next_out] {
                            ready.push(next_out);
                        }
                        next_out += 1;
                    }
                    ready
                };
                for k in ready {
                    if let Some((run, result)) = finished.remove(&k) {
                        let took = run.started.elapsed();
                        let outcome = run.finish(result, stats);
                        report(ui, &named[k].0, outcome, took, &rate(stats), stats);
                        if let Some(bar) = &files_bar {
                            bar.inc(1);
                        }
                    }
                }
            }
            Err(_) => {}
        }
        if interrupted() && !cancelling {
            cancelling = true;
            engine.cancel_all();
        }
        if let Some(bar) = &files_bar {
            bar.set_message(format!("{} pages being generated{}", engine.stats().live_pages, rate(stats)));
        }
    }
    if let Some(bar) = &files_bar {
        ui.remove(bar);
    }
    (start.elapsed(), cancelling.then_some(n - next))
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

/// One input file being processed: its writer, what the terminal shows of it, and how its
/// events turn into output. Fed by the document loop ([`Job::process`]) or by the engine's
/// batch ([`run_batched`]).
struct FileRun<'j, 'a> {
    job: &'j Job<'a>,
    file: &'j InputFile,
    name: String,
    pdf: bool,
    /// Per-page spinners and the PDF's page bar (off when many pages run at once).
    bars: bool,
    /// Made once the input could be opened, so a broken input leaves nothing behind.
    writer: Option<DocumentWriter>,
    write_error: Option<String>,
    view: Option<PageView>,
    pages_bar: Option<ProgressBar>,
    page_count: usize,
    kept_tokens: usize,
    started: Instant,
}

impl<'j, 'a> FileRun<'j, 'a> {
    fn new(job: &'j Job<'a>, file: &'j InputFile, name: &str, bars: bool) -> Self {
        Self {
            job,
            file,
            name: name.to_string(),
            pdf: file.kind == InputKind::Pdf,
            bars,
            writer: None,
            write_error: None,
            view: None,
            pages_bar: None,
            page_count: 1,
            kept_tokens: 0,
            started: Instant::now(),
        }
    }

    /// Handles one event of the file's document; `Break` stops it (a write failed, or Ctrl-C
    /// after a page was written).
    fn on_event(&mut self, event: Event, stats: &mut Stats) -> ControlFlow<()> {
        let job = self.job;
        let mut stdout = std::io::stdout();
        match event {
            Event::DocumentStarted { pages, .. } => {
                self.page_count = pages;
                match job.writer(self.file, &self.name, self.pdf) {
                    Ok(w) => self.writer = w,
                    Err(e) => {
                        self.write_error = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                if self.pdf && self.bars {
                    self.pages_bar = Some(job.ui.pages_bar(pages, &self.file.path.display().to_string()));
                }
            }
            Event::Note { page, message } => {
                job.ui.info(format!("note: {}: page {page}: {message}", self.file.path.display()));
            }
            Event::PageStarted { page, pages } => {
                self.page_count = pages;
                let what = job.what(&self.name, page, self.page_count, self.pdf);
                let spinner = (self.bars && !job.stream_stdout).then(|| job.ui.page_spinner(&what));
                self.view = Some(PageView { spinner, cleaner: job.cleaner(&self.name), pieces: 0, first_piece: None });
            }
            Event::Text { piece, .. } => {
                stats.live_tokens += 1;
                if let Some(v) = self.view.as_mut() {
                    job.show_piece(v, &piece, &mut stdout);
                }
            }
            Event::Retrying { page, finish, tokens, mode } => {
                job.end_stream(self.view.as_mut(), &mut stdout);
                job.ui.alert(format!(
                    "warn: {}: {} after {tokens} tokens in {mode} mode; retrying in base mode",
                    job.what(&self.name, page, self.page_count, self.pdf),
                    finish.describe()
                ));
                if let Some(v) = self.view.as_mut() {
                    (v.pieces, v.first_piece, v.cleaner) = (0, None, job.cleaner(&self.name));
                }
            }
            Event::PageDone(result) => {
                job.end_page(self.view.take(), &mut stdout);
                stats.tokens += result.tokens_spent();
                self.kept_tokens += result.generated_tokens;
                job.note_page(&self.file.path, self.pdf, &self.name, self.page_count, &result, stats);
                if let Some(w) = self.writer.as_mut() {
                    w.set_next_page(result.page);
                    if let Err(e) = w.add_page(PageInput::Generated(result.generated())) {
                        self.write_error = Some(e.to_string());
                        return ControlFlow::Break(());
                    }
                }
                if let Err(e) = job.checkpoint(self.writer.as_mut(), self.pdf, self.pages_bar.as_ref()) {
                    self.write_error = Some(e);
                    return ControlFlow::Break(());
                }
            }
            Event::PageFailed { page, error } => {
                job.end_page(self.view.take(), &mut stdout);
                stats.pages_failed += 1;
                job.ui.alert(format!("error: {error}"));
                if let Some(w) = self.writer.as_mut() {
                    w.set_next_page(page);
                    if let Err(e) = w.add_page(PageInput::Failed { error: error.page_reason() }) {
                        self.write_error = Some(e.to_string());
                        return ControlFlow::Break(());
                    }
                }
                if let Err(e) = job.checkpoint(self.writer.as_mut(), self.pdf, self.pages_bar.as_ref()) {
                    self.write_error = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        // Checked after the event is handled: a page that is done is written first.
        if interrupted() {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// The document is over: its files completed (or, interrupted, those of the pages done),
    /// its result printed to stdout without `--out`.
    fn finish(mut self, outcome: Result<DocumentResult, OcrError>, stats: &mut Stats) -> FileOutcome {
        match self.finish_inner(outcome, stats) {
            Ok(outcome) => outcome,
            Err(reason) => FileOutcome::Failed(reason),
        }
    }

    fn finish_inner(
        &mut self,
        outcome: Result<DocumentResult, OcrError>,
        stats: &mut Stats,
    ) -> Result<FileOutcome, String> {
        let job = self.job;
        let path = self.file.path.display().to_string();
        let at_path = |reason: String| format!("{path}: {reason}");
        job.end_page(self.view.take(), &mut std::io::stdout());
        if let Some(bar) = &self.pages_bar {
            job.ui.remove(bar);
        }
        let doc = match outcome {
            Ok(doc) => doc,
            Err(OcrError::Cancelled { .. }) if self.write_error.is_none() && interrupted() => {
                // The pages done were written and checkpointed; complete their files.
                let kept = self.writer.as_ref().map_or(0, |w| w.document().pages().len());
                if let Some(w) = self.writer.take().filter(|w| !w.document().pages().is_empty()) {
                    w.finish_incomplete().map_err(|e| at_path(e.to_string()))?;
                }
                return Ok(FileOutcome::Interrupted { kept });
            }
            Err(OcrError::Cancelled { .. }) => {
                return Err(at_path(self.write_error.take().unwrap_or_else(|| "cancelled".to_string())));
            }
            Err(e) => {
                if e.page().is_some() {
                    stats.pages_failed += 1;
                }
                return Err(e.to_string());
            }
        };

        let kept_tokens = self.kept_tokens;
        let summary = if self.pdf {
            let failed_note =
                if doc.pages_failed > 0 { format!(", {} failed", doc.pages_failed) } else { String::new() };
            format!("({}/{} pages{failed_note}, {kept_tokens} tokens)", doc.pages_done, doc.pages)
        } else {
            let finish = doc.document.pages().first().and_then(|p| p.finish_reason).unwrap_or(FinishReason::Stop);
            format!("({kept_tokens} tokens, {finish})")
        };
        if let Some(w) = self.writer.take() {
            let files = w.finish().map_err(|e| at_path(e.to_string()))?;
            return Ok(FileOutcome::Done(format!("→ {} {summary}", files.markdown.display())));
        }
        job.print_stdout(&doc).map_err(at_path)?;
        Ok(FileOutcome::Done(summary))
    }
}

impl Job<'_> {
    /// Processes one input file through the document loop, page by page.
    fn process(&self, ocr: &Ocr, file: &InputFile, name: &str, stats: &mut Stats) -> FileOutcome {
        let mut run = FileRun::new(self, file, name, true);
        let outcome = ocr.run_file_named(&file.path, name, self.options, |event| run.on_event(event, stats));
        run.finish(outcome, stats)
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
