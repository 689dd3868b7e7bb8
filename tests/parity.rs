//! The whole pipeline against the upstream reference: every case of the fixture, from its
//! images, every golden tensor (views, SAM, CLIP, vision embeddings, prompt ids, hidden states,
//! logits, generated ids). The numbers come from the upstream PyTorch code (fixture README).

use std::collections::BTreeSet;

use dsocr_model::parity::{compare, run_case, Fixture, Tolerances};
use dsocr_model::{Backend, DeepseekOcr, Precision};
use dsocr_tests::fixture_dir;

#[test]
fn every_case_matches_every_golden_tensor_on_cpu_f32() {
    let dir = fixture_dir();
    let fixture = Fixture::open(&dir).unwrap();
    let golden = fixture.golden().unwrap();
    let model = DeepseekOcr::load(&dir, Backend::Cpu, Precision::F32).unwrap();
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
    let model = DeepseekOcr::load(&dir, Backend::Cpu, Precision::F32).unwrap();
    let mut case = fixture.case("small_page").unwrap().clone();
    let run = run_case(&model, &fixture, &case).unwrap();
    case.name = "tiny_page".into();
    let mut renamed = run;
    renamed.tensors = renamed.tensors.into_iter().map(|(k, v)| (k.replacen("small_page", "tiny_page", 1), v)).collect();
    let rows = compare(&renamed, &case, &golden, &Tolerances::for_precision(Precision::F32));
    assert!(rows.iter().any(|r| !r.pass), "comparing small_page outputs with tiny_page goldens must fail");
}
