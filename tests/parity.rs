//! The whole pipeline against the upstream reference: every case of the fixture, from its
//! images, every golden tensor (views, SAM, CLIP, vision embeddings, prompt ids, hidden states,
//! logits, generated ids). The numbers come from the upstream PyTorch code (fixture README).

use std::collections::BTreeSet;

use dsocr_model::{Backend, DeepseekOcr, LoadOptions, Precision, Quant};
use dsocr_testkit::parity::{compare, run_case, write_safetensors, Fixture, HostTensor, Tolerances};
use dsocr_tests::fixture_dir;

#[test]
fn every_case_matches_every_golden_tensor_on_cpu_f32() {
    let dir = fixture_dir();
    let fixture = Fixture::open(&dir).unwrap();
    let golden = fixture.golden().unwrap();
    let model = DeepseekOcr::load(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)).unwrap();
    let tol = Tolerances::for_precision(Precision::F32);
    assert_eq!((tol.vision, tol.hidden, tol.logits), (1e-4, 1e-3, 1e-3));

    let mut compared = BTreeSet::new();
    let mut failures = Vec::new();
    for case in &fixture.cases {
        let run = run_case(&model, &fixture, case).unwrap();
        for row in compare(&run, case, &golden, &tol) {
            println!("{:<44} {:>10.3e} {}", row.name, row.max_abs_diff, if row.pass { "ok" } else { "FAIL" });
            if !row.pass {
                failures.push(format!("{} ({:e}) {}", row.name, row.max_abs_diff, row.note));
            }
            compared.insert(row.name);
        }
    }
    // Every tensor of the golden file was compared: nothing silently skipped.
    let all: BTreeSet<String> = golden.names().into_iter().map(String::from).collect();
    assert_eq!(compared, all);
    assert_eq!(all.len(), 67);
    assert!(failures.is_empty(), "outside tolerance: {failures:#?}");
}

#[test]
fn a_wrong_reference_is_detected() {
    // The comparison itself must fail when the numbers differ: run one case and compare it
    // against another case's golden tensors under the first case's names.
    let dir = fixture_dir();
    let fixture = Fixture::open(&dir).unwrap();
    let golden = fixture.golden().unwrap();
    let model = DeepseekOcr::load(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)).unwrap();
    let mut case = fixture.case("small_page").unwrap().clone();
    let run = run_case(&model, &fixture, &case).unwrap();
    case.name = "tiny_page".into();
    let mut renamed = run;
    renamed.tensors = renamed.tensors.into_iter().map(|(k, v)| (k.replacen("small_page", "tiny_page", 1), v)).collect();
    let rows = compare(&renamed, &case, &golden, &Tolerances::for_precision(Precision::F32));
    assert!(rows.iter().any(|r| !r.pass), "comparing small_page outputs with tiny_page goldens must fail");
}

