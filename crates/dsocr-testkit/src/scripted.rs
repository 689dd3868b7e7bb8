//! A tiny model that says what it is told: the tiny reference fixture with its decoder rewired
//! so that greedy decoding emits a fixed token script, grounding boxes and EOS included. Random
//! weights never produce a grounding block or EOS; the server, the web page and the CLI need
//! both to be tested end to end (an honest `finish_reason: "stop"`, a layout box on the overlay).
//!
//! How: every attention output projection and every MLP/expert down projection is zeroed, so
//! the residual stream at a position is its own token embedding. Each script token gets its own
//! embedding axis (one-hot), every other token one shared "start" axis; `lm_head` maps an axis to
//! the token's successor in the script. A token that occurs several times lists its successors
//! in order, ranked by score: with the repeat guard at n = 2 (no bigram twice), the k-th
//! occurrence is banned from its earlier successors and takes the next one. So a script must not
//! repeat a bigram, and the request must use `ngram_size = 2` with a window longer than the
//! script ([`SCRIPT_GUARD`]). The vision encoder keeps its random weights and runs as usual.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::fixtures::reference_tiny;

/// A page's output: one `text` block with a box, a line of text, EOS. Decodes to
/// [`OCR_SCRIPT_TEXT`] (plus EOS).
pub const OCR_SCRIPT: &[&str] = &[
    "<|ref|>",
    "t",
    "e",
    "x",
    "t",
    "<|/ref|>",
    "<|det|>",
    "[",
    "[",
    "1",
    "2",
    "5",
    ",",
    "3",
    "4",
    "6",
    ",",
    "7",
    "8",
    "9",
    ",",
    "9",
    "0",
    "5",
    "]",
    "]",
    "<|/det|>",
    "Ċ",
    "H",
    "e",
    "l",
    "l",
    "o",
    "Ġ",
    "w",
    "o",
    "r",
    "l",
    "d",
    "<｜end▁of▁sentence｜>",
];

/// The decoded [`OCR_SCRIPT`] without its EOS.
pub const OCR_SCRIPT_TEXT: &str = "<|ref|>text<|/ref|><|det|>[[125,346,789,905]]<|/det|>\nHello world";

/// The repeat guard a scripted run needs: `(n, window)`.
pub const SCRIPT_GUARD: (usize, usize) = (2, 256);

#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the fixture weights cannot be read: {0}")]
    Weights(String),
    #[error("the script token `{0}` is not in the fixture's vocabulary")]
    UnknownToken(String),
    #[error("the script repeats the bigram `{0}` `{1}`: the n = 2 guard cannot tell the occurrences apart")]
    RepeatedBigram(String, String),
    #[error("the script has {0} distinct tokens; the fixture's hidden size allows {1}")]
    TooManyTokens(usize, usize),
    #[error("the script is empty")]
    Empty,
}

