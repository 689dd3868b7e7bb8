//! `dsocr debug run-case` / `dsocr debug parity` end to end.

use std::process::Command;

use dsocr_testkit::parity::Fixture;
use dsocr_tests::{dsocr_bin, fixture_dir, temp_dir};

#[test]
fn run_case_writes_the_fixture_tensor_names_and_views() {
    let out = temp_dir("run-case");
    let file = out.join("gundam.safetensors");
    let views = out.join("views");
    let status = Command::new(dsocr_bin())
        .args(["debug", "run-case", "--fixture"])
        .arg(fixture_dir())
        .args(["--case", "gundam_page", "--out"])
        .arg(&file)
        .arg("--views")
        .arg(&views)
        .args(["--device", "cpu"])
        .status()
        .unwrap();
    assert!(status.success());
    let ours = dsocr_weights::SafetensorsFiles::open(&file).unwrap();
    let golden = Fixture::open(&fixture_dir()).unwrap().golden().unwrap();
    let want: Vec<&str> = golden.names().into_iter().filter(|n| n.starts_with("gundam_page.")).collect();
    assert_eq!(ours.names(), want);
    // generated ids stored as int64 like the fixture
    assert_eq!(ours.info("gundam_page.generated_ids").unwrap().dtype, burn::tensor::DType::I64);
    // views byte-identical to the fixture's
    for name in ["global.png", "tile_0.png", "tile_5.png"] {
        let a = image::open(views.join(name)).unwrap().to_rgb8();
        let b = image::open(fixture_dir().join("preprocess/gundam_page").join(name)).unwrap().to_rgb8();
        assert!(a == b, "{name} differs");
    }
    assert!(!views.join("tile_6.png").exists());
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn parity_passes_and_fails_with_exit_codes() {
    let ok = Command::new(dsocr_bin())
        .args(["debug", "parity", "--device", "cpu", "--case", "text_only", "--case", "tiny_page", "--fixture"])
        .arg(fixture_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("tiny_page.vision_embeds") && stdout.contains("all tensors within tolerance"), "{stdout}");

    // A fixture whose golden tensors were tampered with must fail with exit code 1.
    let dir = temp_dir("tampered");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "cases.json"] {
        std::fs::copy(fixture_dir().join(f), dir.join(f)).unwrap();
    }
    let golden = std::fs::read(fixture_dir().join("golden.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&golden).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        tensors.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    for (name, _, _, data) in owned.iter_mut() {
        if name == "text_only.prefill_logits_tail" {
            // bump the first f32 by 0.01 (> 1e-3 tolerance)
            let v = f32::from_le_bytes(data[0..4].try_into().unwrap()) + 0.01;
            data[0..4].copy_from_slice(&v.to_le_bytes());
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(dir.join("golden.safetensors"), safetensors::tensor::serialize(views, None).unwrap()).unwrap();
    let bad = Command::new(dsocr_bin())
        .args(["debug", "parity", "--device", "cpu", "--case", "text_only", "--fixture"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("text_only.prefill_logits_tail") && stdout.contains("FAIL"), "{stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_case_and_missing_model_files_are_clear_errors() {
    let out = Command::new(dsocr_bin())
        .args(["debug", "run-case", "--case", "nope", "--out", "/tmp/x.safetensors", "--fixture"])
        .arg(fixture_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope") && err.contains("gundam_page"), "{err}");

    let empty = temp_dir("empty-model");
    std::fs::copy(fixture_dir().join("cases.json"), empty.join("cases.json")).unwrap();
    let out = Command::new(dsocr_bin()).args(["debug", "parity", "--fixture"]).arg(&empty).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&empty).ok();
}
