//! `dsocr bench serve`: a load generator for `dsocr serve`. N clients (threads, one connection
//! each) send chat completions with an image over HTTP for a bounded time; the report gives
//! requests/s (one page each), latency percentiles, errors by kind, generated tokens/s and the
//! server's resident memory over time (read from /proc for `--server-pid`).
//!
//! A benchmark, not a test: it measures a server started separately (or by `--spawn-model`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct LoadArgs {
    /// The server, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    url: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How long to send requests, in seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// The image sent with every request.
    #[arg(long)]
    image: PathBuf,
    /// `max_tokens` of every request.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Turn the repeat guard off in the requests (random weights then always reach max_tokens).
    #[arg(long)]
    no_repeat_guard: bool,
    /// dsocr mode of the requests (tiny, small, base, large, gundam).
    #[arg(long)]
    mode: Option<String>,
    /// The server's process id: its resident memory is sampled from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seconds between progress lines and memory samples.
    #[arg(long, default_value_t = 30)]
    every: u64,
    /// Bearer token for a server started with --api-key.
    #[arg(long, env = "DSOCR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    /// Requests answered before the end of `--duration` (the rate is over this window; the
    /// requests in flight at its end are waited for and counted in `ok` and the latencies).
    ok_in_window: u64,
    tokens_in_window: u64,
    tokens: u64,
    latencies: Vec<Duration>,
    /// Errors by kind: `429`, `503`, `transport: ...`, ...
    errors: std::collections::BTreeMap<String, u64>,
}

pub fn run(args: LoadArgs) -> Result<ExitCode> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let bytes = std::fs::read(&args.image).with_context(|| format!("cannot read {}", args.image.display()))?;
    let url = format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes));
    let mut dsocr = json!({});
    if args.no_repeat_guard {
        dsocr["repeat_guard"] = json!(false);
    }
    if let Some(mode) = &args.mode {
        dsocr["mode"] = json!(mode);
    }
    let body = json!({
        "model": "dsocr",
        "max_tokens": args.max_tokens,
        "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }],
        "dsocr": dsocr,
    })
    .to_string();
    let endpoint = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let auth = args.api_key.as_ref().map(|k| format!("Bearer {k}"));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for _ in 0..args.clients {
        let (tally, stop, body, endpoint, auth) =
            (tally.clone(), stop.clone(), body.clone(), endpoint.clone(), auth.clone());
        workers.push(std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(3600)).build();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                let mut request = agent.post(&endpoint).set("Content-Type", "application/json");
                if let Some(auth) = &auth {
                    request = request.set("Authorization", auth);
                }
                let outcome = request.send_string(&body);
                let elapsed = sent.elapsed();
                let mut t = match tally.lock() {
                    Ok(t) => t,
                    Err(_) => return,
                };
                match outcome {
                    Ok(response) => {
                        let answer: Value = response.into_json().unwrap_or(Value::Null);
                        let tokens = answer["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                        t.ok += 1;
                        t.tokens += tokens;
                        if Instant::now() <= deadline {
                            t.ok_in_window += 1;
                            t.tokens_in_window += tokens;
                        }
                        t.latencies.push(elapsed);
                    }
                    Err(ureq::Error::Status(code, response)) => {
                        let after = response.header("Retry-After").and_then(|v| v.parse::<u64>().ok());
                        *t.errors.entry(code.to_string()).or_default() += 1;
                        drop(t);
                        // A well-behaved client waits as told (at most a few seconds here).
                        std::thread::sleep(Duration::from_secs(after.unwrap_or(1).min(5)));
                    }
                    Err(e) => {
                        *t.errors.entry(format!("transport: {}", e.kind())).or_default() += 1;
                        drop(t);
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        }));
    }

    let mut memory: Vec<(u64, u64)> = Vec::new();
    let sample = |memory: &mut Vec<(u64, u64)>| {
        if let Some(kib) = args.server_pid.and_then(rss_kib) {
            memory.push((start.elapsed().as_secs(), kib));
        }
    };
    sample(&mut memory);
    let mut stdout = std::io::stdout();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(args.every).min(deadline.saturating_duration_since(Instant::now())));
        sample(&mut memory);
        if let Ok(t) = tally.lock() {
            let secs = start.elapsed().as_secs_f64();
            let rss =
                memory.last().map_or(String::new(), |(_, k)| format!(", server RSS {:.1} MiB", *k as f64 / 1024.0));
            let errors: u64 = t.errors.values().sum();
            let _ = writeln!(stdout, "{secs:>6.0} s: {} ok ({:.2}/s), {errors} errors{rss}", t.ok, t.ok as f64 / secs);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    sample(&mut memory);
    let wall = args.duration as f64;
    let drained = start.elapsed().as_secs_f64() - wall;
    let mut t = tally.lock().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    t.latencies.sort();
    let pct = |p: f64| -> f64 {
        if t.latencies.is_empty() {
            return 0.0;
        }
        let i = ((t.latencies.len() as f64 - 1.0) * p).round() as usize;
        t.latencies[i].as_secs_f64()
    };
    let report = json!({
        "url": args.url,
        "clients": args.clients,
        "duration_s": wall,
        "drain_s": drained,
        "max_tokens": args.max_tokens,
        "ok": t.ok,
        "ok_in_window": t.ok_in_window,
        "requests_per_s": t.ok_in_window as f64 / wall,
        "tokens_per_s": t.tokens_in_window as f64 / wall,
        "latency_s": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
        "errors": t.errors,
        "server_rss_kib": memory,
    });
    println!("\n| clients | seconds | requests ok | requests/s | tokens/s | p50 s | p99 s | errors |");
    println!("|---|---|---|---|---|---|---|---|");
    let errors = if t.errors.is_empty() {
        "none".to_string()
    } else {
        t.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
    };
    println!(
        "| {} | {wall:.0} | {} | {:.3} | {:.1} | {:.2} | {:.2} | {errors} |",
        args.clients,
        t.ok,
        t.ok_in_window as f64 / wall,
        t.tokens_in_window as f64 / wall,
        pct(0.5),
        pct(0.99)
    );
    println!("(rates over the {wall:.0} s window; the requests in flight at its end took {drained:.0} s more)");
    if let (Some(first), Some(last)) = (memory.first(), memory.last()) {
        let max = memory.iter().map(|(_, k)| *k).max().unwrap_or(0);
        println!(
            "server RSS: {:.1} MiB at start, {:.1} MiB at the end, {:.1} MiB at most ({} samples)",
            first.1 as f64 / 1024.0,
            last.1 as f64 / 1024.0,
            max as f64 / 1024.0,
            memory.len()
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Resident memory of a process, in KiB (Linux).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}
