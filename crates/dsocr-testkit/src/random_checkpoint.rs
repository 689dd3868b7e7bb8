//! A full-size DeepSeek-OCR model folder with random weights: the real tensor names
//! (`weight-names.txt`, 2,710 tensors), the real shapes (spec §2), the real `config.json` and the
//! real DeepSeek-OCR tokenizer. For speed and memory measurements on machines without the real
//! checkpoint (`dsocr bench`, `cargo xtask make-checkpoint`); its outputs mean nothing.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let written = dsocr_testkit::random_checkpoint::write("/tmp/fullsize".as_ref(), 1234)?;
//! println!("{} parameters in {}", written.parameters, written.weights.display());
//! # Ok(()) }
//! ```

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use half::bf16;

/// Parameter count of the real checkpoint (spec §2).
pub const REAL_PARAMS: usize = 3_336_106_240;

/// The tensor names of the real checkpoint, one per line (same list as the spec's
/// `weight-names.txt`).
pub const WEIGHT_NAMES: &str = include_str!("../weight-names.txt");

/// The real DeepSeek-OCR tokenizer (`tests/fixtures/tokenizer-real`, 4.3 MB), written next to the
/// random weights so the folder loads without any download and prompts have their real ids and
/// lengths.
const TOKENIZER_JSON: &[u8] = include_bytes!("../../../tests/fixtures/tokenizer-real/tokenizer.json");

/// Errors of writing a random checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum RandomCheckpointError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no shape rule for tensor `{0}`")]
    UnknownTensor(String),
    #[error("the shape rules give {found} parameters, the real checkpoint has {expected}")]
    ParameterCount { found: usize, expected: usize },
}

/// What [`write`] produced.
#[derive(Debug, Clone)]
pub struct WrittenCheckpoint {
    /// `DIR/model.safetensors`.
    pub weights: PathBuf,
    pub tensors: usize,
    pub parameters: usize,
    /// Size of `model.safetensors` in bytes.
    pub bytes: u64,
}

/// The real tensor names, in file order.
pub fn weight_names() -> impl Iterator<Item = &'static str> {
    WEIGHT_NAMES.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// The shape of a real DeepSeek-OCR tensor, from its name (spec §2.1–2.2).
pub fn real_shape(name: &str) -> Result<Vec<usize>, RandomCheckpointError> {
    let unknown = || RandomCheckpointError::UnknownTensor(name.to_string());
    let parts: Vec<&str> = name.split('.').collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or("");
    let last = *parts.last().unwrap_or(&"");
    let has = |s: &str| parts.contains(&s);
    let v = |s: &[usize]| Ok(s.to_vec());
    match name {
        "lm_head.weight" | "model.embed_tokens.weight" => return v(&[129280, 1280]),
        "model.image_newline" | "model.view_seperator" | "model.norm.weight" => return v(&[1280]),
        "model.projector.layers.weight" => return v(&[1280, 2048]),
        "model.projector.layers.bias" => return v(&[1280]),
        "model.sam_model.patch_embed.proj.weight" => return v(&[768, 3, 16, 16]),
        "model.sam_model.patch_embed.proj.bias" => return v(&[768]),
        "model.sam_model.pos_embed" => return v(&[1, 64, 64, 768]),
        "model.sam_model.neck.0.weight" => return v(&[256, 768, 1, 1]),
        "model.sam_model.neck.2.weight" => return v(&[256, 256, 3, 3]),
        "model.sam_model.net_2.weight" => return v(&[512, 256, 3, 3]),
        "model.sam_model.net_3.weight" => return v(&[1024, 512, 3, 3]),
        "model.vision_model.embeddings.class_embedding" => return v(&[1024]),
        "model.vision_model.embeddings.patch_embedding.weight" => return v(&[1024, 3, 14, 14]),
        "model.vision_model.embeddings.position_embedding.weight" => return v(&[257, 1024]),
        _ => {}
    }
    if name.starts_with("model.sam_model.neck.") {
        return v(&[256]);
    }
    if name.starts_with("model.sam_model.blocks.") {
        let block: usize = part(3).parse().map_err(|_| unknown())?;
        return match (part(4), part(5), last) {
            ("norm1" | "norm2", _, _) => v(&[768]),
            ("attn", "qkv", "weight") => v(&[2304, 768]),
            ("attn", "qkv", "bias") => v(&[2304]),
            ("attn", "proj", "weight") => v(&[768, 768]),
            ("attn", "proj", "bias") => v(&[768]),
            ("attn", "rel_pos_h" | "rel_pos_w", _) => v(&[if [2, 5, 8, 11].contains(&block) { 127 } else { 27 }, 64]),
            ("mlp", "lin1", "weight") => v(&[3072, 768]),
            ("mlp", "lin1", "bias") => v(&[3072]),
            ("mlp", "lin2", "weight") => v(&[768, 3072]),
            ("mlp", "lin2", "bias") => v(&[768]),
            _ => Err(unknown()),
        };
    }
    if name.starts_with("model.vision_model.") {
        if name.starts_with("model.vision_model.pre_layrnorm.") || has("layer_norm1") || has("layer_norm2") {
            return v(&[1024]);
        }
        return match (part(parts.len().saturating_sub(2)), last) {
            ("qkv_proj", "weight") => v(&[3072, 1024]),
            ("qkv_proj", "bias") => v(&[3072]),
            ("out_proj", "weight") => v(&[1024, 1024]),
            ("out_proj", "bias") | ("fc2", "bias") => v(&[1024]),
            ("fc1", "weight") => v(&[4096, 1024]),
            ("fc1", "bias") => v(&[4096]),
            ("fc2", "weight") => v(&[1024, 4096]),
            _ => Err(unknown()),
        };
    }
    if name.starts_with("model.layers.") {
        let layer: usize = part(2).parse().map_err(|_| unknown())?;
        if has("input_layernorm") || has("post_attention_layernorm") {
            return v(&[1280]);
        }
        if has("self_attn") {
            return v(&[1280, 1280]);
        }
        let width = if has("experts") {
            896
        } else if has("shared_experts") {
            1792
        } else if part(4) == "gate" {
            return v(&[64, 1280]);
        } else if layer == 0 {
            6848
        } else {
            return Err(unknown());
        };
        return match part(parts.len().saturating_sub(2)) {
            "gate_proj" | "up_proj" => v(&[width, 1280]),
            "down_proj" => v(&[1280, width]),
            _ => Err(unknown()),
        };
    }
    Err(unknown())
}

