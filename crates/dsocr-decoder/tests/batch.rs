//! Batched decoding equals decoding alone: on the CPU in f32, sequences of different prompts,
//! lengths, token limits and repeat guards, decoded together in the slots of a [`Batcher`]
//! (slots reused as sequences finish), generate exactly the ids that [`generate`] gives each
//! of them on its own; on WGPU the same with the steps replayed as graphs.

mod common;

use std::collections::HashMap;
use std::ops::ControlFlow;

use common::*;
use dsocr_decoder::{generate, Batcher, Decoder, FinishReason, GenerationConfig, Prompt, RepeatGuard, StepMode};

struct Case {
    ids: Vec<u32>,
    cfg: GenerationConfig,
}

fn cases() -> Vec<Case> {
    let vocab = 512u32;
    let prompt =
        |seed: u32, len: usize| (0..len as u32).map(|i| (seed * 7919 + i * 104_729) % (vocab - 20) + 13).collect();
    let cfg = |max, guard: Option<RepeatGuard>| GenerationConfig {
        max_new_tokens: max,
        eos_token_id: u32::MAX,
        repeat_guard: guard,
        ..GenerationConfig::default()
    };
    vec![
        Case { ids: prompt(1, 5), cfg: cfg(23, None) },
        Case { ids: prompt(2, 17), cfg: cfg(7, Some(RepeatGuard::Window { n: 3, window: 20, whitelist: vec![] })) },
        Case { ids: prompt(3, 40), cfg: cfg(31, Some(RepeatGuard::Whole { n: 2 })) },
        Case { ids: prompt(4, 3), cfg: cfg(1, None) },
        Case { ids: prompt(5, 260), cfg: cfg(12, None) },
        Case { ids: prompt(6, 9), cfg: cfg(18, Some(RepeatGuard::Window { n: 2, window: 50, whitelist: vec![17] })) },
    ]
}

/// Runs every case through `batch`, admitting between steps as slots free; the ids of each
/// case, in case order.
fn run_batched(decoder: &Decoder, batch: &mut Batcher, cases: &[Case]) -> Vec<Vec<u32>> {
    let mut got: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut which: HashMap<u64, usize> = HashMap::new();
    let mut finished: HashMap<u64, FinishReason> = HashMap::new();
    let mut next = 0;
    while finished.len() < cases.len() {
        // Every free slot filled at once: prompts of equal length are prefilled together.
        while next < cases.len() && batch.has_free_slot() {
            let end = cases.len().min(next + batch.slots() - batch.live());
            let prompts =
                cases[next..end].iter().map(|c| Prompt { embeds: decoder.embed(&c.ids), ids: &c.ids, cfg: &c.cfg });
            for (k, s) in (next..end).zip(batch.admit_batch(decoder, prompts.collect())) {
                let s = s.unwrap();
                which.insert(s.sequence, k);
                got.entry(s.sequence).or_default().extend(s.token);
                if let Some(f) = s.finish {
                    finished.insert(s.sequence, f);
                }
            }
            next = end;
        }
        for s in batch.step(decoder) {
            got.entry(s.sequence).or_default().extend(s.token);
            if let Some(f) = s.finish {
                finished.insert(s.sequence, f);
            }
        }
    }
    assert_eq!(batch.live(), 0);
    let mut out = vec![Vec::new(); cases.len()];
    for (seq, ids) in got {
        out[which[&seq]] = ids;
    }
    out
}

fn alone(decoder: &Decoder, cases: &[Case], step: StepMode) -> Vec<Vec<u32>> {
    cases
        .iter()
        .map(|c| {
            let cfg = GenerationConfig { step, ..c.cfg.clone() };
            generate(decoder, decoder.embed(&c.ids), &c.ids, &cfg, |_| ControlFlow::Continue(())).unwrap().ids
        })
        .collect()
}

/// Each of the six cases followed by a twin of the same prompt length (other ids): admitted
/// together, the two are prefilled as one batch.
fn twelve_cases() -> Vec<Case> {
    cases()
        .into_iter()
        .flat_map(|c| {
            let twin = Case { ids: c.ids.iter().map(|&t| t + 1).collect(), cfg: c.cfg.clone() };
            [c, twin]
        })
        .collect()
}