/// Writes a model folder into `dir` (config, tokenizer, weights) whose greedy output, under the
/// [`SCRIPT_GUARD`] repeat guard, is `script` (token strings of the fixture's vocabulary).
pub fn write(dir: &Path, script: &[&str]) -> Result<PathBuf, ScriptError> {
    let src = reference_tiny();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScriptError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(file), dir.join(file)).map_err(io(&dir.join(file)))?;
    }
    let vocab = vocabulary(&src.join("tokenizer.json"))?;
    let ids: Vec<usize> = script
        .iter()
        .map(|t| vocab.get(*t).copied().ok_or_else(|| ScriptError::UnknownToken(t.to_string())))
        .collect::<Result<_, _>>()?;
    let first = *ids.first().ok_or(ScriptError::Empty)?;

    // Successors of each token, in order of first appearance.
    let mut successors: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for pair in ids.windows(2) {
        let list = successors.entry(pair[0]).or_default();
        if list.contains(&pair[1]) {
            return Err(ScriptError::RepeatedBigram(
                script_token(script, &ids, pair[0]),
                script_token(script, &ids, pair[1]),
            ));
        }
        list.push(pair[1]);
    }
    let mut axis: BTreeMap<usize, usize> = BTreeMap::new();
    for &id in &ids {
        let next = axis.len() + 1; // axis 0: every other token ("start")
        axis.entry(id).or_insert(next);
    }

    let weights_path = src.join("model.safetensors");
    let bytes = std::fs::read(&weights_path).map_err(io(&weights_path))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| ScriptError::Weights(e.to_string()))?;
    let (vocab_size, hidden) = match tensors.tensor("lm_head.weight") {
        Ok(t) => (t.shape()[0], t.shape()[1]),
        Err(e) => return Err(ScriptError::Weights(e.to_string())),
    };
    if axis.len() + 1 > hidden {
        return Err(ScriptError::TooManyTokens(axis.len(), hidden - 1));
    }
    let mut embed = vec![0f32; vocab_size * hidden];
    for token in 0..vocab_size {
        embed[token * hidden + axis.get(&token).copied().unwrap_or(0)] = 1.0;
    }
    let mut lm_head = vec![0f32; vocab_size * hidden];
    lm_head[first * hidden] = 1.0;
    for (token, next) in &successors {
        let a = axis[token];
        for (rank, &s) in next.iter().enumerate() {
            lm_head[s * hidden + a] = (next.len() - rank) as f32;
        }
    }

    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        let shape = view.shape().to_vec();
        let data = if name == "model.embed_tokens.weight" {
            to_bf16(&embed)
        } else if name == "lm_head.weight" {
            to_bf16(&lm_head)
        } else if name.starts_with("model.layers.")
            && (name.ends_with("self_attn.o_proj.weight") || name.ends_with("down_proj.weight"))
        {
            if view.dtype() != Dtype::BF16 {
                return Err(ScriptError::Weights(format!("{name} is {:?}, expected BF16", view.dtype())));
            }
            vec![0u8; view.data().len()]
        } else {
            view.data().to_vec()
        };
        owned.push((name, shape, data));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::BF16, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| ScriptError::Weights(format!("{name}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let out = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &out).map_err(|e| ScriptError::Weights(e.to_string()))?;
    Ok(dir.to_path_buf())
}

fn script_token(script: &[&str], ids: &[usize], id: usize) -> String {
    ids.iter().position(|&i| i == id).map_or_else(|| id.to_string(), |k| script[k].to_string())
}

fn to_bf16(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect()
}

/// Token string → id, from `tokenizer.json` (the BPE vocabulary and the added tokens).
fn vocabulary(path: &Path) -> Result<BTreeMap<String, usize>, ScriptError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Io { path: path.to_path_buf(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ScriptError::Weights(e.to_string()))?;
    let mut vocab = BTreeMap::new();
    if let Some(map) = json["model"]["vocab"].as_object() {
        for (token, id) in map {
            if let Some(id) = id.as_u64() {
                vocab.insert(token.clone(), id as usize);
            }
        }
    }
    if let Some(added) = json["added_tokens"].as_array() {
        for token in added {
            if let (Some(content), Some(id)) = (token["content"].as_str(), token["id"].as_u64()) {
                vocab.insert(content.to_string(), id as usize);
            }
        }
    }
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_that_repeat_a_bigram_or_leave_the_vocabulary_are_refused() {
        let dir = std::env::temp_dir().join(format!("dsocr-scripted-unit-{}", std::process::id()));
        assert!(
            matches!(write(&dir, &["a", "b", "a", "b"]), Err(ScriptError::RepeatedBigram(a, b)) if a == "a" && b == "b")
        );
        assert!(matches!(write(&dir, &["a", "no-such-token"]), Err(ScriptError::UnknownToken(_))));
        assert!(matches!(write(&dir, &[]), Err(ScriptError::Empty)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
