//! Decoder parity against the upstream PyTorch outputs of the reference-tiny fixture: for every
//! case of cases.json, golden `input_ids` + golden `vision_embeds` in, prefill + greedy
//! generation with the case's `max_new_tokens` and repeat guard, then
//! - `generated_ids` exactly equal,
//! - `prefill_hidden_last`, `prefill_logits_tail`, `decode_logits` (when present) within 1e-3.

mod common;

use std::ops::ControlFlow;

use burn::prelude::*;
use common::*;
use dsocr_decoder::{generate, ExpertDispatch, FinishReason, GenerationConfig, RepeatGuard, TraceConfig};

const TOL: f32 = 1e-3;

fn guard_of(ngram: &serde_json::Value, tokens: &std::collections::HashMap<String, u32>) -> Option<RepeatGuard> {
    if ngram.is_null() {
        return None;
    }
    let n = ngram["n"].as_u64().expect("ngram.n") as usize;
    match ngram["kind"].as_str().expect("ngram.kind") {
        "whole" => Some(RepeatGuard::Whole { n }),
        "window" => {
            let window = ngram["window"].as_u64().expect("ngram.window") as usize;
            let whitelist = ngram["whitelist"]
                .as_array()
                .expect("ngram.whitelist")
                .iter()
                .map(|s| {
                    let s = s.as_str().expect("whitelist entries are token strings");
                    *tokens.get(s).unwrap_or_else(|| panic!("whitelist token {s} not in added_tokens"))
                })
                .collect();
            Some(RepeatGuard::Window { n, window, whitelist })
        }
        other => panic!("unknown ngram kind {other}"),
    }
}

/// CPU default: experts grouped after one host read of the routing (prefill and decode).
#[test]
fn every_case_matches_golden_host_grouped() {
    run_all_cases(ExpertDispatch::HostGrouped);
}

/// GPU default: decode steps gather the chosen experts' weights on the device (`select` +
/// batched matmul); prefill still groups on the host.
#[test]
fn every_case_matches_golden_on_device_gather() {
    run_all_cases(ExpertDispatch::OnDevice);
}

