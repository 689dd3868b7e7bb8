//! The encoder runs end to end in bf16 (the CUDA precision) without dtype mismatches, and stays
//! near the float32 reference (3% of the largest value; bf16 keeps 8 mantissa bits, measured
//! 1.3%).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::DType;
use dsocr_encoder::{pixels_from_chw, DeepEncoder, EncoderConfig};
use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder};
use safetensors::SafeTensors;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

fn read_view(path: &Path) -> (usize, Vec<f32>) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let side = img.width() as usize;
    let mut chw = vec![0f32; 3 * side * side];
    for (x, y, px) in img.enumerate_pixels() {
        for c in 0..3 {
            chw[(c * side + y as usize) * side + x as usize] = (px.0[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    (side, chw)
}

#[test]
fn bf16_runs_and_stays_near_the_reference() {
    let dir = fixture_dir();
    // The device keeps f32 as its default; every encoder tensor must carry the builder's bf16.
    let device = Backend::Cpu.device(Precision::F32).expect("cpu device");
    let cfg = EncoderConfig::from_hf_config_file(dir.join("config.json")).expect("config");
    let vb = VarBuilder::new(Arc::new(SafetensorsFiles::open(&dir).expect("checkpoint")), &device, DType::BF16);
    let encoder = DeepEncoder::load_for_sides(&vb, &cfg, &[512, 640]).expect("load");
    let golden_bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden");
    let st = SafeTensors::deserialize(&golden_bytes).expect("golden");

    for case in ["tiny_page", "small_page"] {
        let (side, chw) = read_view(&dir.join("preprocess").join(case).join("global.png"));
        // f32 pixels: forward casts them to the encoder dtype.
        let pixels = pixels_from_chw(chw, 1, side, &device, DType::F32).expect("pixels");
        let out = encoder.forward(pixels).expect("forward");
        assert_eq!(out.clip.dtype(), DType::BF16);
        assert_eq!(out.features.dtype(), DType::BF16);
        let got = out.clip.to_data().convert::<f32>().try_to_vec::<f32>().expect("data");
        let view = st.tensor(&format!("{case}.clip.global")).expect("golden clip");
        let want: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(got.len(), want.len());
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff =
            got.iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| if (a - b).is_nan() { f32::INFINITY } else { m.max((a - b).abs()) });
        println!("{case}.clip.global bf16: max |diff| = {diff:.3e} (max |value| {max:.3})");
        assert!(diff < 0.03 * max.max(1.0), "{case}: bf16 drifted too far: {diff}");
    }
}
