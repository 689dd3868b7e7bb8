//! `dsocr bench --batch 1,8,32`: pages/s with continuous batching. For each batch size B, P
//! Gundam pages of the bench image stream through `PageBatch` with B slots; their forced output
//! lengths (EOS never produced, no repeat guard) come from a fixed seeded distribution, uniform
//! between half and one and a half times `--mean-tokens`, so pages finish at different times
//! and slots are reused. Reported per B: pages/s, generated tokens/s, where the wall time goes
//! (vision, prefill, batched decode steps), the KV cache and the device memory pool.

use std::time::Instant;

use anyhow::{Context, Result};
use dsocr::input::{load_image, RgbImage};
use dsocr::model::{DeepseekOcr, GenerationConfig, OcrRequest, PageBatch, PageEvent};
use dsocr::{Mode, OcrOptions};
use serde::Serialize;

/// One batch size's result.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRow {
    pub batch: usize,
    pub pages: usize,
    pub tokens: usize,
    pub wall_s: f64,
    pub pages_per_s: f64,
    pub tokens_per_s: f64,
    /// Wall time in vision + prompt embedding, in the decoder prefill (+ first token), and in
    /// batched decode steps.
    pub vision_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub decode_steps: usize,
    pub kv_cache_bytes: usize,
    pub device_reserved_peak_bytes: Option<u64>,
    pub failed: usize,
    /// Whether the batched steps were replayed as graphs, the recordings made and their wall
    /// time (included in `decode_s`).
    pub graph: bool,
    pub captures: usize,
    pub capture_s: f64,
    /// `--batch-check K`: for each of the first K pages, the first position where its batched
    /// ids differ from the ids it gets alone (`None`: identical).
    pub check: Vec<Option<usize>>,
}

/// The forced lengths: `pages` values uniform in `[mean/2, 3·mean/2)` from a fixed seed.
pub fn forced_lengths(pages: usize, mean: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..pages)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let u = (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            ((mean as f64) * (0.5 + u)).round().max(1.0) as usize
        })
        .collect()
}

/// A page decoded alone with every step's logits kept: its ids and, per generated id, the
/// top-2 margin of the logits it was chosen from.
struct Alone {
    ids: Vec<u32>,
    margins: Vec<f32>,
    median_margin: f32,
}

fn alone_traced(model: &DeepseekOcr, request: &OcrRequest) -> Result<Alone> {
    use burn::prelude::*;
    let vision = match &request.image {
        Some(image) => Some(model.encode_image(model.prepare(image, request.mode, request.max_crops)?)?),
        None => None,
    };
    let (ids, embeds) = model.prompt_embeddings(&request.prompt, vision.as_ref())?;
    let steps = request.generation.max_new_tokens;
    let cfg = GenerationConfig {
        trace: Some(dsocr_decoder::TraceConfig { prefill_logits_tail: 1, decode_logits_steps: steps }),
        ..request.generation.clone()
    };
    let out = dsocr_decoder::generate(&model.decoder, embeds, &ids, &cfg, |_| std::ops::ControlFlow::Continue(()))?;
    let trace = out.trace.context("no trace")?;
    // Row j chose id j: the prefill's last logits, then each decode step's.
    let mut rows = vec![trace.prefill_logits_tail];
    rows.extend(trace.decode_logits);
    let top2 = Tensor::cat(rows, 0).topk(2, 1);
    let top: Vec<f32> = top2.into_data().convert::<f32>().iter::<f32>().collect();
    let margins: Vec<f32> = top.chunks_exact(2).map(|t| t[0] - t[1]).collect();
    let mut sorted = margins.clone();
    sorted.sort_by(f32::total_cmp);
    let median_margin = sorted.get(sorted.len() / 2).copied().unwrap_or(f32::NAN);
    Ok(Alone { ids: out.ids, margins, median_margin })
}

/// What `dsocr bench --batch` runs.
#[derive(Debug, Clone)]
pub struct BatchBench {
    pub batches: Vec<usize>,
    /// Pages per batch size.
    pub pages: usize,
    pub mean_tokens: usize,
    /// Pages admitted together.
    pub admit_group: usize,
    /// Pages run alone afterwards to compare ids.
    pub check: usize,
    pub max_crops: usize,
    pub seed: u64,
}

