//! `dsocr bench quant`: what quantized decoder weights cost, against an unquantized reference
//! model (bf16 by default), over long greedy runs.
//!
//! For each prompt the reference decodes `--steps` tokens greedily (lowest id on ties, no EOS,
//! no repeat guard) and its logits are kept. Each quantized model then runs the same prompt
//! **teacher-forced**: at every step it is fed the reference's token, so the two stay on the
//! same sequence and every step is compared:
//!
//! - **top-1 agreement**: the share of steps whose argmax equals the reference's token (the
//!   first step where it does not is where a free-running greedy decode would diverge);
//! - **logit error**: max and mean |Δ| over the whole vocabulary and all steps, beside the
//!   reference logits' standard deviation for scale.
//!
//! A benchmark, not a test: it reports numbers (docs/parity.md, "Quantized weights").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::tensor::{DType, Tensor};
use clap::Args;
use dsocr::input::load_image;
use dsocr::model::{Backend, DeepseekOcr, LoadOptions, Precision, VisionOutput};
use dsocr::{Mode, PromptChoice, Quant, Task};
use dsocr_testkit::parity::top2_margin;
use serde::Serialize;

/// The text prompts used besides the page (`--text`).
const TEXT_PROMPTS: [&str; 2] = [
    "Describe the layout of a scientific paper's first page, section by section.",
    "Convert the following table to markdown: name, year, pages; DeepSeek-OCR, 2025, 22.",
];

#[derive(Args)]
pub struct QuantArgs {
    /// Model folder with safetensors weights (`dsocr bench --model DIR` writes a random
    /// full-size one).
    #[arg(long)]
    model: PathBuf,
    /// Backend: cpu or ndarray (the quantized kernels are CPU kernels so far).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Precision of the reference model, and of the quantized models' vision tower, embedding
    /// and norms (a process keeps one float type per backend). On the CPU the decoder of both
    /// computes in f32 around its bf16 or quantized weights.
    #[arg(long, default_value = "bf16")]
    reference: Precision,
    /// Quantizations to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "q8,q4")]
    quant: Vec<Quant>,
    /// Keep the quantized models' lm_head in `--precision`.
    #[arg(long)]
    float_lm_head: bool,
    /// Greedy steps per prompt.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    /// Page image of the first prompt (the markdown task, Small mode) [default: the fixture
    /// page of this workspace; none when it is not there].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Write the results as JSON too.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Prompt {
    name: String,
    text: String,
    image: Option<dsocr::RgbImage>,
}

