//! The `dsocr` binary's command surface. (Having an integration test here also makes
//! `cargo test --workspace` build the binary that the workspace tests in `tests/` drive.)

use std::process::Command;

fn dsocr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dsocr"))
}

#[test]
fn help_lists_every_subcommand() {
    let out = dsocr().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["ocr", "render", "models", "bench", "debug"] {
        assert!(text.contains(cmd), "`{cmd}` missing from --help:\n{text}");
    }
}

#[test]
fn an_unknown_backend_is_a_clear_error() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference-tiny");
    let out = dsocr().args(["debug", "parity", "--device", "tpu", "--fixture", fixture]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tpu") && err.contains("cpu"), "{err}");
}

#[test]
fn a_backend_not_compiled_in_names_the_feature() {
    if cfg!(feature = "cuda") {
        return;
    }
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/reference-tiny");
    let out = dsocr().args(["debug", "parity", "--device", "cuda", "--fixture", fixture]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features cuda"), "{err}");
}