/// xorshift64*: fast, deterministic, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Norm weights 1, norm biases 0; `None`: uniform(±1/√fan_in) like PyTorch's init.
fn fixed_value(name: &str) -> Option<f32> {
    let is_norm = name.contains("norm")
        || name.contains("layrnorm")
        || name.starts_with("model.sam_model.neck.1")
        || name.starts_with("model.sam_model.neck.3");
    match (is_norm, name.ends_with(".bias")) {
        (true, false) => Some(1.0),
        (true, true) => Some(0.0),
        _ => None,
    }
}

/// Whether `dir` already holds safetensors weights (`model.safetensors`, a sharded index, or any
/// `*.safetensors` file).
pub fn has_weights(dir: &Path) -> bool {
    if dir.join("model.safetensors").is_file() || dir.join("model.safetensors.index.json").is_file() {
        return true;
    }
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "safetensors") && e.path().is_file())
        })
        .unwrap_or(false)
}

/// Writes `dir/model.safetensors` (bf16, 6.67 GB, deterministic for a `seed`), `dir/config.json`
/// ([`real_config`]) and `dir/tokenizer.json` (the fixture's). The weights go to a temporary
/// file renamed at the end, so an interrupted write never leaves a folder that looks complete.
pub fn write(dir: &Path, seed: u64) -> Result<WrittenCheckpoint, RandomCheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RandomCheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;

    let mut entries = Vec::new();
    let mut offset = 0usize;
    let mut total = 0usize;
    for name in weight_names() {
        let shape = real_shape(name)?;
        let n: usize = shape.iter().product();
        total += n;
        entries.push((name, shape, offset, offset + 2 * n));
        offset += 2 * n;
    }
    if total != REAL_PARAMS {
        return Err(RandomCheckpointError::ParameterCount { found: total, expected: REAL_PARAMS });
    }
    let mut header = serde_json::Map::new();
    for (name, shape, start, end) in &entries {
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": "BF16", "shape": shape, "data_offsets": [start, end] }),
        );
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }

    let path = dir.join("model.safetensors");
    let partial = dir.join("model.safetensors.partial");
    let file = File::create(&partial).map_err(io(&partial))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io(&partial))?;
    w.write_all(&header).map_err(io(&partial))?;
    let mut rng = Rng(seed.max(1));
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 22);
    for (name, shape, _, _) in &entries {
        let n: usize = shape.iter().product();
        let fan_in: usize = if shape.len() > 1 { shape[1..].iter().product() } else { shape[0] };
        let scale = 1.0 / (fan_in as f32).sqrt();
        let fixed = fixed_value(name);
        for _ in 0..n {
            let x = fixed.unwrap_or_else(|| rng.next_f32() * scale);
            buf.extend_from_slice(&bf16::from_f32(x).to_bits().to_le_bytes());
            if buf.len() >= 1 << 22 {
                w.write_all(&buf).map_err(io(&partial))?;
                buf.clear();
            }
        }
    }
    w.write_all(&buf).map_err(io(&partial))?;
    w.flush().map_err(io(&partial))?;
    drop(w);
    std::fs::rename(&partial, &path).map_err(io(&path))?;

    let config = dir.join("config.json");
    std::fs::write(&config, real_config().to_string()).map_err(io(&config))?;
    let tokenizer = dir.join("tokenizer.json");
    std::fs::write(&tokenizer, TOKENIZER_JSON).map_err(io(&tokenizer))?;
    Ok(WrittenCheckpoint {
        weights: path,
        tensors: entries.len(),
        parameters: total,
        bytes: (8 + header.len() + offset) as u64,
    })
}

