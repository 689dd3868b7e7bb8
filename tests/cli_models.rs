//! `--model <repo id>` through the Hugging Face cache, and `dsocr models`.
//!
//! The network is never used: `HF_ENDPOINT` points at a closed local port and `HF_HOME` at a
//! folder of the test (see `cli_util::dsocr`).

#[path = "cli_util.rs"]
mod cli_util;

use std::path::Path;
use std::time::{Duration, Instant};

use cli_util::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const SHARD: &str = "model-00001-of-000001.safetensors";

/// A hub cache entry laid out like hf-hub / huggingface_hub write it (blobs, snapshot links,
/// refs/main), holding the fixture model with the real repo's index + single shard naming.
fn cache_repo(hub: &Path, repo: &str, with_shard: bool) {
    let root = hub.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();

    let weights = std::fs::read(model().join("model.safetensors")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&weights)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let map: serde_json::Map<String, serde_json::Value> = names.into_iter().map(|n| (n, SHARD.into())).collect();
    let index = serde_json::json!({ "metadata": { "total_size": weights.len() }, "weight_map": map });

    let mut files: Vec<(&str, Vec<u8>)> = vec![
        ("config.json", std::fs::read(model().join("config.json")).unwrap()),
        ("tokenizer.json", std::fs::read(model().join("tokenizer.json")).unwrap()),
        ("model.safetensors.index.json", serde_json::to_vec(&index).unwrap()),
    ];
    if with_shard {
        files.push((SHARD, weights));
    }
    for (i, (name, bytes)) in files.into_iter().enumerate() {
        let blob = root.join("blobs").join(format!("blob{i}"));
        std::fs::write(&blob, bytes).unwrap();
        link(&Path::new("../../blobs").join(format!("blob{i}")), &blob, &snapshot.join(name));
    }
}

#[cfg(unix)]
fn link(relative: &Path, _absolute: &Path, at: &Path) {
    std::os::unix::fs::symlink(relative, at).unwrap();
}

#[cfg(not(unix))]
fn link(_relative: &Path, absolute: &Path, at: &Path) {
    std::fs::copy(absolute, at).unwrap();
}