pub fn run(model: &DeepseekOcr, image_path: &std::path::Path, bench: &BatchBench) -> Result<Vec<BatchRow>> {
    let BatchBench { ref batches, pages, mean_tokens, admit_group, check, max_crops, seed } = *bench;
    let image: RgbImage = load_image(image_path).with_context(|| format!("loading {}", image_path.display()))?;
    let lengths = forced_lengths(pages, mean_tokens, seed);
    let requests: Vec<OcrRequest> = lengths
        .iter()
        .map(|&n| {
            let mut r = OcrRequest::new(OcrOptions::OFFICIAL_TASK.prompt(), Some(image.clone()), Mode::Gundam);
            r.max_crops = max_crops;
            r.generation =
                GenerationConfig { max_new_tokens: n, eos_token_id: u32::MAX, ..GenerationConfig::default() };
            r
        })
        .collect();
    // One warm-up page: kernels compiled, caches filled.
    let mut warm = requests[0].clone();
    warm.generation.max_new_tokens = 4;
    let _ = model.run_batched(&[warm.clone(), warm], 2, |_| std::ops::ControlFlow::Continue(()));

    let mut rows = Vec::new();
    for &b in batches.iter() {
        eprintln!("batch {b}: {pages} pages, forced lengths mean {mean_tokens}, admitted {admit_group} at a time");
        let mut batch = PageBatch::new(model, b);
        let mut events = Vec::new();
        let (mut vision_s, mut admit_s, mut decode_s, mut steps) = (0.0, 0.0, 0.0, 0usize);
        let (mut tokens, mut done, mut failed, mut next) = (0usize, 0usize, 0usize, 0usize);
        let mut kv_bytes = 0usize;
        let mut reserved: Option<u64> = None;
        let mut ids: Vec<Option<Vec<u32>>> = vec![None; pages];
        let start = Instant::now();
        while done < pages {
            while next < pages && batch.has_room() {
                let t = Instant::now();
                let room = batch.slots() - batch.live();
                let group: Vec<(usize, &OcrRequest)> =
                    (next..pages.min(next + admit_group.max(1).min(room))).map(|i| (i, &requests[i])).collect();
                next += group.len();
                for result in batch.admit_many(&group, &mut events) {
                    if result.is_err() {
                        failed += 1;
                        done += 1;
                    }
                }
                model.device.sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
                admit_s += t.elapsed().as_secs_f64();
            }
            if batch.live() > 0 {
                let t = Instant::now();
                batch.step(&mut events);
                decode_s += t.elapsed().as_secs_f64();
                steps += 1;
            }
            kv_bytes = kv_bytes.max(batch.cache_bytes());
            if steps % 64 == 0 {
                if let Some(usage) = model.device.memory_pool_usage() {
                    reserved = Some(reserved.unwrap_or(0).max(usage.bytes_reserved));
                }
            }
            for event in events.drain(..) {
                if let PageEvent::Done { result, key } = event {
                    done += 1;
                    match result {
                        Ok(r) => {
                            tokens += r.generated_tokens();
                            vision_s += r.vision_time.as_secs_f64();
                            ids[key] = Some(r.generated_ids);
                        }
                        Err(_) => failed += 1,
                    }
                }
            }
        }
        let wall_s = start.elapsed().as_secs_f64();
        let report = batch.step_report();
        drop(batch);
        // Each checked page alone (the single-sequence path), against its batched ids.
        let mut agreement = Vec::new();
        for (page, batched) in ids.iter().enumerate().take(check) {
            let alone = alone_traced(model, &requests[page])?;
            let batched = batched.as_deref().unwrap_or(&[]);
            let same = alone.ids.iter().zip(batched).position(|(a, b)| a != b);
            let first = same.or((alone.ids.len() != batched.len()).then(|| alone.ids.len().min(batched.len())));
            let verdict = match first {
                None => "identical ids".to_string(),
                Some(p) => format!(
                    "ids differ from position {p}; alone, the top-2 logit margin there is {} (median over its steps {:.4})",
                    alone.margins.get(p).map_or("n/a".to_string(), |m| format!("{m:.4}")),
                    alone.median_margin
                ),
            };
            eprintln!("  page {page}: {verdict}");
            agreement.push(first);
        }
        let row = BatchRow {
            batch: b,
            pages,
            tokens,
            wall_s,
            pages_per_s: (pages - failed) as f64 / wall_s,
            tokens_per_s: tokens as f64 / wall_s,
            vision_s,
            prefill_s: (admit_s - vision_s).max(0.0),
            decode_s,
            decode_steps: steps,
            kv_cache_bytes: kv_bytes,
            device_reserved_peak_bytes: reserved,
            failed,
            graph: report.graph,
            captures: report.captures,
            capture_s: report.capture_time.as_secs_f64(),
            check: agreement,
        };
        eprintln!("  {:.3} pages/s, {:.1} tokens/s", row.pages_per_s, row.tokens_per_s);
        rows.push(row);
    }
    Ok(rows)
}

pub fn markdown(rows: &[BatchRow]) -> String {
    let mut out = String::from(
        "| batch | pages | tokens | wall s | pages/s | tokens/s | vision s | prefill s | decode s (steps) | ms/step | graph recordings (s) | KV cache | device pool peak | failed |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0));
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.3} | {:.1} | {:.1} | {:.1} | {:.1} ({}) | {:.1} | {} | {} | {} | {} |\n",
            r.batch,
            r.pages,
            r.tokens,
            r.wall_s,
            r.pages_per_s,
            r.tokens_per_s,
            r.vision_s,
            r.prefill_s,
            r.decode_s,
            r.decode_steps,
            1000.0 * r.decode_s / r.decode_steps.max(1) as f64,
            if r.graph { format!("{} ({:.1})", r.captures, r.capture_s) } else { "eager".to_string() },
            mib(r.kv_cache_bytes as u64),
            r.device_reserved_peak_bytes.map_or("n/a".to_string(), mib),
            r.failed
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_lengths_are_fixed_and_spread_around_the_mean() {
        let a = forced_lengths(200, 1000, 7);
        assert_eq!(a, forced_lengths(200, 1000, 7));
        assert_ne!(a, forced_lengths(200, 1000, 8));
        assert!(a.iter().all(|&n| (500..=1500).contains(&n)), "{a:?}");
        let mean = a.iter().sum::<usize>() as f64 / a.len() as f64;
        assert!((mean - 1000.0).abs() < 60.0, "mean {mean}");
    }
}
