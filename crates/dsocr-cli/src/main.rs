//! `dsocr`: DeepSeek-OCR on your own machine.

mod bench;
mod bench_batch;
mod bench_kernels;
mod bench_quant;
mod debug;
mod load;
mod models;
mod ocr;
mod progress;
mod quantize;
mod render;
mod serve;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dsocr",
    version,
    about = "DeepSeek-OCR, locally: images, folders and PDFs to markdown, text and layout boxes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// OCR images, folders and PDFs.
    Ocr(ocr::OcrArgs),
    /// Rebuild the output files from a saved raw model output (no model needed).
    Render(render::RenderArgs),
    /// List the models in the local Hugging Face cache.
    Models(models::ModelsArgs),
    /// Measure load, vision, prefill and decode speed and memory.
    Bench(Box<bench::BenchArgs>),
    /// Write a model folder with the decoder's weights stored quantized (q8, q4): loads in
    /// seconds where `--quant` quantizes at every load.
    Quantize(quantize::QuantizeArgs),
    /// Serve the OpenAI-compatible API, the OCR endpoint and the web page over HTTP.
    Serve(serve::ServeArgs),
    /// Developer tools: run fixture cases, check numeric parity.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ocr(args) => ocr::run(args),
        Command::Render(args) => render::run(args),
        Command::Models(args) => models::run(args),
        Command::Bench(args) => bench::run(*args),
        Command::Quantize(args) => quantize::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Debug(cmd) => debug::run(cmd),
    }
}
