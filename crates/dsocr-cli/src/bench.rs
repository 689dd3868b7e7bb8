//! `dsocr bench`: load time, vision, prefill, decode and page throughput, and memory
//! (docs/performance.md).
//!
//! Every stage runs once cold (on GPU backends that first run includes kernel compilation and
//! autotuning, reported separately) and then `--repeat` times warm; the table shows the cold
//! value and the median of the warm runs. Device work is synchronised before a clock stops.
//!
//! Generation is forced to a fixed length: the EOS id is set to `u32::MAX`, an id outside every
//! vocabulary, which `generate` never produces, so each run does exactly the requested work
//! whatever the weights are (random checkpoints included).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::prelude::*;
use clap::Args;
use dsocr::input::load_image;
use dsocr::model::{
    Backend, DeepseekOcr, ExpertDispatch, GenerationConfig, LoadOptions, Precision, Quant, VisionOutput,
};
use dsocr::{Mode, Ocr, OcrOptions};
use dsocr_decoder::greedy_token;
use dsocr_testkit::random_checkpoint;
use serde::Serialize;

/// The EOS id of forced generation: outside any vocabulary, so never generated.
const NEVER_EOS: u32 = u32::MAX;

/// Decode steps timed part by part (after the prefill stage).
const BREAKDOWN_STEPS: usize = 8;

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Load-test a running `dsocr serve`: concurrent clients, requests/s, latency, errors, memory.
    Serve(crate::load::LoadArgs),
    /// Each CubeCL kernel against the op it replaces at the decoder's real shapes: time, GB/s, error.
    Kernels(crate::bench_kernels::KernelArgs),
    /// Quantized decoders against the unquantized model: greedy top-1 agreement and logit error
    /// over long teacher-forced runs.
    Quant(crate::bench_quant::QuantArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// Model folder. Used as it is when it holds safetensors weights; otherwise a full-size
    /// checkpoint with random weights (6.67 GB, real names, shapes and config) is written there
    /// first.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backend: cpu, ndarray, wgpu or cuda (among those compiled in).
    #[arg(long, default_value_t = default_backend())]
    device: String,
    /// Float precision: f32, f16 or bf16 (default: the backend's fast precision: f32 on CPU,
    /// f16 on wgpu, bf16 on cuda).
    #[arg(long)]
    precision: Option<String>,
    /// Quantize the decoder's weights at load: q8 or q4 (any backend).
    #[arg(long)]
    quant: Option<String>,
    /// With --quant: keep the lm_head in the model's precision.
    #[arg(long)]
    float_lm_head: bool,
    /// bf16 on the CPU: copy the decoder's weights into huge-page memory (faster decode, more
    /// resident memory) instead of multiplying the mapped checkpoint in place.
    #[arg(long)]
    copy_weights: bool,
    /// Page image [default: the fixture page of the workspace this binary was built in, 1280×800:
    /// Gundam 3×2 = 6 tiles; required when the binary runs outside it].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Largest Gundam tile grid (2..=9) [default: the official 6; the fixture page takes a 3×2
    /// grid under 6 and under upstream HF's 9 alike].
    #[arg(long)]
    max_crops: Option<usize>,
    /// Forced decode length at batch 1 (EOS ignored).
    #[arg(long, default_value_t = 1000)]
    decode_tokens: usize,
    /// Pages per timed stream (pages/s).
    #[arg(long, default_value_t = 4)]
    pages: usize,
    /// New tokens per page in the page stream (EOS ignored, so the work is fixed).
    #[arg(long, default_value_t = 128)]
    page_tokens: usize,
    /// Warm runs per stage (the median is reported), after one cold run.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// JSON written by `bench/torch_reference.py --bench ... --json FILE` on the same machine:
    /// adds a table of dsocr / PyTorch ratios.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// MoE expert path: auto, on-device (gathered decode, dense prefill), gathered-grouped or host-grouped.
    #[arg(long, default_value = "auto")]
    experts: String,
    /// Seed of the random checkpoint, when one has to be written.
    #[arg(long, default_value_t = 1234)]
    seed: u64,
    /// Only load the model, print load time and memory, exit (for `/usr/bin/time -v`).
    #[arg(long)]
    load_only: bool,
    /// Skip the Gundam vision stage.
    #[arg(long)]
    skip_vision: bool,
    /// Skip the Base vision stage.
    #[arg(long)]
    skip_base: bool,
    /// Skip the prefill stage (and the decode-step breakdown).
    #[arg(long)]
    skip_prefill: bool,
    /// Skip the decode stage.
    #[arg(long)]
    skip_decode: bool,
    /// Skip the page stream.
    #[arg(long)]
    skip_pages: bool,
    /// Skip the per-part timing of single decode steps.
    #[arg(long)]
    skip_breakdown: bool,
    /// Continuous batching instead of the stages: for each batch size (comma-separated, e.g.
    /// 1,8,32) stream `--batch-pages` Gundam pages with forced lengths around `--mean-tokens`
    /// and report pages/s, tokens/s and where the time goes.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u64).range(1..))]
    batch: Vec<u64>,
    /// Pages per batch size in `--batch` mode.
    #[arg(long, default_value_t = 32)]
    batch_pages: usize,
    /// Mean forced output length in `--batch` mode (uniform in [mean/2, 3·mean/2), fixed seed).
    #[arg(long, default_value_t = 1000)]
    mean_tokens: usize,
    /// Pages admitted together in `--batch` mode (their views encoded and prompts prefilled in
    /// one pass); 1 admits them one by one.
    #[arg(long, default_value_t = dsocr::model::ADMIT_GROUP, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    admit_group: usize,
    /// `--batch` mode: run the first K pages alone afterwards and report where their ids differ
    /// from their batched ids.
    #[arg(long, default_value_t = 0)]
    batch_check: usize,
}

