//! Language-model configuration, read from the top level of the HF `config.json`
//! (DeepSeek-OCR repeats the same keys under `language_config`).
//!
//! Keys absent from the file take the `DeepseekV2Config` class defaults (spec §1.1), except the
//! architecture sizes, which must be present: a missing `hidden_size` is an error, not a silent
//! 4096. Unknown keys are ignored. [`DecoderConfig::validate`] rejects what this crate does not
//! implement (MLA, group-limited routing, sigmoid scoring, RoPE scaling, GQA, non-SiLU MLPs).

use std::path::Path;

use serde::Deserialize;

use crate::DecoderError;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DecoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense SwiGLU MLP (layers without MoE).
    pub intermediate_size: usize,
    /// Width of one routed expert; the shared MLP is `n_shared_experts ×` this.
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent or null: equal to `num_attention_heads` (plain MHA).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `None`: a dense model (no MoE layer at all).
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    #[serde(default)]
    pub first_k_dense_replace: usize,
    #[serde(default = "default_one")]
    pub moe_layer_freq: usize,
    /// The class default is the typo `"gready"`, which the reference code rejects too.
    #[serde(default = "default_topk_method")]
    pub topk_method: String,
    #[serde(default)]
    pub n_group: Option<usize>,
    #[serde(default)]
    pub topk_group: Option<usize>,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default = "default_scoring_func")]
    pub scoring_func: String,
    #[serde(default = "default_routed_scaling_factor")]
    pub routed_scaling_factor: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Must be null: plain RoPE.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// The class default is `true` (MLA), which this crate does not implement.
    #[serde(default = "default_true")]
    pub use_mla: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_one() -> usize {
    1
}
fn default_true() -> bool {
    true
}
fn default_topk_method() -> String {
    "gready".into()
}
fn default_scoring_func() -> String {
    "softmax".into()
}
fn default_routed_scaling_factor() -> f64 {
    1.0
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_bos() -> u32 {
    100000
}
fn default_eos() -> u32 {
    100001
}

impl Default for DecoderConfig {
    /// The real DeepSeek-OCR language model ("DeepSeek3B-MoE-A570M", spec §1.1).
    fn default() -> Self {
        Self {
            vocab_size: 129280,
            hidden_size: 1280,
            intermediate_size: 6848,
            moe_intermediate_size: 896,
            num_hidden_layers: 12,
            num_attention_heads: 10,
            num_key_value_heads: Some(10),
            n_routed_experts: Some(64),
            n_shared_experts: Some(2),
            num_experts_per_tok: Some(6),
            first_k_dense_replace: 1,
            moe_layer_freq: 1,
            topk_method: "greedy".into(),
            n_group: Some(1),
            topk_group: Some(1),
            norm_topk_prob: false,
            scoring_func: "softmax".into(),
            routed_scaling_factor: 1.0,
            hidden_act: "silu".into(),
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: None,
            max_position_embeddings: 8192,
            use_mla: false,
            attention_bias: false,
            tie_word_embeddings: false,
            bos_token_id: 0,
            eos_token_id: 1,
        }
    }
}

impl DecoderConfig {
    /// Parses and validates the language-model keys of an HF `config.json`: the top level, or
    /// `language_config` when the top level has no `hidden_size`.
    pub fn from_hf_config_file(path: impl AsRef<Path>) -> Result<Self, DecoderError> {
        let path = path.as_ref();
        let text =
            std::fs::read_to_string(path).map_err(|source| DecoderError::Io { path: path.to_path_buf(), source })?;
        Self::from_hf_config_str(&text)
    }

    /// [`from_hf_config_file`](Self::from_hf_config_file) on the JSON text.
    pub fn from_hf_config_str(text: &str) -> Result<Self, DecoderError> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| DecoderError::Config(format!("config.json: {e}")))?;
        Self::from_hf_json(&json)
    }

    /// From an already parsed `config.json`.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self, DecoderError> {
        let section = match json.get("language_config") {
            Some(lang) if json.get("hidden_size").is_none() => lang,
            _ => json,
        };
        let cfg: Self = serde_json::from_value(section.clone())
            .map_err(|e| DecoderError::Config(format!("language-model keys: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rejects configurations this implementation does not compute faithfully.
    pub fn validate(&self) -> Result<(), DecoderError> {
        let err = |m: String| Err(DecoderError::Config(m));
        if self.use_mla {
            return err(
                "use_mla must be false: multi-latent attention is not implemented (DeepSeek-OCR uses plain MHA)".into(),
            );
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 || self.num_attention_heads == 0
        {
            return err("vocab_size, hidden_size, num_hidden_layers and num_attention_heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return err(format!("head_dim {} must be even for rotate-half RoPE", self.head_dim()));
        }
        if self.num_kv_heads() != self.num_attention_heads {
            return err(format!(
                "num_key_value_heads {} != num_attention_heads {}: grouped-query attention is not implemented",
                self.num_kv_heads(),
                self.num_attention_heads
            ));
        }
        if self.hidden_act != "silu" {
            return err(format!("hidden_act `{}` is not supported (only silu)", self.hidden_act));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return err("rope_scaling must be null: only plain RoPE is implemented".into());
        }
        if self.max_position_embeddings == 0 {
            return err("max_position_embeddings must be positive".into());
        }
        if self.moe_layer_freq == 0 {
            return err("moe_layer_freq must be positive".into());
        }
        if self.intermediate_size == 0 && self.layers_are_moe().iter().any(|m| !m) {
            return err("intermediate_size must be positive when dense layers exist".into());
        }
        if let Some(experts) = self.n_routed_experts {
            if self.topk_method != "greedy" {
                return err(format!("topk_method `{}` is not supported (only greedy)", self.topk_method));
            }
            if self.scoring_func != "softmax" {
                return err(format!("scoring_func `{}` is not supported (only softmax)", self.scoring_func));
            }
            let k = self.num_experts_per_tok.unwrap_or(0);
            if experts == 0 || k == 0 || k > experts {
                return err(format!(
                    "num_experts_per_tok {:?} must be in 1..={experts} (n_routed_experts)",
                    self.num_experts_per_tok
                ));
            }
            if self.moe_intermediate_size == 0 {
                return err("moe_intermediate_size must be positive".into());
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Whether layer `i` has a MoE block (the HF rule: routed experts configured, `i >=
    /// first_k_dense_replace` and `i % moe_layer_freq == 0`); otherwise it has the dense MLP.
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.n_routed_experts.is_some()
            && i >= self.first_k_dense_replace
            && i.is_multiple_of(self.moe_layer_freq.max(1))
    }

    fn layers_are_moe(&self) -> Vec<bool> {
        (0..self.num_hidden_layers).map(|i| self.is_moe_layer(i)).collect()
    }

    /// Width of the shared-experts MLP (`n_shared_experts × moe_intermediate_size`), if any.
    pub fn shared_intermediate_size(&self) -> Option<usize> {
        self.n_shared_experts.filter(|&n| n > 0).map(|n| n * self.moe_intermediate_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_for_absent_keys_and_validation() {
        let json = r#"{"vocab_size": 512, "hidden_size": 64, "intermediate_size": 96,
            "moe_intermediate_size": 24, "num_hidden_layers": 3, "num_attention_heads": 4,
            "n_routed_experts": 8, "n_shared_experts": 2, "num_experts_per_tok": 3,
            "first_k_dense_replace": 1, "topk_method": "greedy", "use_mla": false,
            "max_position_embeddings": 4096, "some_unknown_key": [1, 2]}"#;
        let cfg = DecoderConfig::from_hf_config_str(json).unwrap();
        assert_eq!(cfg.rms_norm_eps, 1e-6);
        assert_eq!(cfg.rope_theta, 10000.0);
        assert!(!cfg.norm_topk_prob);
        assert_eq!(cfg.scoring_func, "softmax");
        assert_eq!(cfg.routed_scaling_factor, 1.0);
        assert_eq!(cfg.hidden_act, "silu");
        assert_eq!(cfg.num_kv_heads(), 4);
        assert!(!cfg.is_moe_layer(0) && cfg.is_moe_layer(1) && cfg.is_moe_layer(2));
        assert_eq!(cfg.shared_intermediate_size(), Some(48));

        // use_mla absent → class default true → rejected.
        let mla = json.replace(r#""use_mla": false,"#, "");
        let e = DecoderConfig::from_hf_config_str(&mla).unwrap_err().to_string();
        assert!(e.contains("use_mla"), "{e}");
        let grouped = json.replace(r#""topk_method": "greedy""#, r#""topk_method": "group_limited_greedy""#);
        assert!(DecoderConfig::from_hf_config_str(&grouped).unwrap_err().to_string().contains("topk_method"));
        let sigmoid = json.replace(r#""use_mla": false"#, r#""use_mla": false, "scoring_func": "sigmoid""#);
        assert!(DecoderConfig::from_hf_config_str(&sigmoid).unwrap_err().to_string().contains("scoring_func"));
        let missing = json.replace(r#""hidden_size": 64,"#, "");
        assert!(DecoderConfig::from_hf_config_str(&missing).unwrap_err().to_string().contains("hidden_size"));
    }

    #[test]
    fn real_model_default_is_valid() {
        let cfg = DecoderConfig::default();
        cfg.validate().unwrap();
        assert_eq!(cfg.head_dim(), 128);
        assert_eq!(cfg.shared_intermediate_size(), Some(1792));
    }

    #[test]
    fn fixture_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference-tiny/config.json");
        let cfg = DecoderConfig::from_hf_config_file(path).unwrap();
        assert_eq!(cfg.hidden_size, 64);
        assert_eq!(cfg.n_routed_experts, Some(8));
        assert_eq!(cfg.eos_token_id, 1);
    }
}
