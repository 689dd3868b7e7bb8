//! Fixture loading shared by the integration tests (reference-tiny, CPU, f32).

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use dsocr_decoder::{Decoder, DecoderConfig};
use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder};
use safetensors::{Dtype, SafeTensors};

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

pub fn device() -> Device {
    Backend::Cpu.device(Precision::F32).expect("cpu device")
}

pub fn load_decoder() -> Decoder {
    load_decoder_on(&device())
}

/// The fixture decoder in f32 on `device`.
pub fn load_decoder_on(device: &Device) -> Decoder {
    let dir = fixture_dir();
    let cfg = DecoderConfig::from_hf_config_file(dir.join("config.json")).expect("config");
    let files = Arc::new(SafetensorsFiles::open(dir.join("model.safetensors")).expect("weights"));
    let vb = VarBuilder::new(files, device, DType::F32);
    Decoder::load(&vb, &cfg).expect("decoder")
}

/// The fixture decoder on `device`, its projections, experts and lm_head kept as `format`
/// says (activations f32).
pub fn load_decoder_as(device: &Device, format: dsocr_nn::WeightFormat) -> Decoder {
    let dir = fixture_dir();
    let cfg = DecoderConfig::from_hf_config_file(dir.join("config.json")).expect("config");
    let files = Arc::new(SafetensorsFiles::open(dir.join("model.safetensors")).expect("weights"));
    let vb = VarBuilder::new(files, device, DType::F32);
    Decoder::load_as(&vb, &cfg, format, format).expect("decoder")
}

/// The golden tensors, as f32 (float) or i64 (int) host vectors with their shapes.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open() -> Self {
        let bytes = std::fs::read(fixture_dir().join("golden.safetensors")).expect("golden.safetensors");
        Self { bytes }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden format")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.view().tensor(name).is_ok()
    }

    pub fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let st = self.view();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("golden {name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        (t.shape().to_vec(), v)
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.view();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("golden {name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.i64(name).into_iter().map(|v| u32::try_from(v).expect("token id")).collect()
    }
}

/// `added_tokens` of the fixture's tokenizer.json: content → id.
pub fn added_tokens() -> HashMap<String, u32> {
    let text = std::fs::read_to_string(fixture_dir().join("tokenizer.json")).expect("tokenizer.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("tokenizer json");
    json["added_tokens"]
        .as_array()
        .expect("added_tokens")
        .iter()
        .map(|t| (t["content"].as_str().expect("content").to_string(), t["id"].as_u64().expect("id") as u32))
        .collect()
}

pub fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir().join("cases.json")).expect("cases.json");
    serde_json::from_str(&text).expect("cases json")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

pub fn host_f32<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}
