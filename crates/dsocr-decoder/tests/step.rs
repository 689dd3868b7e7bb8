//! Decode steps with device-resident inputs (`Decoder::forward_step`, what a captured graph
//! replays): the same logits as one full forward over the whole sequence, across K/V growth,
//! and a graph on WGPU (lavapipe in CI) replays exactly what the eager steps compute.

mod common;

use std::ops::ControlFlow;

use common::*;
use dsocr_decoder::{generate, Decoder, GenerationConfig, StepMode, TraceConfig};

/// Greedy generation without EOS, every decode step's logits traced.
fn traced(decoder: &Decoder, ids: &[u32], steps: usize, step: StepMode, kv_chunk: usize) -> dsocr_decoder::Generation {
    let cfg = GenerationConfig {
        max_new_tokens: steps + 1,
        eos_token_id: u32::MAX,
        trace: Some(TraceConfig { prefill_logits_tail: 1, decode_logits_steps: steps }),
        step,
        kv_chunk: Some(kv_chunk),
        ..GenerationConfig::default()
    };
    generate(decoder, decoder.embed(ids), ids, &cfg, |_| ControlFlow::Continue(())).expect("generate")
}

#[test]
fn device_position_steps_match_the_full_forward() {
    let decoder = load_decoder();
    let golden = Golden::open();
    let prompt = golden.ids("text_only.input_ids");
    let steps = 14;
    // Chunk 4: the buffers grow at several steps (5 + 14 positions).
    let out = traced(&decoder, &prompt, steps, StepMode::Auto, 4);
    assert!(!out.steps.graph, "the CPU backend has no graphs");
    assert_eq!(out.ids.len(), steps + 1);
    let decode = host_f32(out.trace.expect("trace").decode_logits.expect("decode logits"));

    // Step j fed generated token j at position prompt + j: its logits are row prompt + j of a
    // full forward over the prompt and the tokens fed.
    let mut all = prompt.clone();
    all.extend(&out.ids[..steps]);
    let mut cache = decoder.new_cache();
    let full = host_f32(decoder.logits(decoder.forward(decoder.embed(&all), &mut cache)));
    let vocab = decoder.config().vocab_size;
    let rows = &full[prompt.len() * vocab..(prompt.len() + steps) * vocab];
    let diff = max_abs_diff(&decode, rows);
    println!("device-position steps vs full forward: max |Δlogit| = {diff:.3e}");
    assert!(diff < 1e-4, "decode steps differ from the full forward by {diff}");
    // And each token is the argmax of the logits before it (the device argmax).
    for (j, id) in out.ids[1..].iter().enumerate() {
        let row = &decode[j * vocab..(j + 1) * vocab];
        let best = row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
        assert_eq!(*id as usize, best, "step {j}");
    }
}

/// The recorded step, replayed across several recordings (chunk 8), gives exactly the eager
/// steps' tokens and logits; and those match the CPU's.
#[cfg(feature = "wgpu")]
#[test]
fn graph_replays_match_eager_steps_on_wgpu() {
    let Some(device) = dsocr_weights::testing::wgpu_f32() else { return };
    let decoder = load_decoder_on(&device);
    let golden = Golden::open();
    let prompt = golden.ids("text_only.input_ids");
    let steps = 30;
    let graph = traced(&decoder, &prompt, steps, StepMode::Auto, 8);
    let eager = traced(&decoder, &prompt, steps, StepMode::Eager, 8);
    println!("graph steps on WGPU: {:?}", graph.steps);
    assert!(graph.steps.graph && !eager.steps.graph);
    // 5 prompt positions in 8, then 16, 24, 32, 40: one recording per capacity.
    assert_eq!(graph.steps.captures, (prompt.len() + steps).div_ceil(8) - prompt.len().div_ceil(8) + 1);
    assert_eq!(graph.ids, eager.ids);
    let logits = |g: dsocr_decoder::Generation| host_f32(g.trace.expect("trace").decode_logits.expect("decode"));
    let (graph_logits, eager_logits) = (logits(graph.clone()), logits(eager));
    assert_eq!(graph_logits.len(), steps * decoder.config().vocab_size);
    let diff = max_abs_diff(&graph_logits, &eager_logits);
    assert_eq!(diff, 0.0, "graph replays differ from eager steps by {diff}");

    let cpu = traced(&load_decoder(), &prompt, steps, StepMode::Eager, 8);
    assert_eq!(graph.ids, cpu.ids);
    let diff = max_abs_diff(&graph_logits, &logits(cpu));
    assert!(diff < 1e-4, "WGPU graph vs CPU: {diff}");
}

/// A quantized decoder on WGPU (its weights as device matrices: the dequantizing kernels with
/// `DSOCR_KERNELS=force`, the plain-Burn references without) gives the tokens of the same
/// quantized decoder on the CPU (host matrices and the CPU kernels), and logits within f32
/// summation-order noise; graph replays included.
#[cfg(feature = "wgpu")]
#[test]
fn quantized_decoder_on_wgpu_matches_the_cpu() {
    let Some(wgpu) = dsocr_weights::testing::wgpu_f32() else { return };
    let golden = Golden::open();
    let prompt = golden.ids("text_only.input_ids");
    let steps = 12;
    for quant in [dsocr_nn::Quant::Q8, dsocr_nn::Quant::Q4] {
        let format = dsocr_nn::WeightFormat::Quantized(quant);
        let gpu = traced(&load_decoder_as(&wgpu, format), &prompt, steps, StepMode::Auto, 8);
        let cpu = traced(&load_decoder_as(&device(), format), &prompt, steps, StepMode::Eager, 8);
        let float = traced(&load_decoder(), &prompt, steps, StepMode::Eager, 8);
        assert!(gpu.steps.graph, "{quant}: the WGPU steps were not replayed as a graph");
        assert_eq!(gpu.ids, cpu.ids, "{quant}");
        let logits = |g: dsocr_decoder::Generation| host_f32(g.trace.expect("trace").decode_logits.expect("decode"));
        let (gpu, cpu, float) = (logits(gpu), logits(cpu), logits(float));
        let diff = max_abs_diff(&gpu, &cpu);
        println!(
            "{quant} decoder, WGPU vs CPU: max |Δlogit| = {diff:.3e}; vs the float decoder {:.3e}",
            max_abs_diff(&cpu, &float)
        );
        assert!(diff < 1e-3, "{quant}: WGPU vs CPU {diff}");
        // The quantization is really applied on both (not silently the float weights).
        assert!(max_abs_diff(&cpu, &float) > 1e-3, "{quant}: the CPU decoder computes the float model's logits");
    }
}