pub(crate) fn default_backend() -> String {
    Backend::compiled().last().map(|b| b.name().to_string()).unwrap_or_else(|| "cpu".into())
}

/// One stage: the first (cold) run and the warm runs, in seconds.
#[derive(Debug, Clone, Serialize)]
struct Timing {
    cold_s: f64,
    median_s: f64,
    runs_s: Vec<f64>,
}

impl Timing {
    fn new(cold_s: f64, runs_s: Vec<f64>) -> Self {
        Self { cold_s, median_s: median(&runs_s).unwrap_or(cold_s), runs_s }
    }
}

#[derive(Debug, Clone, Serialize)]
struct VisionResult {
    mode: String,
    tiles: usize,
    grid: [usize; 2],
    image_tokens: usize,
    /// Preprocessing + encoder + projector, device synchronised.
    total: Timing,
    /// Host preprocessing only (Pillow-exact resize, tiling).
    preprocess: Timing,
}

#[derive(Debug, Clone, Serialize)]
struct PrefillResult {
    prompt_tokens: usize,
    /// Prompt embedding, forward over the prompt, lm_head of the last position, argmax read back.
    time: Timing,
    tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
struct DecodeResult {
    prompt_tokens: usize,
    tokens: usize,
    /// Decode steps only (first token, which comes out of the prefill, excluded).
    cold_tokens_per_s: f64,
    tokens_per_s: f64,
    runs_tokens_per_s: Vec<f64>,
    /// Median / 90th percentile of the single-step times of the warm runs.
    step_ms_median: f64,
    step_ms_p90: f64,
    /// Median step time over the first / last 10% of the steps of the last run (at least one
    /// step each): how the step cost grows with the context.
    step_ms_first_tenth: f64,
    step_ms_last_tenth: f64,
    /// How the steps of the last run ran: `graph` (recorded and replayed: `hardware` on CUDA
    /// graphs, else by re-running the recorded closure) or `eager`.
    steps: &'static str,
    /// Recordings in the last run and the wall time they took (included in the rates above).
    graph_captures: usize,
    graph_capture_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct BreakdownResult {
    context: usize,
    steps: usize,
    /// Median milliseconds: embedding + decoder layers + final norm; lm_head; argmax + read back.
    layers_ms: f64,
    lm_head_ms: f64,
    argmax_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct PagesResult {
    pages: usize,
    page_tokens: usize,
    cold_first_page_s: f64,
    pages_per_s: f64,
    runs_pages_per_s: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Memory {
    peak_rss_bytes: Option<u64>,
    rss_after_load_bytes: Option<u64>,
    peak_rss_after_load_bytes: Option<u64>,
    rss_anon_end_bytes: Option<u64>,
    rss_file_end_bytes: Option<u64>,
    /// Largest `bytes_reserved` / `bytes_in_use` of the device pool, sampled after every run;
    /// `None` where the backend does not report it (flex, ndarray).
    device_reserved_peak_bytes: Option<u64>,
    device_in_use_peak_bytes: Option<u64>,
    /// `nvidia-smi --query-compute-apps` for this process at the end, when available.
    nvidia_smi_process_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_bytes: Option<u64>,
    gpu: Option<String>,
    /// /proc/loadavg (1, 5, 15 min) when the run started and ended: above the core count means
    /// other processes competed for the CPU.
    loadavg_start: Option<String>,
    loadavg_end: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    backend: String,
    precision: String,
    /// `q8`, `q4` (and `, float lm_head`), or `none`.
    quant: String,
    expert_dispatch: String,
    machine: Machine,
    model: String,
    random_checkpoint_written: bool,
    parameters: usize,
    image: String,
    repeat: usize,
    load_s: f64,
    vision_gundam: Option<VisionResult>,
    vision_base: Option<VisionResult>,
    prefill: Option<PrefillResult>,
    decode: Option<DecodeResult>,
    decode_step_breakdown: Option<BreakdownResult>,
    pages: Option<PagesResult>,
    memory: Memory,
}

/// The fixture page under the workspace this binary lives in (`target/<profile>/dsocr`) or was
/// built from; `None` when neither has it (a binary carried to another machine).
pub(crate) fn default_image() -> Option<PathBuf> {
    const PAGE: &str = "tests/fixtures/reference-tiny/images/page.png";
    let exe = std::env::current_exe().ok();
    let from_exe = exe.iter().flat_map(|e| e.ancestors().skip(1)).map(|dir| dir.join(PAGE));
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().map(|dir| dir.join(PAGE));
    from_exe.chain(built_in).find(|p| p.is_file())
}

/// The page settings of the benchmark: the library's official options, with the bench's own
/// `--max-crops` and a forced length (EOS never produced).
fn page_options(args: &BenchArgs, max_new_tokens: usize) -> OcrOptions {
    let official = OcrOptions::official();
    OcrOptions {
        max_crops: args.max_crops.unwrap_or(official.max_crops),
        max_new_tokens,
        eos_token_id: Some(NEVER_EOS),
        ..official
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.command {
        Some(BenchCommand::Serve(load)) => return crate::load::run(load),
        Some(BenchCommand::Kernels(kernels)) => return crate::bench_kernels::run(kernels),
        Some(BenchCommand::Quant(quant)) => return crate::bench_quant::run(quant),
        None => {}
    }
    let Some(model_dir) = args.model.clone() else {
        anyhow::bail!("--model is required (a model folder, or where to write the random full-size checkpoint)");
    };
    let backend: Backend = args.device.parse()?;
    let precision: Precision = match &args.precision {
        Some(p) => p.parse().map_err(anyhow::Error::msg)?,
        None => backend.fast_precision(),
    };
    let quant: Option<Quant> = match &args.quant {
        Some(q) => Some(q.parse().map_err(|e: String| anyhow::anyhow!("--quant: {e}"))?),
        None => None,
    };
    let dispatch: ExpertDispatch = args.experts.parse().map_err(|e: String| anyhow::anyhow!("--experts: {e}"))?;
    let image = match (&args.image, args.load_only) {
        (Some(path), _) => path.clone(),
        (None, true) => PathBuf::new(),
        (None, false) => default_image().context(
            "no --image given and the fixture page (tests/fixtures/reference-tiny/images/page.png) is not in the \
             workspace of this binary: pass --image PAGE",
        )?,
    };

    let written = ensure_checkpoint(&model_dir, args.seed)?;

    let machine = machine();
    eprintln!("loading {} on {backend} ({precision})", model_dir.display());
    let start = Instant::now();
    let mut load = LoadOptions::new(backend, precision);
    load.expert_dispatch = dispatch;
    load.quant = quant;
    load.quantize_lm_head = !args.float_lm_head;
    load.copy_weights = args.copy_weights;
    let model = DeepseekOcr::load(&model_dir, &load)
        .with_context(|| format!("loading the model in {}", model_dir.display()))?;
    model.device.sync().map_err(|e| anyhow::anyhow!("device sync after load: {e:?}"))?;
    let load_s = start.elapsed().as_secs_f64();
    let status = ProcStatus::read();
    let parameters = parameter_count(&model_dir);
    eprintln!(
        "loaded in {load_s:.2} s; RSS {} (peak {}, anon {}, file {})",
        fmt_bytes(status.rss),
        fmt_bytes(status.hwm),
        fmt_bytes(status.anon),
        fmt_bytes(status.file)
    );

    let mut mem = MemorySampler::new(&model.device);
    let mut report = Report {
        backend: backend.to_string(),
        precision: precision.to_string(),
        quant: match (quant, model.quant) {
            (Some(q), _) if args.float_lm_head => format!("{q}, float lm_head"),
            (Some(q), _) => q.to_string(),
            (None, Some(q)) => format!("{q}, as stored (dsocr quantize)"),
            (None, None) if args.copy_weights => "none, weights copied to huge pages".into(),
            (None, None) => "none".into(),
        },
        expert_dispatch: format!("{dispatch:?}"),
        machine,
        model: model_dir.display().to_string(),
        random_checkpoint_written: written,
        parameters,
        image: image.display().to_string(),
        repeat: args.repeat,
        load_s,
        vision_gundam: None,
        vision_base: None,
        prefill: None,
        decode: None,
        decode_step_breakdown: None,
        pages: None,
        memory: Memory {
            peak_rss_bytes: None,
            rss_after_load_bytes: status.rss,
            peak_rss_after_load_bytes: status.hwm,
            rss_anon_end_bytes: None,
            rss_file_end_bytes: None,
            device_reserved_peak_bytes: None,
            device_in_use_peak_bytes: None,
            nvidia_smi_process_bytes: None,
        },
    };

    if !args.batch.is_empty() && !args.load_only {
        let batches: Vec<usize> = args.batch.iter().map(|&b| b as usize).collect();
        let max_crops = args.max_crops.unwrap_or(OcrOptions::official().max_crops);
        let bench = crate::bench_batch::BatchBench {
            batches,
            pages: args.batch_pages,
            mean_tokens: args.mean_tokens,
            admit_group: args.admit_group,
            check: args.batch_check,
            max_crops,
            seed: args.seed,
        };
        let rows = crate::bench_batch::run(&model, &image, &bench)?;
        println!("{}", crate::bench_batch::markdown(&rows));
        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&serde_json::json!({ "report": report, "batched": rows }))?;
            std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ocr = Ocr::new(model);
    if !args.load_only {
        run_stages(&args, &image, &ocr, &mut report, &mut mem)?;
    }

    let status = ProcStatus::read();
    report.memory.peak_rss_bytes = status.hwm;
    report.memory.rss_anon_end_bytes = status.anon;
    report.memory.rss_file_end_bytes = status.file;
    report.memory.device_reserved_peak_bytes = mem.reserved;
    report.memory.device_in_use_peak_bytes = mem.in_use;
    report.memory.nvidia_smi_process_bytes = nvidia_smi_process_memory();
    report.machine.loadavg_end = loadavg();

    println!("{}", markdown(&report));
    if let Some(path) = &args.compare {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let torch: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        println!("{}", comparison(&report, &torch));
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_stages(
    args: &BenchArgs,
    image_path: &Path,
    ocr: &Ocr,
    report: &mut Report,
    mem: &mut MemorySampler,
) -> Result<()> {
    let model = ocr.model();
    let options = page_options(args, args.page_tokens);
    let image = load_image(image_path).with_context(|| format!("reading {}", image_path.display()))?;
    let repeat = args.repeat;
    let sync = || model.device.sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"));

    // Vision: preprocessing + DeepEncoder + projector for one page.
    let mut gundam_vision: Option<VisionOutput> = None;
    let mut vision_stage = |mode: Mode, keep: bool| -> Result<(VisionResult, Option<VisionOutput>)> {
        let once = || -> Result<(f64, f64, VisionOutput)> {
            let start = Instant::now();
            let prepared = model.prepare(&image, mode, options.max_crops)?;
            let prep = start.elapsed().as_secs_f64();
            let out = model.encode_image(prepared)?;
            sync()?;
            Ok((prep, start.elapsed().as_secs_f64(), out))
        };
        eprintln!("vision {mode:?}: cold run");
        let (cold_prep, cold_total, mut out) = once()?;
        mem.sample();
        let (mut preps, mut totals) = (Vec::new(), Vec::new());
        for i in 0..repeat {
            eprintln!("vision {mode:?}: warm run {}/{repeat}", i + 1);
            let (p, t, o) = once()?;
            mem.sample();
            preps.push(p);
            totals.push(t);
            out = o;
        }
        let p = &out.prepared;
        let result = VisionResult {
            mode: format!("{mode:?}"),
            tiles: p.tiles.len(),
            grid: [p.grid.0 as usize, p.grid.1 as usize],
            image_tokens: p.image_token_count(),
            total: Timing::new(cold_total, totals),
            preprocess: Timing::new(cold_prep, preps),
        };
        eprintln!(
            "  = vision {mode:?} ({} tiles): cold {}, warm median {}",
            result.tiles,
            fmt_s(result.total.cold_s),
            fmt_s(result.total.median_s)
        );
        Ok((result, keep.then_some(out)))
    };
    if !args.skip_vision {
        let (result, out) = vision_stage(Mode::Gundam, true)?;
        report.vision_gundam = Some(result);
        gundam_vision = out;
    }
    if !args.skip_base {
        report.vision_base = Some(vision_stage(Mode::Base, false)?.0);
    }
    let needs_prompt = !(args.skip_prefill && args.skip_decode);
    if needs_prompt && gundam_vision.is_none() {
        eprintln!("vision Gundam (untimed, for the prompt)");
        gundam_vision = Some(model.encode_image(model.prepare(&image, options.mode, options.max_crops)?)?);
    }
    let prompt = options.prompt.text();

    if !args.skip_prefill {
        let vision = gundam_vision.as_ref().context("no vision output")?;
        let decoder = &model.decoder;
        let vocab = decoder.config().vocab_size;
        let once = || -> Result<(f64, usize, dsocr_decoder::KvCache, u32)> {
            let start = Instant::now();
            let (ids, embeds) = model.prompt_embeddings(&prompt, Some(vision))?;
            let len = ids.len();
            let mut cache = decoder.new_cache();
            let hidden = decoder.forward(embeds, &mut cache);
            let logits = decoder.logits(hidden.narrow(1, len - 1, 1)).reshape([1, vocab]);
            let token = greedy_token(logits, &[]);
            Ok((start.elapsed().as_secs_f64(), len, cache, token))
        };
        eprintln!("prefill: cold run");
        let (cold, len, _, _) = once()?;
        mem.sample();
        let mut runs = Vec::new();
        let mut last = None;
        for i in 0..repeat.max(1) {
            eprintln!("prefill: warm run {}/{}", i + 1, repeat.max(1));
            let (t, _, cache, token) = once()?;
            mem.sample();
            runs.push(t);
            last = Some((cache, token));
        }
        let time = Timing::new(cold, runs);
        eprintln!("  = prefill {len} tokens: cold {}, warm median {}", fmt_s(time.cold_s), fmt_s(time.median_s));
        report.prefill = Some(PrefillResult { prompt_tokens: len, tokens_per_s: len as f64 / time.median_s, time });

        // One decode step, part by part, continuing the last prefill.
        if !args.skip_breakdown {
            if let Some((mut cache, mut token)) = last {
                eprintln!("decode-step breakdown: {BREAKDOWN_STEPS} steps");
                let (mut layers, mut head, mut argmax) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..BREAKDOWN_STEPS {
                    let t0 = Instant::now();
                    let hidden = decoder.forward(decoder.embed(&[token]), &mut cache);
                    sync()?;
                    let t1 = Instant::now();
                    let logits = decoder.logits(hidden);
                    sync()?;
                    let t2 = Instant::now();
                    token = greedy_token(logits.reshape([1, vocab]), &[]);
                    let t3 = Instant::now();
                    layers.push((t1 - t0).as_secs_f64() * 1e3);
                    head.push((t2 - t1).as_secs_f64() * 1e3);
                    argmax.push((t3 - t2).as_secs_f64() * 1e3);
                }
                mem.sample();
                let b = BreakdownResult {
                    context: len,
                    steps: BREAKDOWN_STEPS,
                    layers_ms: median(&layers).unwrap_or(f64::NAN),
                    lm_head_ms: median(&head).unwrap_or(f64::NAN),
                    argmax_ms: median(&argmax).unwrap_or(f64::NAN),
                };
                eprintln!(
                    "  = decode step: layers {:.2} ms, lm_head {:.2} ms, argmax + read back {:.2} ms",
                    b.layers_ms, b.lm_head_ms, b.argmax_ms
                );
                report.decode_step_breakdown = Some(b);
            }
        }
    }

    if !args.skip_decode && args.decode_tokens >= 2 {
        let vision = gundam_vision.as_ref().context("no vision output")?;
        let gen = GenerationConfig {
            max_new_tokens: args.decode_tokens,
            eos_token_id: NEVER_EOS,
            repeat_guard: None,
            trace: None,
            ..GenerationConfig::default()
        };
        // Returns the prompt length, the instants at which each token was handed out and how
        // the steps ran.
        let once = || -> Result<(usize, Vec<Instant>, dsocr_decoder::StepReport)> {
            let (ids, embeds) = model.prompt_embeddings(&prompt, Some(vision))?;
            let mut stamps = Vec::with_capacity(args.decode_tokens);
            let out = dsocr_decoder::generate(&model.decoder, embeds, &ids, &gen, |_| {
                stamps.push(Instant::now());
                ControlFlow::Continue(())
            })?;
            if out.ids.len() != args.decode_tokens {
                bail!(
                    "generation produced {} tokens instead of {} (context limit: prompt {} + new ≤ max_position_embeddings)",
                    out.ids.len(),
                    args.decode_tokens,
                    ids.len()
                );
            }
            Ok((ids.len(), stamps, out.steps))
        };
        let rate = |stamps: &[Instant]| {
            let span = (stamps[stamps.len() - 1] - stamps[0]).as_secs_f64();
            (stamps.len() - 1) as f64 / span
        };
        eprintln!("decode {} tokens: cold run", args.decode_tokens);
        let (prompt_tokens, stamps, mut step_report) = once()?;
        mem.sample();
        let cold = rate(&stamps);
        eprintln!("  = {cold:.2} tokens/s");
        let (mut rates, mut steps) = (Vec::new(), Vec::new());
        for i in 0..repeat {
            eprintln!("decode {} tokens: warm run {}/{repeat}", args.decode_tokens, i + 1);
            let (_, stamps, report) = once()?;
            step_report = report;
            mem.sample();
            rates.push(rate(&stamps));
            eprintln!("  = {:.2} tokens/s", rate(&stamps));
            steps.extend(stamps.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
        }
        if steps.is_empty() {
            steps.extend(stamps.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1e3));
        }
        let last_run: Vec<f64> = steps[steps.len() - (args.decode_tokens - 1)..].to_vec();
        let tenth = (last_run.len() / 10).max(1);
        report.decode = Some(DecodeResult {
            prompt_tokens,
            tokens: args.decode_tokens,
            cold_tokens_per_s: cold,
            tokens_per_s: median(&rates).unwrap_or(cold),
            runs_tokens_per_s: rates,
            step_ms_median: median(&steps).unwrap_or(f64::NAN),
            step_ms_p90: percentile(&steps, 0.9).unwrap_or(f64::NAN),
            step_ms_first_tenth: median(&last_run[..tenth]).unwrap_or(f64::NAN),
            step_ms_last_tenth: median(&last_run[last_run.len() - tenth..]).unwrap_or(f64::NAN),
            steps: match (step_report.graph, step_report.hardware) {
                (true, true) => "graph (hardware)",
                (true, false) => "graph (re-run)",
                _ => "eager",
            },
            graph_captures: step_report.captures,
            graph_capture_ms: step_report.capture_time.as_secs_f64() * 1e3,
        });
    }
    drop(gundam_vision);

    if !args.skip_pages && args.pages > 0 {
        // Whole pages through the library's document loop: image file → markdown, with the
        // official settings (repeat guard included) and a forced length.
        let page = || -> Result<()> {
            let doc = ocr.run_file(image_path, &options, |_| ControlFlow::Continue(()))?;
            if doc.tokens != args.page_tokens {
                bail!("a page produced {} tokens instead of {}", doc.tokens, args.page_tokens);
            }
            Ok(())
        };
        eprintln!("pages: cold page");
        let start = Instant::now();
        page()?;
        let cold = start.elapsed().as_secs_f64();
        mem.sample();
        eprintln!("  = first page {}", fmt_s(cold));
        let mut rates = Vec::new();
        for i in 0..repeat {
            eprintln!("pages: warm stream {}/{repeat} ({} pages)", i + 1, args.pages);
            let start = Instant::now();
            for _ in 0..args.pages {
                page()?;
            }
            rates.push(args.pages as f64 / start.elapsed().as_secs_f64());
            mem.sample();
            eprintln!("  = {:.3} pages/s", rates[rates.len() - 1]);
        }
        report.pages = Some(PagesResult {
            pages: args.pages,
            page_tokens: args.page_tokens,
            cold_first_page_s: cold,
            pages_per_s: median(&rates).unwrap_or(1.0 / cold),
            runs_pages_per_s: rates,
        });
    }
    Ok(())
}

/// Uses `dir` when it holds weights; otherwise writes a random full-size checkpoint there.
/// Returns whether one was written.
fn ensure_checkpoint(dir: &Path, seed: u64) -> Result<bool> {
    if random_checkpoint::has_weights(dir) {
        return Ok(false);
    }
    eprintln!(
        "{} has no safetensors weights: writing a full-size RANDOM checkpoint there first \
         (6.67 GB bf16, seed {seed}, real config.json, real tokenizer)",
        dir.display()
    );
    let start = Instant::now();
    let written = random_checkpoint::write(dir, seed)?;
    eprintln!(
        "wrote {} ({} tensors, {} parameters, {}) in {:.1} s",
        written.weights.display(),
        written.tensors,
        written.parameters,
        fmt_bytes(Some(written.bytes)),
        start.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// Parameters in the checkpoint's header (0 if it cannot be read).
fn parameter_count(dir: &Path) -> usize {
    dsocr_weights::SafetensorsFiles::open(dir)
        .map(|files| {
            files.names().iter().filter_map(|n| files.info(n)).map(|i| i.shape.iter().product::<usize>()).sum()
        })
        .unwrap_or(0)
}

fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 0.5)
}

/// Nearest-rank percentile (median: the middle value, mean of the two middle ones if even).
fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if q == 0.5 {
        let n = v.len();
        return Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 });
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// Peak of the device pool's `bytes_reserved` / `bytes_in_use` over the samples taken.
struct MemorySampler {
    device: Device,
    reserved: Option<u64>,
    in_use: Option<u64>,
}

impl MemorySampler {
    fn new(device: &Device) -> Self {
        let mut s = Self { device: device.clone(), reserved: None, in_use: None };
        s.sample();
        s
    }

    fn sample(&mut self) {
        if let Some(usage) = self.device.memory_pool_usage() {
            self.reserved = Some(self.reserved.unwrap_or(0).max(usage.bytes_reserved));
            self.in_use = Some(self.in_use.unwrap_or(0).max(usage.bytes_in_use));
        }
    }
}

/// The memory lines of /proc/self/status (bytes).
#[derive(Default)]
struct ProcStatus {
    rss: Option<u64>,
    hwm: Option<u64>,
    anon: Option<u64>,
    file: Option<u64>,
}

impl ProcStatus {
    fn read() -> Self {
        let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        };
        Self { rss: field("VmRSS:"), hwm: field("VmHWM:"), anon: field("RssAnon:"), file: field("RssFile:") }
    }
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l["MemTotal:".len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let gpu = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().lines().collect::<Vec<_>>().join("; "))
        .filter(|s| !s.is_empty());
    Machine { cpu, cores, memory_bytes, gpu, loadavg_start: loadavg(), loadavg_end: None }
}

fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// GPU memory `nvidia-smi` attributes to this process (bytes), if it can tell.
fn nvidia_smi_process_memory() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    let pid = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (p, mib) = l.split_once(',')?;
        (p.trim() == pid).then(|| mib.trim().parse::<u64>().ok().map(|m| m * 1024 * 1024)).flatten()
    })
}

fn fmt_bytes(b: Option<u64>) -> String {
    match b {
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        None => "n/a".into(),
    }
}

fn fmt_s(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    out.push_str(&format!(
        "dsocr bench: backend {}, precision {}, quantization {}, experts {}\nmachine: {}, {} cores, {} RAM{}; load average {} at start, {} at end\nmodel: {} ({} parameters{}), image {}, {} warm run(s) per stage\n\n",
        r.backend,
        r.precision,
        r.quant,
        r.expert_dispatch,
        m.cpu,
        m.cores,
        fmt_bytes(m.memory_bytes),
        m.gpu.as_ref().map(|g| format!(", GPU {g}")).unwrap_or_default(),
        m.loadavg_start.as_deref().unwrap_or("n/a"),
        m.loadavg_end.as_deref().unwrap_or("n/a"),
        r.model,
        r.parameters,
        if r.random_checkpoint_written { ", random weights written by this run" } else { "" },
        r.image,
        r.repeat
    ));
    out.push_str("| stage | cold (first run) | warm (median) | notes |\n|---|---|---|---|\n");
    out.push_str(&format!("| model load | {} | – | weights to device, synced |\n", fmt_s(r.load_s)));
    for v in [&r.vision_gundam, &r.vision_base].into_iter().flatten() {
        out.push_str(&format!(
            "| vision {} ({} tiles, grid {}×{}, {} image tokens) | {} | {} | preprocessing {} of it |\n",
            v.mode,
            v.tiles,
            v.grid[0],
            v.grid[1],
            v.image_tokens,
            fmt_s(v.total.cold_s),
            fmt_s(v.total.median_s),
            fmt_s(v.preprocess.median_s)
        ));
    }
    if let Some(p) = &r.prefill {
        out.push_str(&format!(
            "| prefill, Gundam prompt ({} tokens) | {} | {} | {:.0} tokens/s |\n",
            p.prompt_tokens,
            fmt_s(p.time.cold_s),
            fmt_s(p.time.median_s),
            p.tokens_per_s
        ));
    }
    if let Some(d) = &r.decode {
        out.push_str(&format!(
            "| decode, batch 1, {} forced tokens after {} | {:.2} tokens/s | **{:.2} tokens/s** | step {:.1} ms median, {:.1} ms p90; first/last tenth {:.1}/{:.1} ms; {} steps, {} recordings in {:.0} ms |\n",
            d.tokens,
            d.prompt_tokens,
            d.cold_tokens_per_s,
            d.tokens_per_s,
            d.step_ms_median,
            d.step_ms_p90,
            d.step_ms_first_tenth,
            d.step_ms_last_tenth,
            d.steps,
            d.graph_captures,
            d.graph_capture_ms
        ));
    }
    if let Some(p) = &r.pages {
        out.push_str(&format!(
            "| pages: Gundam page + {} tokens, stream of {} | {} first page | **{:.3} pages/s** | {} per page |\n",
            p.page_tokens,
            p.pages,
            fmt_s(p.cold_first_page_s),
            p.pages_per_s,
            fmt_s(1.0 / p.pages_per_s)
        ));
    }
    let mem = &r.memory;
    out.push_str(&format!(
        "| peak RSS (VmHWM) | {} after load | {} whole run | end: anon {}, file-backed {} |\n",
        fmt_bytes(mem.peak_rss_after_load_bytes),
        fmt_bytes(mem.peak_rss_bytes),
        fmt_bytes(mem.rss_anon_end_bytes),
        fmt_bytes(mem.rss_file_end_bytes)
    ));
    match mem.device_reserved_peak_bytes {
        Some(reserved) => out.push_str(&format!(
            "| peak device memory (pool, sampled after each run) | – | {} reserved | {} in use{} |\n",
            fmt_bytes(Some(reserved)),
            fmt_bytes(mem.device_in_use_peak_bytes),
            mem.nvidia_smi_process_bytes.map(|b| format!("; nvidia-smi: {}", fmt_bytes(Some(b)))).unwrap_or_default()
        )),
        None => out.push_str(
            "| peak device memory | – | n/a | this backend reports no memory pool (host memory: see RSS) |\n",
        ),
    }
    if let Some(b) = &r.decode_step_breakdown {
        out.push_str(&format!(
            "\nOne decode step at context {} (median of {} steps, device synced between parts):\n\n| part | ms |\n|---|---|\n| embedding + all layers + final norm | {:.2} |\n| lm_head | {:.2} |\n| argmax + read back | {:.2} |\n",
            b.context, b.steps, b.layers_ms, b.lm_head_ms, b.argmax_ms
        ));
    }
    out
}

/// The dsocr / PyTorch table: for times, speed-up = PyTorch time / dsocr time; for rates,
/// dsocr rate / PyTorch rate; memory as a plain ratio. Values the reference lacks are `n/a`.
fn comparison(r: &Report, torch: &serde_json::Value) -> String {
    let num = |path: &[&str]| -> Option<f64> {
        let mut v = torch;
        for key in path {
            v = v.get(key)?;
        }
        v.as_f64()
    };
    let ms = |s: f64| format!("{:.1} ms", s * 1e3);
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut time_row = |name: &str, ours: Option<f64>, theirs: Option<f64>, fmt: &dyn Fn(f64) -> String| {
        if let Some(ours) = ours {
            let ratio = theirs.map_or("n/a".into(), |t| format!("{:.2}×", t / ours));
            rows.push((name.into(), fmt(ours), theirs.map_or("n/a".into(), fmt), ratio));
        }
    };
    time_row("model load", Some(r.load_s), num(&["load", "cold_s"]), &|s| format!("{s:.2} s"));
    time_row(
        "vision, Gundam page",
        r.vision_gundam.as_ref().map(|v| v.total.median_s),
        num(&["vision_gundam", "total", "median_s"]),
        &ms,
    );
    time_row(
        "vision, Base",
        r.vision_base.as_ref().map(|v| v.total.median_s),
        num(&["vision_base", "total", "median_s"]),
        &ms,
    );
    time_row("prefill", r.prefill.as_ref().map(|p| p.time.median_s), num(&["prefill", "time", "median_s"]), &ms);
    let mut rate_row = |name: &str, ours: Option<f64>, theirs: Option<f64>, unit: &str| {
        if let Some(ours) = ours {
            let ratio = theirs.map_or("n/a".into(), |t| format!("{:.2}×", ours / t));
            rows.push((
                name.into(),
                format!("{ours:.2} {unit}"),
                theirs.map_or("n/a".into(), |t| format!("{t:.2} {unit}")),
                ratio,
            ));
        }
    };
    rate_row(
        "decode, batch 1",
        r.decode.as_ref().map(|d| d.tokens_per_s),
        num(&["decode", "tokens_per_s"]),
        "tokens/s",
    );
    rate_row("pages", r.pages.as_ref().map(|p| p.pages_per_s), num(&["pages", "pages_per_s"]), "pages/s");
    if let Some(ours) = r.memory.device_reserved_peak_bytes {
        let theirs = num(&["memory", "device_reserved_peak_bytes"]);
        rows.push((
            "peak device memory (reserved)".into(),
            fmt_bytes(Some(ours)),
            theirs.map_or("n/a".into(), |t| fmt_bytes(Some(t as u64))),
            theirs.map_or("n/a".into(), |t| format!("{:.2}× of PyTorch's", ours as f64 / t)),
        ));
    }
    let device = torch.get("device").and_then(|d| d.as_str()).unwrap_or("?");
    let dtype = torch.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
    let mut out = format!(
        "dsocr ({} {}) vs PyTorch reference ({device}, {dtype}); speed-up > 1 means dsocr is faster\n\n| measurement | dsocr | PyTorch | speed-up |\n|---|---|---|---|\n",
        r.backend, r.precision
    );
    for (name, ours, theirs, ratio) in rows {
        out.push_str(&format!("| {name} | {ours} | {theirs} | {ratio} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.9), Some(9.0));
        assert_eq!(percentile(&v, 1.0), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
    }

    #[test]
    fn proc_status_reports_this_process() {
        let status = ProcStatus::read();
        let (rss, hwm) = (status.rss.unwrap(), status.hwm.unwrap());
        assert!(rss > 0 && hwm >= rss, "rss {rss} hwm {hwm}");
    }

    #[test]
    fn comparison_ratios_point_the_right_way() {
        let timing = |s: f64| Timing::new(s, vec![s]);
        let report = Report {
            backend: "cuda".into(),
            precision: "bf16".into(),
            quant: "none".into(),
            expert_dispatch: "Auto".into(),
            machine: Machine {
                cpu: "x".into(),
                cores: 1,
                memory_bytes: None,
                gpu: None,
                loadavg_start: None,
                loadavg_end: None,
            },
            model: "m".into(),
            random_checkpoint_written: false,
            parameters: 1,
            image: "i".into(),
            repeat: 1,
            load_s: 2.0,
            vision_gundam: Some(VisionResult {
                mode: "gundam".into(),
                tiles: 6,
                grid: [3, 2],
                image_tokens: 1,
                total: timing(0.050),
                preprocess: timing(0.01),
            }),
            vision_base: None,
            prefill: None,
            decode: Some(DecodeResult {
                prompt_tokens: 1,
                tokens: 10,
                cold_tokens_per_s: 1.0,
                tokens_per_s: 100.0,
                runs_tokens_per_s: vec![100.0],
                step_ms_median: 10.0,
                step_ms_p90: 10.0,
                step_ms_first_tenth: 10.0,
                step_ms_last_tenth: 10.0,
                steps: "eager",
                graph_captures: 0,
                graph_capture_ms: 0.0,
            }),
            decode_step_breakdown: None,
            pages: None,
            memory: Memory {
                peak_rss_bytes: None,
                rss_after_load_bytes: None,
                peak_rss_after_load_bytes: None,
                rss_anon_end_bytes: None,
                rss_file_end_bytes: None,
                device_reserved_peak_bytes: None,
                device_in_use_peak_bytes: None,
                nvidia_smi_process_bytes: None,
            },
        };
        let torch = serde_json::json!({
            "device": "H100", "dtype": "bfloat16",
            "load": {"cold_s": 4.0},
            "vision_gundam": {"total": {"median_s": 0.1}},
            "decode": {"tokens_per_s": 50.0}
        });
        let table = comparison(&report, &torch);
        assert!(table.contains("| model load | 2.00 s | 4.00 s | 2.00× |"), "{table}");
        assert!(table.contains("| vision, Gundam page | 50.0 ms | 100.0 ms | 2.00× |"), "{table}");
        assert!(table.contains("| decode, batch 1 | 100.00 tokens/s | 50.00 tokens/s | 2.00× |"), "{table}");
        assert!(!table.contains("prefill"), "stages dsocr skipped are left out: {table}");
    }
}
