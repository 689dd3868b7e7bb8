//! Parity of the DeepEncoder with the upstream PyTorch outputs of the reference-tiny fixture
//! (`tests/fixtures/reference-tiny`, float32 goldens): every case with an image, global view and
//! tiles, view sides 512, 640, 1024 and 1280.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use dsocr_encoder::{pixels_from_chw, DeepEncoder, EncoderConfig, EncoderError, EncoderOutput};
use dsocr_weights::{Backend, Precision, SafetensorsFiles, VarBuilder};
use safetensors::SafeTensors;

/// Vision activations: 1e-4 absolute (team rule).
const TOL: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/reference-tiny")
}

fn load_encoder() -> (DeepEncoder, Device) {
    let dir = fixture_dir();
    let device = Backend::Cpu.device(Precision::F32).expect("cpu device");
    let cfg = EncoderConfig::from_hf_config_file(dir.join("config.json")).expect("config");
    let files = SafetensorsFiles::open(&dir).expect("checkpoint");
    let vb = VarBuilder::new(Arc::new(files), &device, DType::F32);
    (DeepEncoder::load(&vb, &cfg).expect("load encoder"), device)
}

/// Reads an 8-bit RGB PNG as CHW f32 normalised like torchvision: `(u/255 − 0.5)/0.5`.
fn read_view(path: &Path) -> (usize, Vec<f32>) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    let (w, h) = img.dimensions();
    assert_eq!(w, h, "{}: views are square", path.display());
    let side = w as usize;
    let mut chw = vec![0f32; 3 * side * side];
    for (x, y, px) in img.enumerate_pixels() {
        for c in 0..3 {
            chw[(c * side + y as usize) * side + x as usize] = (px.0[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
    (side, chw)
}

/// Host copy of a tensor: (shape, values).
struct Host {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn to_host<const D: usize>(t: &Tensor<D>) -> Host {
    let data = t.to_data().convert::<f32>();
    Host { shape: data.shape().to_vec(), values: data.try_to_vec::<f32>().expect("f32 data") }
}

fn golden(st: &SafeTensors, name: &str) -> Host {
    let view = st.tensor(name).unwrap_or_else(|e| panic!("golden `{name}`: {e}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
    let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Host { shape: view.shape().to_vec(), values }
}

/// Max |a − b|; NaN anywhere gives +inf so that it can never pass.
fn max_abs_diff(name: &str, got: &Host, want: &Host) -> f32 {
    assert_eq!(got.shape, want.shape, "{name}: shape");
    got.values.iter().zip(&want.values).fold(0f32, |m, (&a, &b)| {
        let d = (a - b).abs();
        if d.is_nan() {
            f32::INFINITY
        } else {
            m.max(d)
        }
    })
}

/// The projector input expected from the golden CLIP and SAM outputs:
/// `concat(clip[:, 1:], sam flattened row-major)` along channels.
fn golden_features(clip: &Host, sam: &Host) -> Host {
    let (b, w) = (clip.shape[0], clip.shape[2]);
    let (c, qq) = (sam.shape[1], sam.shape[2] * sam.shape[3]);
    let mut values = Vec::with_capacity(b * qq * (w + c));
    for i in 0..b {
        for t in 0..qq {
            values.extend_from_slice(&clip.values[(i * (1 + qq) + 1 + t) * w..][..w]);
            values.extend((0..c).map(|ch| sam.values[(i * c + ch) * qq + t]));
        }
    }
    Host { shape: vec![b, qq, w + c], values }
}

struct ViewResult {
    sam: Host,
    clip: Host,
    features: Host,
}

fn run(encoder: &DeepEncoder, device: &Device, views: &[(usize, Vec<f32>)]) -> ViewResult {
    let side = views[0].0;
    assert!(views.iter().all(|v| v.0 == side));
    let values: Vec<f32> = views.iter().flat_map(|v| v.1.iter().copied()).collect();
    let pixels = pixels_from_chw(values, views.len(), side, device, DType::F32).expect("pixels");
    let EncoderOutput { sam, clip, features } = encoder.forward(pixels).expect("forward");
    ViewResult { sam: to_host(&sam), clip: to_host(&clip), features: to_host(&features) }
}

#[test]
fn encoder_matches_reference_for_every_case() {
    let dir = fixture_dir();
    let (encoder, device) = load_encoder();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).expect("cases.json")).expect("json");
    let golden_bytes = std::fs::read(dir.join("golden.safetensors")).expect("golden.safetensors");
    let st = SafeTensors::deserialize(&golden_bytes).expect("golden");

    // Several cases share the same preprocessed views: encode each distinct view set once, but
    // compare every case against its own goldens.
    let mut cache: Vec<(Vec<u8>, ViewResult)> = Vec::new();
    let mut worst = 0f32;
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut sides_seen = std::collections::BTreeSet::new();
    for case in cases["cases"].as_array().expect("cases") {
        if case["image"].is_null() {
            continue;
        }
        let name = case["name"].as_str().expect("name");
        let num_tiles = case["num_tiles"].as_u64().expect("num_tiles") as usize;
        let pre = dir.join("preprocess").join(name);
        let mut groups = vec![("global", vec![pre.join("global.png")])];
        if num_tiles > 0 {
            groups.push(("tiles", (0..num_tiles).map(|i| pre.join(format!("tile_{i}.png"))).collect()));
        }
        assert_eq!(
            st.tensor(&format!("{name}.sam.tiles")).is_ok(),
            num_tiles > 0,
            "{name}: golden tiles present iff the case has tiles"
        );
        for (what, paths) in groups {
            let key: Vec<u8> = paths.iter().flat_map(|p| std::fs::read(p).expect("png")).collect();
            let index = match cache.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    let views: Vec<_> = paths.iter().map(|p| read_view(p)).collect();
                    sides_seen.insert(views[0].0);
                    let t = std::time::Instant::now();
                    let result = run(&encoder, &device, &views);
                    eprintln!(
                        "encoded {name}.{what}: {} view(s) of {} px in {:.2?}",
                        views.len(),
                        views[0].0,
                        t.elapsed()
                    );
                    cache.push((key, result));
                    cache.len() - 1
                }
            };
            let result = &cache[index].1;
            let sam = golden(&st, &format!("{name}.sam.{what}"));
            let clip = golden(&st, &format!("{name}.clip.{what}"));
            let features = golden_features(&clip, &sam);
            for (label, got, want) in
                [("sam", &result.sam, &sam), ("clip", &result.clip, &clip), ("features", &result.features, &features)]
            {
                let tensor = format!("{name}.{label}.{what}");
                let d = max_abs_diff(&tensor, got, want);
                println!("{tensor:<36} {:?}  max |diff| = {d:.3e}", want.shape);
                worst = worst.max(d);
                checked += 1;
                if d > TOL {
                    failures.push(format!("{tensor}: {d:.3e}"));
                }
            }
        }
    }
    println!("{checked} tensors compared, worst max |diff| = {worst:.3e} (tolerance {TOL:e})");
    assert_eq!(sides_seen.into_iter().collect::<Vec<_>>(), vec![512, 640, 1024, 1280], "view sides covered");
    // 3 tensors (sam, clip, features) per global view and per tile batch of each image case.
    let expected: usize = cases["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| !c["image"].is_null())
        .map(|c| 3 * (1 + usize::from(c["num_tiles"].as_u64().unwrap_or(0) > 0)))
        .sum();
    assert!(expected > 0 && checked == expected, "compared {checked} tensors, expected {expected}");
    assert!(failures.is_empty(), "over tolerance: {failures:?}");
}

#[test]
fn rejects_bad_inputs() {
    let (encoder, device) = load_encoder();
    let pixels = Tensor::<4>::zeros([1, 3, 768, 768], (&device, DType::F32));
    assert!(matches!(encoder.forward(pixels), Err(EncoderError::UnsupportedView { height: 768, .. })));
    let pixels = Tensor::<4>::zeros([1, 3, 512, 640], (&device, DType::F32));
    assert!(matches!(encoder.forward(pixels), Err(EncoderError::UnsupportedView { .. })));
    let pixels = Tensor::<4>::zeros([1, 1, 512, 512], (&device, DType::F32));
    assert!(matches!(encoder.forward(pixels), Err(EncoderError::Pixels(_))));
    assert!(matches!(pixels_from_chw(vec![0.0; 10], 1, 512, &device, DType::F32), Err(EncoderError::Pixels(_))));
}

#[test]
fn load_reports_missing_and_misshapen_weights() {
    let dir = fixture_dir();
    let device = Backend::Cpu.device(Precision::F32).expect("cpu device");
    let files = Arc::new(SafetensorsFiles::open(&dir).expect("checkpoint"));
    let vb = VarBuilder::new(files, &device, DType::F32);
    // The real-model sizes do not fit the tiny checkpoint: a shape error, not a panic.
    assert!(matches!(
        DeepEncoder::load(&vb, &EncoderConfig::default()),
        Err(EncoderError::Weight(dsocr_weights::WeightError::Shape { .. }))
    ));
    // A prefix with nothing under it: a missing-tensor error.
    let cfg = EncoderConfig::from_hf_config_file(dir.join("config.json")).expect("config");
    assert!(matches!(
        DeepEncoder::load(&vb.pp("nothing"), &cfg),
        Err(EncoderError::Weight(dsocr_weights::WeightError::Missing { .. }))
    ));
}
