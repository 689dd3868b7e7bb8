//! Helpers of the `dsocr` command-line tests (included with `#[path]` by each test target).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// A PDF of `pages.len()` pages of `width × height` points, each with a line of Helvetica text
/// and a filled rectangle (hand-written objects and cross-reference table).
pub fn make_pdf(pages: &[&str], width: u32, height: u32) -> Vec<u8> {
    let pages: Vec<Option<&str>> = pages.iter().map(|p| Some(*p)).collect();
    make_pdf_ext(&pages, width, height, false)
}

/// Like [`make_pdf`]; a `None` page has a content stream that cannot be decoded (an
/// `/ASCIIHexDecode` filter over non-hex data), and `encrypted` adds a standard security
/// handler whose user password is not empty (the file cannot be opened).
pub fn make_pdf_ext(pages: &[Option<&str>], width: u32, height: u32, encrypted: bool) -> Vec<u8> {
    let n = pages.len();
    let mut objects: Vec<Vec<u8>> = Vec::new();
    objects.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 2 * i)).collect();
    objects.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes());
    let font = 3 + 2 * n;
    for (i, text) in pages.iter().enumerate() {
        objects.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {width} {height}] \
                 /Resources << /Font << /F1 {font} 0 R >> >> /Contents {} 0 R >>",
                4 + 2 * i
            )
            .into_bytes(),
        );
        let (content, filter) = match text {
            Some(text) => (
                format!(
                    "BT /F1 18 Tf 20 {} Td ({text}) Tj ET 0 0 1 rg 20 20 {} {} re f",
                    height.saturating_sub(40),
                    width / 3,
                    height / 4
                ),
                "",
            ),
            None => ("ZZ-not-hex".to_string(), " /Filter /ASCIIHexDecode"),
        };
        let mut stream = format!("<< /Length {}{filter} >>\nstream\n", content.len()).into_bytes();
        stream.extend_from_slice(content.as_bytes());
        stream.extend_from_slice(b"\nendstream");
        objects.push(stream);
    }
    objects.push(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_vec());
    let mut trailer_extra = String::new();
    if encrypted {
        objects.push(
            format!(
                "<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <{}> /U <{}> >>",
                "ab".repeat(32),
                "cd".repeat(32)
            )
            .into_bytes(),
        );
        trailer_extra = format!(" /Encrypt {} 0 R /ID [<{1}> <{1}>]", objects.len(), "01".repeat(16));
    }

    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (k, obj) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", k + 1).as_bytes());
        out.extend_from_slice(obj);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R{trailer_extra} >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1)
            .as_bytes(),
    );
    out
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
    let cases = read_json(&fixture_dir().join("cases.json"));
    let case = cases["cases"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == case))
        .unwrap_or_else(|| panic!("no case {case}"));
    case["generated_text"].as_str().expect("generated_text").to_string()
}
