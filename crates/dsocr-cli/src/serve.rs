//! `dsocr serve`: the HTTP API and the web page (the `dsocr-server` crate) over the engine. The
//! flags become one [`ServerOptions`] (defaults from [`ServerOptions::default`]); the model is
//! loaded on the engine's worker thread; server events are printed on stderr.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use dsocr::hub::{self, ModelSource};
use dsocr::{choose_backend, Engine, EngineOptions, Ocr};
use dsocr_server::{ServerEvent, ServerOptions};

fn defaults() -> ServerOptions {
    ServerOptions::default()
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (127.0.0.1: only this machine; 0.0.0.0: every interface).
    #[arg(long, default_value_t = defaults().host)]
    host: String,

    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = defaults().port)]
    port: u16,

    /// A Hugging Face repo id (owner/name[@revision]) or a local model folder.
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,

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

    /// Most pages decoding together (continuous batching over requests) [default: 16 on a GPU,
    /// 1 on the CPU].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch: Option<usize>,

    /// Most requests waiting for the model; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = EngineOptions::default().max_queue)]
    max_queue: usize,

    /// Largest request body, in MiB.
    #[arg(long, default_value_t = defaults().max_body_bytes / (1024 * 1024))]
    max_body_mb: usize,

    /// Most PDF pages per request.
    #[arg(long, default_value_t = defaults().max_pages, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_pages: usize,

    /// Most tokens generated per page (requests asking more are capped).
    #[arg(long, default_value_t = defaults().max_new_tokens, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_new_tokens: usize,

    /// Largest image, in pixels (checked from the header before decoding).
    #[arg(long, default_value_t = defaults().max_image_pixels)]
    max_image_pixels: u64,

    /// Seconds a request may take, queue time included (then 504).
    #[arg(long, default_value_t = defaults().timeout.as_secs())]
    timeout: u64,

    /// Require `Authorization: Bearer <KEY>` on every API route (not /health and the page files).
    #[arg(long, env = "DSOCR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Allow cross-origin requests from this origin (`*`: any). Off by default.
    #[arg(long, value_name = "ORIGIN")]
    cors: Option<String>,

    /// Seconds requests in flight get to finish after SIGTERM/Ctrl-C before they are cancelled.
    #[arg(long, default_value_t = defaults().shutdown_grace.as_secs())]
    shutdown_grace: u64,
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    match run_inner(args) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_inner(args: ServeArgs) -> Result<()> {
    let mut load = choose_backend(args.device.as_deref(), args.precision.as_deref())?;
    load.quant = args.quant;
    load.copy_weights = args.copy_weights;
    let source = ModelSource::parse(&args.model)?;
    let model_dir = crate::ocr::resolve_with_bars(&source, true)?;
    eprintln!(
        "loading {} on {} ({}{})",
        model_dir.display(),
        load.backend,
        load.precision,
        load.quant.map(|q| format!(", {q} decoder")).unwrap_or_default()
    );
    let start = Instant::now();
    let dir = model_dir.clone();
    let batch = args.batch.unwrap_or(EngineOptions::default_batch(load.backend));
    eprintln!("batch: up to {batch} pages at once");
    let engine = Engine::start(move || Ocr::load_dir(&dir, &load), EngineOptions { max_queue: args.max_queue, batch })
        .with_context(|| format!("cannot start the engine with {}", model_dir.display()))?;
    eprintln!("model loaded in {:.1} s", start.elapsed().as_secs_f64());
    let options = ServerOptions {
        host: args.host,
        port: args.port,
        model_id: args.model,
        max_body_bytes: args.max_body_mb.saturating_mul(1024 * 1024),
        max_pages: args.max_pages,
        max_new_tokens: args.max_new_tokens,
        max_image_pixels: args.max_image_pixels,
        timeout: Duration::from_secs(args.timeout.max(1)),
        api_key: args.api_key.filter(|k| !k.is_empty()),
        cors_origin: args.cors,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let keyed = options.api_key.is_some();
    dsocr_server::run(Arc::new(engine), options, move |event| match event {
        ServerEvent::Listening { addr } => {
            let auth = if keyed { "API key required" } else { "no API key" };
            eprintln!("listening on http://{addr} ({auth}); the web page is at http://{addr}/");
        }
        ServerEvent::ShuttingDown { in_flight } => {
            eprintln!("shutting down: no new requests; {in_flight} in flight (Ctrl-C again to cancel them)")
        }
        ServerEvent::Cancelling { in_flight } => eprintln!("cancelling {in_flight} requests in flight"),
        ServerEvent::Stopped => eprintln!("stopped"),
    })?;
    Ok(())
}
