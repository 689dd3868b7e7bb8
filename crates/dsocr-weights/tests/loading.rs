//! Loading the reference fixture's bf16 checkpoint: names, shapes, dtypes, sharding, errors.

use std::path::PathBuf;
use std::sync::Arc;

use burn::tensor::DType;
use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder, WeightError};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

#[test]
fn opens_the_fixture_folder_with_upstream_names() {
    let files = SafetensorsFiles::open(fixture()).unwrap();
    let info = files.info("model.sam_model.pos_embed").unwrap();
    assert_eq!(info.shape, vec![1, 64, 64, 48]);
    assert_eq!(info.dtype, DType::BF16);
    assert!(files.contains("lm_head.weight"));
    assert!(files.contains("model.view_seperator"));
}

#[test]
fn bf16_weights_load_as_f32_and_as_bf16_with_the_same_values() {
    let device = Backend::Cpu.device(Precision::F32).unwrap();
    let files = Arc::new(SafetensorsFiles::open(fixture()).unwrap());
    let (_, host) = files.to_f32_vec("model.norm.weight").unwrap();
    let vb = VarBuilder::new(files.clone(), &device, DType::F32).pp("model").pp("norm");
    let t = vb.get("weight", [64]).unwrap();
    assert_eq!(t.dtype(), DType::F32);
    assert_eq!(t.into_data().try_to_vec::<f32>().unwrap(), host);
    // zero-copy path: the file's own dtype
    let vb16 = VarBuilder::new(files, &device, DType::BF16).pp("model.norm");
    let t16 = vb16.get("weight", [64]).unwrap();
    assert_eq!(t16.dtype(), DType::BF16);
    let back: Vec<f32> = t16.cast(DType::F32).into_data().try_to_vec().unwrap();
    assert_eq!(back, host);
}

#[test]
fn wrong_shape_and_missing_tensor_are_named_errors() {
    let device = Backend::Cpu.device(Precision::F32).unwrap();
    let files = Arc::new(SafetensorsFiles::open(fixture()).unwrap());
    let vb = VarBuilder::new(files, &device, DType::F32);
    let err = vb.pp("model.norm").get("weight", [1280]).unwrap_err();
    assert!(matches!(err, WeightError::Shape { .. }));
    let msg = err.to_string();
    assert!(msg.contains("model.norm.weight") && msg.contains("[64]") && msg.contains("[1280]"), "{msg}");
    let err = vb.get::<1>("model.nope", [1]).unwrap_err();
    assert!(err.to_string().contains("model.nope"), "{err}");
}

#[test]
fn sharded_checkpoint_through_an_index() {
    let dir = std::env::temp_dir().join(format!("dsocr-shard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture().join("model.safetensors"), dir.join("model-00001-of-00001.safetensors")).unwrap();
    let files = SafetensorsFiles::open(fixture()).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = files
        .names()
        .into_iter()
        .map(|n| (n.to_string(), serde_json::Value::from("model-00001-of-00001.safetensors")))
        .collect();
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = SafetensorsFiles::open(&dir).unwrap();
    assert_eq!(sharded.names(), files.names());
    // an index naming a tensor that no shard holds is an error naming it
    let mut bad = index.clone();
    bad["weight_map"]["model.ghost"] = "model-00001-of-00001.safetensors".into();
    std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = SafetensorsFiles::open(&dir).err().expect("must fail");
    assert!(err.to_string().contains("model.ghost"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn folder_without_weights_and_garbage_file_are_errors() {
    let dir = std::env::temp_dir().join(format!("dsocr-noweights-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert!(matches!(SafetensorsFiles::open(&dir), Err(WeightError::NoWeights { .. })));
    let junk = dir.join("model.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    let err = SafetensorsFiles::open(&dir).err().expect("must fail");
    assert!(matches!(err, WeightError::Format { .. }) && err.to_string().contains("model.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