fn run_all_cases(dispatch: ExpertDispatch) {
    let mut decoder = load_decoder();
    decoder.set_expert_dispatch(dispatch);
    let golden = Golden::open();
    let cases = cases();
    let tokens = added_tokens();
    let image_token = tokens["<image>"];
    assert_eq!(cases["image_token_id"].as_u64(), Some(image_token as u64), "cases.json image_token_id vs tokenizer");
    let eos = tokens["<｜end▁of▁sentence｜>"];
    assert_eq!(decoder.config().eos_token_id, eos);
    let (vocab, hidden) = (decoder.config().vocab_size, decoder.config().hidden_size);

    let mut failures = Vec::new();
    let list = cases["cases"].as_array().expect("cases");
    assert!(list.len() >= 9, "expected every fixture case, got {}", list.len());
    println!("expert dispatch {dispatch:?}");
    println!(
        "{:<20} {:>6} {:>4} {:>10} {:>10} {:>10} {:>5}  finish",
        "case", "L", "gen", "hidden", "tail", "decode", "ids"
    );
    for case in list {
        let name = case["name"].as_str().expect("name");
        let ids = golden.ids(&format!("{name}.input_ids"));
        assert_eq!(ids.len() as u64, case["prompt_len"].as_u64().expect("prompt_len"), "{name} prompt_len");
        let embeds = if golden.contains(&format!("{name}.vision_embeds")) {
            let (shape, values) = golden.f32(&format!("{name}.vision_embeds"));
            assert_eq!(shape[0] as u64, case["image_tokens"].as_u64().expect("image_tokens"), "{name}");
            let rows = Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), &device());
            decoder.embed_with_image(&ids, image_token, rows).expect("embed_with_image")
        } else {
            assert!(!ids.contains(&image_token), "{name}: image tokens without vision_embeds");
            decoder.embed(&ids)
        };

        let decode_key = format!("{name}.decode_logits");
        let golden_decode = golden.contains(&decode_key).then(|| golden.f32(&decode_key));
        let cfg = GenerationConfig {
            max_new_tokens: case["max_new_tokens"].as_u64().expect("max_new_tokens") as usize,
            eos_token_id: eos,
            repeat_guard: guard_of(&case["ngram"], &tokens),
            trace: Some(TraceConfig {
                prefill_logits_tail: 8,
                decode_logits_steps: golden_decode.as_ref().map_or(0, |(s, _)| s[0]),
            }),
            ..GenerationConfig::default()
        };
        let mut streamed = Vec::new();
        let out = generate(&decoder, embeds, &ids, &cfg, |id| {
            streamed.push(id);
            ControlFlow::Continue(())
        })
        .expect("generate");
        let trace = out.trace.clone().expect("trace requested");

        let expected_ids = golden.ids(&format!("{name}.generated_ids"));
        let ids_ok = out.ids == expected_ids && streamed == out.ids;

        let (hshape, hgold) = golden.f32(&format!("{name}.prefill_hidden_last"));
        assert_eq!(hshape, [decoder.config().num_hidden_layers + 1, hidden]);
        assert_eq!(trace.prefill_hidden_last.dims().to_vec(), hshape, "{name}");
        let dh = max_abs_diff(&host_f32(trace.prefill_hidden_last), &hgold);

        let (tshape, tgold) = golden.f32(&format!("{name}.prefill_logits_tail"));
        assert_eq!(trace.prefill_logits_tail.dims().to_vec(), tshape, "{name} tail rows");
        assert_eq!(tshape[1], vocab);
        let dt = max_abs_diff(&host_f32(trace.prefill_logits_tail), &tgold);

        let dd = match (&golden_decode, trace.decode_logits) {
            (Some((shape, values)), Some(ours)) => {
                assert_eq!(ours.dims().to_vec(), *shape, "{name}: decode steps traced");
                Some(max_abs_diff(&host_f32(ours), values))
            }
            (None, None) => None,
            (g, o) => panic!("{name}: golden decode_logits {:?} vs traced {:?}", g.is_some(), o.is_some()),
        };

        let ends_with_eos = expected_ids.last() == Some(&eos);
        let finish_ok = match out.finish {
            FinishReason::Stop => ends_with_eos,
            FinishReason::Length => !ends_with_eos,
            FinishReason::Repetition => !ends_with_eos && cfg.repeat_guard.is_some(),
            FinishReason::Cancelled => false,
        };

        println!(
            "{name:<20} {:>6} {:>4} {dh:>10.2e} {dt:>10.2e} {:>10} {:>5}  {:?}",
            ids.len(),
            out.ids.len(),
            dd.map_or("-".to_string(), |d| format!("{d:.2e}")),
            if ids_ok { "ok" } else { "DIFF" },
            out.finish
        );
        if !ids_ok {
            failures.push(format!("{name}: generated {:?}, golden {:?}", out.ids, expected_ids));
        }
        if dh > TOL || dt > TOL || dd.is_some_and(|d| d > TOL) {
            failures.push(format!("{name}: hidden {dh:.3e}, tail {dt:.3e}, decode {dd:?} (tolerance {TOL})"));
        }
        if !finish_ok {
            failures.push(format!("{name}: finish {:?} inconsistent with the golden ids", out.finish));
        }
    }
    assert!(failures.is_empty(), "parity failures ({dispatch:?}):\n{}", failures.join("\n"));
}

/// The guarded cases really exercise their guard: without it the output differs (otherwise
/// their id check could not fail on a broken guard).
#[test]
fn guarded_cases_depend_on_the_guard() {
    let decoder = load_decoder();
    let golden = Golden::open();
    let tokens = added_tokens();
    let image_token = tokens["<image>"];
    for name in ["gundam_page_ngram", "gundam_page_window"] {
        let ids = golden.ids(&format!("{name}.input_ids"));
        let (shape, values) = golden.f32(&format!("{name}.vision_embeds"));
        let rows = Tensor::<2>::from_data(TensorData::new(values, [shape[0], shape[1]]), &device());
        let embeds = decoder.embed_with_image(&ids, image_token, rows).expect("embed");
        let cfg = GenerationConfig { max_new_tokens: 24, ..GenerationConfig::default() };
        let out = generate(&decoder, embeds, &ids, &cfg, |_| ControlFlow::Continue(())).expect("generate");
        assert_ne!(out.ids, golden.ids(&format!("{name}.generated_ids")), "{name}: guard made no difference");
        assert_eq!(out.finish, FinishReason::Length);
    }
}
