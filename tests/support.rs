//! Shared helpers of the workspace tests.

use std::path::{Path, PathBuf};

/// The reference fixture copied into the repository.
pub fn fixture_dir() -> PathBuf {
    dsocr_testkit::fixtures::reference_tiny()
}

/// The `dsocr` binary built by `cargo test --workspace` into the same target folder.
pub fn dsocr_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/dsocr
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary inside target/<profile>/deps");
    let bin = profile_dir.join(format!("dsocr{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the dsocr binary), or `cargo build -p dsocr-cli` first",
        bin.display()
    );
    bin
}

/// A fresh empty temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsocr-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