/// What one model produced for one prompt: the tokens it chose and its logits per step.
struct Run {
    tokens: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[derive(Serialize)]
struct Row {
    quant: String,
    prompt: String,
    steps: usize,
    agreement: f64,
    first_disagreement: Option<usize>,
    max_logit_error: f64,
    mean_logit_error: f64,
    reference_logit_std: f64,
    /// Median of the reference's top-1 − top-2 logit margin over all steps, and over the steps
    /// where the quantized model chose another token.
    median_margin: f64,
    median_margin_at_disagreements: Option<f64>,
}

pub fn run(args: QuantArgs) -> Result<ExitCode> {
    let backend: Backend = args.device.parse()?;
    anyhow::ensure!(args.steps >= 1, "--steps must be at least 1");
    let image_path = args.image.clone().or_else(super::bench::default_image);
    let mut prompts = Vec::new();
    if let Some(path) = &image_path {
        let image = load_image(path).with_context(|| format!("reading {}", path.display()))?;
        let text = PromptChoice::Task(Task::Markdown).text();
        prompts.push(Prompt { name: "page (Small, markdown)".into(), text, image: Some(image) });
    }
    for (i, text) in TEXT_PROMPTS.iter().enumerate() {
        prompts.push(Prompt { name: format!("text {}", i + 1), text: (*text).to_string(), image: None });
    }

    let load = |precision: Precision, quant: Option<Quant>| -> Result<DeepseekOcr> {
        let mut options = LoadOptions::new(backend, precision);
        options.quant = quant;
        options.quantize_lm_head = !args.float_lm_head;
        let start = Instant::now();
        let model = DeepseekOcr::load(&args.model, &options)
            .with_context(|| format!("loading the model in {}", args.model.display()))?;
        eprintln!(
            "loaded {} ({precision}{}) in {:.1} s",
            args.model.display(),
            quant.map(|q| format!(", {q}")).unwrap_or_default(),
            start.elapsed().as_secs_f64()
        );
        Ok(model)
    };

    let reference = load(args.reference, None)?;
    let mut references = Vec::new();
    for prompt in &prompts {
        let start = Instant::now();
        references.push(decode(&reference, prompt, args.steps, None)?);
        eprintln!("reference {}: {} steps in {:.1} s", prompt.name, args.steps, start.elapsed().as_secs_f64());
    }
    drop(reference);

    let mut rows = Vec::new();
    for &quant in &args.quant {
        let model = load(args.reference, Some(quant))?;
        for (prompt, reference) in prompts.iter().zip(&references) {
            let start = Instant::now();
            let run = decode(&model, prompt, args.steps, Some(&reference.tokens))?;
            eprintln!("{quant} {}: {} steps in {:.1} s", prompt.name, args.steps, start.elapsed().as_secs_f64());
            rows.push(compare(quant, &prompt.name, reference, &run));
        }
    }

    println!(
        "dsocr bench quant: {} on {backend}, precision {}, reference without quantization{}, {} \
         teacher-forced greedy steps per prompt\n",
        args.model.display(),
        args.reference,
        if args.float_lm_head { ", lm_head not quantized" } else { "" },
        args.steps
    );
    println!(
        "| decoder | prompt | top-1 agreement | first disagreement | max \\|Δlogit\\| | mean \\|Δlogit\\| | reference \
         logit std | median top-2 margin: all steps / where they disagree |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} % ({} steps) | {} | {:.4} | {:.4} | {:.3} | {:.4} / {} |",
            r.quant,
            r.prompt,
            r.agreement * 100.0,
            r.steps,
            r.first_disagreement.map_or("none".to_string(), |s| format!("step {s}")),
            r.max_logit_error,
            r.mean_logit_error,
            r.reference_logit_std,
            r.median_margin,
            r.median_margin_at_disagreements.map_or("–".to_string(), |m| format!("{m:.4}"))
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Greedy decoding of `steps` tokens after `prompt`; with `forced`, the model is fed those
/// tokens instead of its own choices (its choices and logits are still recorded).
fn decode(model: &DeepseekOcr, prompt: &Prompt, steps: usize, forced: Option<&[u32]>) -> Result<Run> {
    let vision: Option<VisionOutput> = match &prompt.image {
        Some(image) => Some(model.encode_image(model.prepare(image, Mode::Small, 6)?)?),
        None => None,
    };
    let (ids, embeds) = model.prompt_embeddings(&prompt.text, vision.as_ref())?;
    let decoder = &model.decoder;
    let vocab = decoder.config().vocab_size;
    anyhow::ensure!(
        ids.len() + steps <= decoder.config().max_position_embeddings,
        "prompt {} + {steps} steps exceed the model's context",
        ids.len()
    );
    let mut cache = decoder.new_cache();
    let hidden = decoder.forward(embeds, &mut cache);
    let host = |logits: Tensor<3>| -> Vec<f32> {
        logits.reshape([vocab]).cast(DType::F32).into_data().iter::<f32>().collect()
    };
    let mut row = host(decoder.logits(hidden.narrow(1, ids.len() - 1, 1)));
    let mut run = Run { tokens: Vec::with_capacity(steps), logits: Vec::with_capacity(steps) };
    for step in 0..steps {
        let token = argmax(&row);
        run.tokens.push(token);
        let next = forced.and_then(|f| f.get(step).copied()).unwrap_or(token);
        let next_row = if step + 1 < steps {
            host(decoder.logits(decoder.forward(decoder.embed(&[next]), &mut cache)))
        } else {
            Vec::new()
        };
        run.logits.push(std::mem::replace(&mut row, next_row));
    }
    Ok(run)
}

/// The index of the largest value, the lowest on ties (the decoder's greedy rule).
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn compare(quant: Quant, prompt: &str, reference: &Run, run: &Run) -> Row {
    let steps = reference.tokens.len().min(run.tokens.len());
    let agree = (0..steps).filter(|&s| reference.tokens[s] == run.tokens[s]).count();
    let first_disagreement = (0..steps).find(|&s| reference.tokens[s] != run.tokens[s]);
    let (mut max, mut sum, mut n) = (0f64, 0f64, 0usize);
    let (mut ref_sum, mut ref_sq) = (0f64, 0f64);
    for (a, b) in reference.logits.iter().zip(&run.logits).take(steps) {
        for (&x, &y) in a.iter().zip(b) {
            let d = (x as f64 - y as f64).abs();
            max = max.max(d);
            sum += d;
            ref_sum += x as f64;
            ref_sq += (x as f64) * (x as f64);
            n += 1;
        }
    }
    let margins: Vec<f64> = reference.logits.iter().take(steps).map(|row| top2_margin(row)).collect();
    let at_disagreements: Vec<f64> =
        (0..steps).filter(|&s| reference.tokens[s] != run.tokens[s]).map(|s| margins[s]).collect();
    let n_f = n.max(1) as f64;
    let mean_ref = ref_sum / n_f;
    Row {
        quant: quant.to_string(),
        prompt: prompt.to_string(),
        steps,
        agreement: agree as f64 / steps.max(1) as f64,
        first_disagreement,
        max_logit_error: max,
        mean_logit_error: sum / n_f,
        reference_logit_std: (ref_sq / n_f - mean_ref * mean_ref).max(0.0).sqrt(),
        median_margin: median(margins).unwrap_or(f64::NAN),
        median_margin_at_disagreements: median(at_disagreements),
    }
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_lowest_id_on_ties() {
        assert_eq!(argmax(&[0.5, 2.0, 2.0, 1.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
    }

    #[test]
    fn comparison_counts_agreement_and_errors() {
        let reference = Run { tokens: vec![1, 2, 3, 4], logits: vec![vec![0.0, 1.0]; 4] };
        let run = Run { tokens: vec![1, 2, 0, 4], logits: vec![vec![0.5, 1.0]; 4] };
        let row = compare(Quant::Q8, "p", &reference, &run);
        assert_eq!(row.agreement, 0.75);
        assert_eq!(row.first_disagreement, Some(2));
        assert!((row.max_logit_error - 0.5).abs() < 1e-12);
        assert!((row.mean_logit_error - 0.25).abs() < 1e-12);
        assert!((row.reference_logit_std - 0.5).abs() < 1e-12);
        assert_eq!(row.median_margin, 1.0);
        assert_eq!(row.median_margin_at_disagreements, Some(1.0));
        assert_eq!(top2_margin(&[0.5, 2.0, 1.25]), 0.75);
    }
}
