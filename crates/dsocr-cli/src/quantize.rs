//! `dsocr quantize`: writes a model folder whose decoder weights are stored quantized (q8 or
//! q4), so that `--model DIR` loads them without quantizing (format:
//! `dsocr::model::quantized_checkpoint`; docs/cli.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use dsocr::hub::{self, ModelSource};
use dsocr::model::{save_quantized, QuantizeEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::ocr::resolve_with_bars;
use crate::progress::seconds;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The float model: a local folder or a Hugging Face repo (owner/name[@revision]).
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// q8 (8 bits and an f32 scale per block of 32) or q4 (4 bits).
    #[arg(long)]
    quant: dsocr::Quant,
    /// The folder to write (created if needed): config, tokenizer and model.safetensors.
    #[arg(long)]
    out: PathBuf,
    /// Keep the lm_head in the model's float dtype (quantized by default, as `--quant` does at load).
    #[arg(long)]
    float_lm_head: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(args: QuantizeArgs) -> Result<ExitCode> {
    let source = ModelSource::parse(&args.model)?;
    let src = resolve_with_bars(&source, !args.quiet)?;
    let bar = (!args.quiet).then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").unwrap_or(ProgressStyle::default_bar()),
        );
        bar
    });
    let start = Instant::now();
    let report = save_quantized(&src, args.quant, !args.float_lm_head, &args.out, |event| {
        let QuantizeEvent::Tensor { name, index, total, .. } = event;
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(index as u64);
            bar.set_message(name);
        }
    })
    .with_context(|| {
        format!("cannot write the {} checkpoint of {} to {}", args.quant, src.display(), args.out.display())
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    eprintln!(
        "wrote {} in {}: {} matrices in {}{}, {} tensors copied; {:.2} GiB of weights → {:.2} GiB",
        report.weights.display(),
        seconds(start.elapsed()),
        report.quantized,
        args.quant,
        if args.float_lm_head { " (lm_head kept float)" } else { "" },
        report.copied,
        gib(report.bytes_in),
        gib(report.bytes_out),
    );
    Ok(ExitCode::SUCCESS)
}