#[test]
fn missing_model_without_network_is_explained() {
    let dir = temp_dir("hub-offline");
    let start = Instant::now();
    let r = dsocr_run(&dir, &["ocr", s(&image("small.png")), "--max-new-tokens", "1"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(start.elapsed() < Duration::from_secs(60), "gave up quickly");
    let hub = dir.join("hf-home").join("hub");
    for needle in [
        "cannot download deepseek-ai/DeepSeek-OCR (config.json)",
        "the network is unavailable or http://127.0.0.1:9 cannot be reached",
        &format!("Nothing usable is cached in {}", hub.display()),
        "--model <folder>",
        "HF_ENDPOINT",
    ] {
        assert!(r.stderr.contains(needle), "expected {needle:?} in: {r}");
    }

    let mut cmd = dsocr(&dir.join("hf-home"));
    let r = run(cmd.env("HF_HUB_OFFLINE", "1").args(["ocr", s(&image("small.png"))]));
    assert_eq!(r.code, 1, "{r}");
    for needle in
        ["HF_HUB_OFFLINE is set", "deepseek-ai/DeepSeek-OCR", "missing config.json, tokenizer.json, model.safetensors"]
    {
        assert!(r.stderr.contains(needle), "expected {needle:?} in: {r}");
    }

    let r = dsocr_run(&dir, &["models"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("no models cached"), "{r}");
}

#[test]
fn cached_repo_is_used_without_network_and_listed() {
    let dir = temp_dir("hub-cached");
    let hub = dir.join("hf-home").join("hub");
    cache_repo(&hub, "test-org/tiny-ocr", true);
    cache_repo(&hub, "test-org/partial", false);
    let small = image("small.png");
    let args = [
        "ocr",
        s(&small),
        "--model",
        "test-org/tiny-ocr",
        "--task",
        "free",
        "--max-new-tokens",
        "8",
        "--no-repeat-guard",
    ];
    let golden = format!("{}\n", golden_text("gundam_small"));

    // Cached: no network needed (the endpoint is unreachable), with or without HF_HUB_OFFLINE.
    let r = dsocr_run(&dir, &args);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, golden);
    let r = run(dsocr(&dir.join("hf-home")).env("HF_HUB_OFFLINE", "1").args(args));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, golden);

    // A revision without its shard: the download of the missing file is what fails.
    let r = dsocr_run(&dir, &["ocr", s(&image("small.png")), "--model", "test-org/partial"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains(&format!("cannot download test-org/partial ({SHARD})")), "{r}");
    let r = run(dsocr(&dir.join("hf-home")).env("HF_HUB_OFFLINE", "1").args([
        "ocr",
        s(&image("small.png")),
        "--model",
        "test-org/partial",
    ]));
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains(&format!("missing {SHARD}")), "{r}");

    let r = dsocr_run(&dir, &["models"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains(&hub.display().to_string()), "{r}");
    let row = |repo: &str| {
        r.stdout.lines().find(|l| l.starts_with(repo)).unwrap_or_else(|| panic!("no {repo} row: {r}")).to_string()
    };
    let full = row("test-org/tiny-ocr");
    assert!(
        full.contains("main (0123456789ab)") && full.ends_with("complete") && !full.contains("incomplete"),
        "{full}"
    );
    let cols: Vec<&str> = full.split_whitespace().collect();
    assert_eq!(cols[3], "4", "4 files: {full}");
    assert!(row("test-org/partial").ends_with("incomplete"), "{r}");

    let r = dsocr_run(&dir, &["models", "--files"]);
    for f in ["config.json", "tokenizer.json", "model.safetensors.index.json", SHARD] {
        assert!(r.stdout.contains(&format!("    {f}  ")), "{f} listed: {r}");
    }
}

/// A minimal Hugging Face "resolve" endpoint serving the fixture as `test-org/tiny-ocr` (index +
/// single shard, like the real repo), with the headers hf-hub reads (ETag, X-Repo-Commit,
/// Content-Range). Returns its URL and a counter of file requests.
fn mock_hub() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let weights = std::fs::read(model().join("model.safetensors")).unwrap();
    let names: Vec<String> =
        safetensors::SafeTensors::deserialize(&weights).unwrap().names().into_iter().map(String::from).collect();
    let map: serde_json::Map<String, serde_json::Value> = names.into_iter().map(|n| (n, SHARD.into())).collect();
    let index = serde_json::to_vec(&serde_json::json!({ "weight_map": map })).unwrap();
    let files: Arc<Vec<(String, Vec<u8>)>> = Arc::new(vec![
        ("config.json".into(), std::fs::read(model().join("config.json")).unwrap()),
        ("tokenizer.json".into(), std::fs::read(model().join("tokenizer.json")).unwrap()),
        ("model.safetensors.index.json".into(), index),
        (SHARD.into(), weights),
    ]);
    let hits = Arc::new(AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (files, hits) = (files.clone(), counter.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut stream = stream;
                loop {
                    let mut request = String::new();
                    let mut range: Option<(usize, Option<usize>)> = None;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if request.is_empty() {
                            request = line.clone();
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                            let (a, b) = v.trim().split_once('-').unwrap();
                            range = Some((a.parse().unwrap(), b.parse().ok()));
                        }
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    let file = path
                        .strip_prefix("/test-org/tiny-ocr/resolve/main/")
                        .and_then(|f| files.iter().find(|(n, _)| n == f));
                    let response = match file {
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                        Some((name, body)) => {
                            hits.fetch_add(1, Ordering::SeqCst);
                            let (start, end) =
                                range.map_or((0, body.len() - 1), |(a, b)| (a, b.unwrap_or(body.len() - 1)));
                            let part = &body[start..=end.min(body.len() - 1)];
                            let mut r = format!(
                                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\
                                 ETag: \"etag-{name}\"\r\nX-Repo-Commit: {COMMIT}\r\n\r\n",
                                part.len(),
                                start + part.len() - 1,
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(part);
                            r
                        }
                    };
                    if stream.write_all(&response).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, hits)
}

#[test]
fn downloads_through_hf_endpoint_into_the_cache() {
    let dir = temp_dir("hub-download");
    let (url, hits) = mock_hub();
    let small = image("small.png");
    let args = [
        "ocr",
        s(&small),
        "--model",
        "test-org/tiny-ocr",
        "--task",
        "free",
        "--max-new-tokens",
        "8",
        "--no-repeat-guard",
    ];
    let hf_home = dir.join("hf-home");
    std::fs::create_dir_all(&hf_home).unwrap();
    let r = run(dsocr(&hf_home).env("HF_ENDPOINT", &url).args(args));
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(r.stdout, format!("{}\n", golden_text("gundam_small")));
    // config, tokenizer, index, shard: a metadata and a download request each.
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 8, "{r}");

    // Now cached: listed, and used with the network gone.
    let r = dsocr_run(&dir, &["models"]);
    let row = r.stdout.lines().find(|l| l.starts_with("test-org/tiny-ocr")).unwrap_or_else(|| panic!("{r}"));
    assert!(row.contains(&format!("main ({})", &COMMIT[..12])) && row.ends_with(" complete"), "{row}");
    let r = dsocr_run(&dir, &args);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 8, "no request once cached");
}