#[test]
fn batched_ids_equal_the_ids_of_each_sequence_alone() {
    let decoder = load_decoder();
    let cases = twelve_cases();
    let alone = alone(&decoder, &cases, StepMode::Auto);
    // Three slots for twelve sequences (with a chunk of 8 the cache grows during the run):
    // slots are reused as sequences finish; new ones are admitted between steps.
    let mut batch = Batcher::new(&decoder, 3, 8);
    let got = run_batched(&decoder, &mut batch, &cases);
    for (k, ids) in got.iter().enumerate() {
        assert_eq!(ids, &alone[k], "sequence {k}: batched ids differ from its ids alone");
        assert_eq!(ids.len(), cases[k].cfg.max_new_tokens, "sequence {k}");
    }
    assert!(!batch.step_report().graph, "the CPU backend has no graphs");
    assert!(batch.cache_capacity() >= 260 + 12, "the cache grew in chunks: {}", batch.cache_capacity());
}

/// On WGPU (lavapipe in CI) the batched steps are recorded as graphs, one per row bucket and
/// capacity, and replayed while sequences enter and leave the slots (inserts and moves written
/// into the recorded buffers): every sequence gets the ids it gets alone, eager, on the same
/// device and on the CPU. Seven slots for twelve sequences take the tiny model's MoE two ways:
/// gathered per slot up to 5 rows (5 · top-3 ≤ 2 · 8 experts); beyond, the grouped kernel with
/// the kernels on (`DSOCR_KERNELS=force`, as CI runs it), the dense product without.
#[cfg(feature = "wgpu")]
#[test]
fn graph_batched_ids_equal_the_ids_alone_on_wgpu() {
    let Some(device) = dsocr_weights::testing::wgpu_f32() else { return };
    let decoder = load_decoder_on(&device);
    let cases = twelve_cases();
    let want = alone(&decoder, &cases, StepMode::Eager);
    assert_eq!(want, alone(&load_decoder(), &cases, StepMode::Eager), "WGPU and CPU differ alone");
    let mut batch = Batcher::new(&decoder, 7, 8);
    let got = run_batched(&decoder, &mut batch, &cases);
    let report = batch.step_report();
    println!("batched graph steps on WGPU: {report:?}");
    assert!(report.graph && report.captures >= 3, "{report:?}");
    for (k, ids) in got.iter().enumerate() {
        assert_eq!(ids, &want[k], "sequence {k}: graph-batched ids differ from its ids alone");
    }
    // And eager batched steps on the same device agree.
    let mut eager = Batcher::with_mode(&decoder, 7, 8, StepMode::Eager);
    assert_eq!(run_batched(&decoder, &mut eager, &cases), want);
    assert!(!eager.step_report().graph);
}

#[test]
fn eos_frees_the_slot_and_cancel_too() {
    let decoder = load_decoder();
    let ids: Vec<u32> = (20..30).collect();
    let free = GenerationConfig { max_new_tokens: 40, eos_token_id: u32::MAX, ..GenerationConfig::default() };
    let alone = generate(&decoder, decoder.embed(&ids), &ids, &free, |_| ControlFlow::Continue(())).unwrap().ids;
    // EOS at the id generated fourth: the sequence ends there with `Stop`.
    let eos = GenerationConfig { eos_token_id: alone[3], ..free.clone() };
    let stop_at = alone.iter().position(|&t| t == alone[3]).unwrap();
    let mut batch = Batcher::new(&decoder, 2, 16);
    let a = batch.admit(&decoder, decoder.embed(&ids), &ids, &eos).unwrap();
    let b = batch.admit(&decoder, decoder.embed(&ids), &ids, &free).unwrap();
    assert!(!batch.has_free_slot());
    assert!(batch.admit(&decoder, decoder.embed(&ids), &ids, &free).is_err(), "no third slot");
    let mut a_ids = vec![a.token.unwrap()];
    let mut a_finish = None;
    while a_finish.is_none() {
        for s in batch.step(&decoder) {
            if s.sequence == a.sequence {
                a_ids.push(s.token.unwrap());
                a_finish = s.finish;
            }
        }
    }
    assert_eq!((a_ids.as_slice(), a_finish), (&alone[..=stop_at], Some(FinishReason::Stop)));
    assert_eq!(batch.live(), 1);
    assert!(batch.cancel(b.sequence));
    assert!(!batch.cancel(b.sequence));
    assert_eq!(batch.live(), 0);
    assert!(batch.step(&decoder).is_empty());
}
