//! Helpers of the `dsocr` command-line tests (included with `#[path]` by each test target).

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use dsocr_testkit::fixtures::{make_pdf, make_pdf_ext};
pub use dsocr_tests::{dsocr_bin, fixture_dir, temp_dir};

/// The fixture's model folder.
pub fn model() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(fixture_dir)
}

/// One of the fixture's images.
pub fn image(name: &str) -> PathBuf {
    fixture_dir().join("images").join(name)
}

/// A `dsocr` command that cannot reach the network or a user's Hugging Face cache: the hub
/// variables point at `hf_home` (an empty folder unless the test fills it) and at a closed
/// local port.
pub fn dsocr(hf_home: &Path) -> Command {
    let mut cmd = Command::new(dsocr_bin());
    for var in ["HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_TOKEN"] {
        cmd.env_remove(var);
    }
    cmd.env("HF_HOME", hf_home).env("HF_ENDPOINT", "http://127.0.0.1:9").env("NO_COLOR", "1");
    cmd
}

/// Output of a finished command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.code, self.stdout, self.stderr)
    }
}

pub fn run(cmd: &mut Command) -> Run {
    let Output { status, stdout, stderr } = cmd.output().expect("run dsocr");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs `dsocr <args>` with an isolated hub environment under `dir`.
pub fn dsocr_run(dir: &Path, args: &[&str]) -> Run {
    let hf = dir.join("hf-home");
    std::fs::create_dir_all(&hf).expect("hf home");
    run(dsocr(&hf).args(args))
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}\n{text}", path.display()))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Every file under `dir` (relative paths, sorted).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The golden `generated_text` of a fixture case.
pub fn golden_text(case: &str) -> String {
    dsocr_testkit::fixtures::golden_text(case).unwrap_or_else(|| panic!("no case {case}"))
}