/// The real model's `config.json` (spec §1), language keys at the top level and in `language_config`.
pub fn real_config() -> serde_json::Value {
    let language = serde_json::json!({
        "bos_token_id": 0, "eos_token_id": 1, "first_k_dense_replace": 1, "hidden_size": 1280,
        "intermediate_size": 6848, "kv_lora_rank": null, "lm_head": true, "max_position_embeddings": 8192,
        "moe_intermediate_size": 896, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2,
        "num_attention_heads": 10, "num_experts_per_tok": 6, "num_hidden_layers": 12, "num_key_value_heads": 10,
        "q_lora_rank": null, "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "rm_head": false, "topk_group": 1,
        "topk_method": "greedy", "torch_dtype": "bfloat16", "use_mla": false, "v_head_dim": 0, "vocab_size": 129280
    });
    let mut config = serde_json::json!({
        "_name_or_path": "deepseek-ai/DeepSeek-OCR",
        "architectures": ["DeepseekOCRForCausalLM"],
        "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head",
        "language_config": language.clone(),
        "model_type": "deepseek_vl_v2",
        "projector_config": { "input_dim": 2048, "model_type": "mlp_projector", "n_embed": 1280, "projector_type": "linear" },
        "tile_tag": "2D",
        "vision_config": {
            "image_size": 1024, "mlp_ratio": 3.7362, "model_name": "deeplip_b_l", "model_type": "vision",
            "width": {
                "clip-l-14-224": { "heads": 16, "image_size": 224, "layers": 24, "patch_size": 14, "width": 1024 },
                "sam_vit_b": { "downsample_channels": [512, 1024], "global_attn_indexes": [2, 5, 8, 11], "heads": 12, "layers": 12, "width": 768 }
            }
        }
    });
    if let (Some(top), Some(lang)) = (config.as_object_mut(), language.as_object()) {
        for (k, v) in lang {
            top.insert(k.clone(), v.clone());
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsocr_model::ModelConfig;

    #[test]
    fn every_real_name_has_a_shape_and_the_total_matches_the_spec() {
        assert_eq!(weight_names().count(), 2710);
        let total: usize = weight_names().map(|n| real_shape(n).unwrap().iter().product::<usize>()).sum();
        assert_eq!(total, REAL_PARAMS);
    }

    #[test]
    fn unknown_names_are_errors() {
        for name in ["model.layers.x.mlp.gate.weight", "model.sam_model.blocks.0.attn.foo.weight", "foo", ""] {
            assert!(matches!(real_shape(name), Err(RandomCheckpointError::UnknownTensor(_))), "{name}");
        }
    }

    #[test]
    fn the_shipped_tokenizer_is_the_real_one_and_fits_the_vocabulary() {
        let dir = std::env::temp_dir().join(format!("dsocr-random-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, TOKENIZER_JSON).unwrap();
        let tok = dsocr_input::PromptTokenizer::from_file(&path).unwrap();
        assert_eq!(tok.image_token_id().unwrap(), 128815);
        assert_eq!(tok.token_id("<td>"), Some(128821));
        let vocab = ModelConfig::from_json(&real_config()).unwrap().decoder.vocab_size;
        assert!(tok.vocab_size() <= vocab, "{} ids, {vocab} embeddings", tok.vocab_size());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn real_config_parses_to_the_real_model() {
        let parsed = ModelConfig::from_json(&real_config()).unwrap();
        let real = ModelConfig::default();
        assert_eq!(parsed.decoder.hidden_size, 1280);
        assert_eq!(parsed.decoder.vocab_size, 129280);
        assert_eq!(parsed.decoder.num_hidden_layers, 12);
        assert_eq!(parsed.decoder.hidden_size, real.decoder.hidden_size);
        assert_eq!(parsed.encoder.feature_dim(), real.encoder.feature_dim());
        assert_eq!(parsed.projector.input_dim, 2048);
    }
}
