//! KV-cache behaviour on the fixture model: incremental decoding across chunk boundaries gives
//! the same logits as one full forward over the whole sequence.

mod common;

use std::ops::ControlFlow;

use burn::prelude::*;
use common::*;
use dsocr_decoder::{generate, FinishReason, GenerationConfig};

#[test]
fn growth_across_chunk_boundaries_matches_full_forward() {
    let decoder = load_decoder();
    let golden = Golden::open();
    // A prompt plus generated continuation: 5 + 12 = 17 tokens.
    let mut ids = golden.ids("text_only.input_ids");
    ids.extend(golden.ids("text_only.generated_ids"));
    let n = ids.len();
    let vocab = decoder.config().vocab_size;

    let mut full_cache = decoder.new_cache();
    let full = host_f32(decoder.logits(decoder.forward(decoder.embed(&ids), &mut full_cache)));
    assert_eq!(full.len(), n * vocab);

    // Chunk 4: prefill 3, then 1-token steps and one 5-token step, crossing 4, 8, 12 and 16.
    let mut cache = decoder.new_cache_with_chunk(4);
    let mut pieces = Vec::new();
    pieces.push(0..3);
    pieces.extend((3..7).map(|i| i..i + 1));
    pieces.push(7..12);
    pieces.extend((12..n).map(|i| i..i + 1));
    let mut max = 0.0f32;
    for range in pieces {
        let logits = host_f32(decoder.logits(decoder.forward(decoder.embed(&ids[range.clone()]), &mut cache)));
        assert_eq!(cache.len(), range.end);
        assert_eq!(cache.capacity() % 4, 0);
        assert!(cache.capacity() >= cache.len() && cache.capacity() < cache.len() + 4);
        max = max.max(max_abs_diff(&logits, &full[range.start * vocab..range.end * vocab]));
    }
    println!("incremental vs full forward: max |Δlogit| = {max:.3e}");
    assert!(max < 1e-4, "incremental decoding differs from the full forward by {max}");
}

#[test]
fn length_cap_and_eos_and_cancel() {
    let decoder = load_decoder();
    let golden = Golden::open();
    let ids = golden.ids("text_only.input_ids");
    let expected = golden.ids("text_only.generated_ids");

    // Cancel after 3 tokens.
    let mut seen = 0;
    let cfg = GenerationConfig { max_new_tokens: 12, ..GenerationConfig::default() };
    let out = generate(&decoder, decoder.embed(&ids), &ids, &cfg, |_| {
        seen += 1;
        if seen == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(out.ids, expected[..3]);
    assert_eq!(out.finish, FinishReason::Cancelled);

    // Treat the 4th golden token as EOS: generation stops right after it.
    let cfg = GenerationConfig { max_new_tokens: 12, eos_token_id: expected[3], ..GenerationConfig::default() };
    let out = generate(&decoder, decoder.embed(&ids), &ids, &cfg, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.ids, expected[..4]);
    assert_eq!(out.finish, FinishReason::Stop);

    // max_position_embeddings caps prompt + generated: a config with a 9-position context
    // leaves 4 new tokens for the 5-token prompt.
    let mut cfg_small = decoder.config().clone();
    cfg_small.max_position_embeddings = 9;
    let dir = fixture_dir();
    let files = std::sync::Arc::new(dsocr_weights::SafetensorsFiles::open(dir.join("model.safetensors")).unwrap());
    let vb = dsocr_weights::VarBuilder::new(files, &device(), burn::tensor::DType::F32);
    let small = dsocr_decoder::Decoder::load(&vb, &cfg_small).unwrap();
    let out = generate(&small, small.embed(&ids), &ids, &cfg, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.ids, expected[..4]);
    // An EOS outside the vocabulary never stops generation.
    let cfg = GenerationConfig { max_new_tokens: 100, eos_token_id: u32::MAX, ..GenerationConfig::default() };
    let out = generate(&small, small.embed(&ids), &ids, &cfg, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(out.ids, expected[..4]);
    assert_eq!(out.finish, FinishReason::Length);

    // Shape errors are reported, not panics.
    assert!(generate(&decoder, decoder.embed(&ids), &ids[..4], &cfg, |_| ControlFlow::Continue(())).is_err());
    let rows = Tensor::<2>::zeros([3, decoder.config().hidden_size], &device());
    assert!(decoder.embed_with_image(&ids, 443, rows).is_err());
}