#[test]
fn the_harness_keeps_as_many_decode_logits_as_the_fixture_records() {
    // A copy of the fixture whose golden file records 3 decode steps of `gundam_page` instead of
    // 4 (the upstream exporter's count is a setting, not a law): the harness must follow the
    // file, not a constant, and still compare every tensor.
    let src = fixture_dir();
    let dir = std::env::temp_dir().join(format!("dsocr-parity-3-steps-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json", "cases.json"] {
        std::fs::copy(src.join(file), dir.join(file)).unwrap();
    }
    std::os::unix::fs::symlink(src.join("images"), dir.join("images")).unwrap();
    let golden = Fixture::open(&src).unwrap().golden().unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for name in golden.names().into_iter().filter(|n| n.starts_with("gundam_page.")) {
        let (mut shape, mut values) = golden.to_f32_vec(name).unwrap();
        if name.ends_with(".decode_logits") {
            assert_eq!(shape[0], 4, "the fixture records 4 steps");
            values.truncate(3 * shape[1]);
            shape[0] = 3;
        }
        let tensor = if name.ends_with("_ids") {
            HostTensor::I64 { shape, data: values.iter().map(|&v| v as i64).collect() }
        } else {
            HostTensor::F32 { shape, data: values }
        };
        tensors.insert(name.to_string(), tensor);
    }
    write_safetensors(&dir.join("golden.safetensors"), &tensors).unwrap();

    let fixture = Fixture::open(&dir).unwrap();
    let golden = fixture.golden().unwrap();
    let model = DeepseekOcr::load(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)).unwrap();
    let case = fixture.case("gundam_page").unwrap();
    let run = run_case(&model, &fixture, case).unwrap();
    assert_eq!(run.tensors["gundam_page.decode_logits"].shape(), [3, 512]);
    let rows = compare(&run, case, &golden, &Tolerances::for_precision(Precision::F32));
    assert_eq!(rows.len(), tensors.len(), "every recorded tensor compared");
    let failed: Vec<_> = rows.iter().filter(|r| !r.pass).map(|r| format!("{} {}", r.name, r.note)).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_quantized_decoder_stays_within_its_documented_bounds() {
    // q8 and q4 decoder weights (vision in f32): every golden tensor within the bounds of
    // docs/parity.md ("Quantized weights"). q8: the generated ids equal the reference's or
    // diverge only at a near-tie (the rule of `compare`). q4 is too coarse for the fixture's
    // 64-wide random decoder (two blocks per row) to keep its greedy ids: its ids are reported,
    // not required. The decoder errors must also be those of a quantized model, not of the f32
    // one: the option is not silently dropped.
    let dir = fixture_dir();
    let fixture = Fixture::open(&dir).unwrap();
    let golden = fixture.golden().unwrap();
    for quant in [Quant::Q8, Quant::Q4] {
        let mut options = LoadOptions::new(Backend::Cpu, Precision::F32);
        options.quant = Some(quant);
        let model = DeepseekOcr::load(&dir, &options).unwrap();
        assert_eq!(model.quant, Some(quant));
        let tol = Tolerances::for_run(Backend::Cpu, Precision::F32, Some(quant));
        let (mut failures, mut hidden_error) = (Vec::new(), 0f64);
        for case in &fixture.cases {
            let run = run_case(&model, &fixture, case).unwrap();
            for row in compare(&run, case, &golden, &tol) {
                println!("{quant} {:<44} {:>10.3e} {} {}", row.name, row.max_abs_diff, row.pass, row.note);
                if row.name.ends_with(".prefill_hidden_last") {
                    hidden_error = hidden_error.max(row.max_abs_diff);
                }
                // q4's ids are reported, not required (above).
                let excused = quant == Quant::Q4 && row.name.ends_with(".generated_ids");
                if !row.pass && !excused {
                    failures.push(format!("{} ({:e}) {}", row.name, row.max_abs_diff, row.note));
                }
            }
        }
        assert!(failures.is_empty(), "{quant} outside its bounds: {failures:#?}");
        assert!(
            hidden_error > 1e-3,
            "{quant}: hidden error {hidden_error:e} is the f32 model's, not a quantized one's"
        );
    }
}

#[test]
fn a_saved_quantized_checkpoint_loads_to_the_same_model() {
    // `dsocr quantize` stores what load-time quantization computes: loading the saved folder
    // (without --quant: the header says q8) gives every case's tensors bit for bit equal to
    // those of the float folder quantized at load. Asking for another format is refused, and a
    // quantized folder is not quantized again.
    let dir = fixture_dir();
    let fixture = Fixture::open(&dir).unwrap();
    let out = dsocr_tests::temp_dir("quantized-checkpoint");
    for (quant, lm_head) in [(Quant::Q8, true), (Quant::Q4, false)] {
        let saved = out.join(quant.name());
        let mut events = 0;
        let report = dsocr_model::save_quantized(&dir, quant, lm_head, &saved, |_| events += 1).unwrap();
        assert_eq!(events, report.quantized + report.copied);
        assert!(report.quantized > 10 && report.copied > 10, "{report:?}");
        assert!(saved.join("config.json").is_file() && saved.join("tokenizer.json").is_file());
        assert!(!saved.join("model.safetensors.part").exists());

        let from_saved = DeepseekOcr::load(&saved, &LoadOptions::new(Backend::Cpu, Precision::F32)).unwrap();
        assert_eq!(from_saved.quant, Some(quant));
        let mut options = LoadOptions::new(Backend::Cpu, Precision::F32);
        options.quant = Some(quant);
        options.quantize_lm_head = lm_head;
        let at_load = DeepseekOcr::load(&dir, &options).unwrap();
        for case in &fixture.cases {
            let (a, b) = (run_case(&from_saved, &fixture, case).unwrap(), run_case(&at_load, &fixture, case).unwrap());
            assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
            for (name, t) in &a.tensors {
                assert!(t.as_f64() == b.tensors[name].as_f64(), "{quant} {}: {name} differs", case.name);
            }
        }

        let mut other = LoadOptions::new(Backend::Cpu, Precision::F32);
        other.quant = Some(if quant == Quant::Q8 { Quant::Q4 } else { Quant::Q8 });
        let err = DeepseekOcr::load(&saved, &other).err().expect("another format is refused").to_string();
        assert!(err.contains(&format!("holds {quant} weights")), "{err}");
        let err = dsocr_model::save_quantized(&saved, quant, lm_head, &out.join("again"), |_| {}).unwrap_err();
        assert!(err.to_string().contains("already a"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
