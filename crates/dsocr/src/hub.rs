//! Model resolution: a local model folder, or a Hugging Face repo id resolved through the hub
//! cache (hf-hub, the same cache layout as Python's `huggingface_hub`).
//!
//! - Cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! - Server: `$HF_ENDPOINT` (a mirror), else `https://huggingface.co`; token: `$HF_TOKEN`, else
//!   the cache's `token` file.
//! - `$HF_HUB_OFFLINE=1`: never touch the network, use what is cached.
//! - Files already in the cache are used without any network access; only missing files are
//!   downloaded, reporting [`DownloadEvent`]s (the CLI draws them as progress bars).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// Errors of finding a model; the messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The model argument is not usable as given (a file, a bad repo id, an empty revision).
    #[error("{0}")]
    Argument(String),
    /// `HF_HUB_OFFLINE` is set and the cache lacks files.
    #[error("{0}")]
    Offline(String),
    /// A download failed (network, access, not found, another process holding the lock).
    #[error("{0}")]
    Download(String),
    /// The cached or downloaded safetensors index is unusable.
    #[error("{0}")]
    Index(String),
}

type Result<T, E = HubError> = std::result::Result<T, E>;

/// Progress of a model download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadEvent {
    /// `file` (`bytes` long) starts downloading.
    Started { file: String, bytes: u64 },
    /// `bytes` more bytes of the current file arrived.
    Progress { bytes: u64 },
    /// The current file is complete.
    Finished,
}

/// The model `dsocr` uses when `--model` is not given.
pub const DEFAULT_MODEL: &str = "deepseek-ai/DeepSeek-OCR";
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The files a model folder needs besides the weights.
pub const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
pub const SINGLE_WEIGHTS: &str = "model.safetensors";
pub const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A folder with config.json, tokenizer.json and safetensors weights, used as is.
    Local(PathBuf),
    /// A repo on the hub, at a revision (branch, tag or commit; default `main`).
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// Parses `--model`: an existing path is a folder; `owner/name` or `owner/name@revision`
    /// is a repo id; anything else is reported as a missing folder.
    pub fn parse(arg: &str) -> Result<Self> {
        let path = Path::new(arg);
        if path.exists() {
            if !path.is_dir() {
                return Err(HubError::Argument(format!(
                    "--model {arg}: this is a file; pass the model folder (with config.json, tokenizer.json \
                     and model.safetensors) or a repo id like {DEFAULT_MODEL}"
                )));
            }
            return Ok(ModelSource::Local(path.to_path_buf()));
        }
        let (repo, revision) = match arg.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, rev),
            Some(_) => return Err(HubError::Argument(format!("--model {arg}: empty revision after `@`"))),
            None => (arg, "main"),
        };
        if is_repo_id(repo) {
            return Ok(ModelSource::Hub { repo: repo.to_string(), revision: revision.to_string() });
        }
        Err(HubError::Argument(format!(
            "--model {arg}: no such folder, and not a Hugging Face repo id (owner/name, e.g. {DEFAULT_MODEL})"
        )))
    }
}

/// `owner/name` with the characters the hub allows.
fn is_repo_id(s: &str) -> bool {
    let valid = |part: &str| {
        !part.is_empty()
            && !part.starts_with(['.', '-'])
            && !part.contains("..")
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((owner, name)) if valid(owner) && valid(name))
}

/// The hub cache folder (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env_nonempty("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = env_nonempty("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = env_nonempty("HOME").or_else(|| env_nonempty("USERPROFILE")).unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("huggingface").join("hub")
}

pub fn endpoint() -> String {
    env_nonempty("HF_ENDPOINT").map(|e| e.trim_end_matches('/').to_string()).unwrap_or_else(|| DEFAULT_ENDPOINT.into())
}

/// `HF_HUB_OFFLINE` set to a true value (`1`, `true`, `yes`, `on`).
pub fn offline() -> bool {
    env_nonempty("HF_HUB_OFFLINE")
        .is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Resolves a model source to a folder `DeepseekOcr::load` can read, downloading missing
/// files of a hub repo (reported to `on_download`).
pub fn resolve_model(source: &ModelSource, mut on_download: impl FnMut(DownloadEvent)) -> Result<PathBuf> {
    match source {
        ModelSource::Local(dir) => Ok(dir.clone()),
        ModelSource::Hub { repo, revision } => resolve_hub(repo, revision, &mut on_download),
    }
}

/// Forwards hf-hub's download progress as [`DownloadEvent`]s.
struct Reporter<'a>(&'a mut dyn FnMut(DownloadEvent));

impl hf_hub::api::Progress for Reporter<'_> {
    fn init(&mut self, size: usize, filename: &str) {
        (self.0)(DownloadEvent::Started { file: filename.to_string(), bytes: size as u64 });
    }

    fn update(&mut self, size: usize) {
        (self.0)(DownloadEvent::Progress { bytes: size as u64 });
    }

    fn finish(&mut self) {
        (self.0)(DownloadEvent::Finished);
    }
}

fn resolve_hub(repo_id: &str, revision: &str, on_download: &mut dyn FnMut(DownloadEvent)) -> Result<PathBuf> {
    let cache_root = cache_dir();
    let cache = Cache::new(cache_root.clone());
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let cached = cache.repo(repo.clone());
    let label = if revision == "main" { repo_id.to_string() } else { format!("{repo_id}@{revision}") };

    // Everything cached: no network at all.
    if let Some(dir) = cached_snapshot(&cache, &repo) {
        return Ok(dir);
    }
    if offline() {
        let missing = missing_files(&cache, &repo);
        return Err(HubError::Offline(format!(
            "HF_HUB_OFFLINE is set and {label} is not (fully) in the cache {}: missing {}.\n\
             Unset HF_HUB_OFFLINE to download it, or pass --model <folder> with config.json, tokenizer.json \
             and the safetensors weights.",
            cache_root.display(),
            missing.join(", ")
        )));
    }

    let endpoint = endpoint();
    let token = env_nonempty("HF_TOKEN").or_else(|| cache.token());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(endpoint.clone())
        .with_token(token)
        .with_progress(false)
        .build()
        .map_err(|e| HubError::Download(format!("cannot set up the Hugging Face client: {e}")))?;
    let remote = api.repo(repo.clone());
    let mut fetch = |file: &str| -> Result<PathBuf, ApiError> {
        if let Some(path) = cached.get(file) {
            return Ok(path);
        }
        remote.download_with_progress(file, Reporter(&mut *on_download))
    };
    let explain = |file: &str, e: ApiError| HubError::Download(download_error(&label, file, &endpoint, &cache_root, e));

    let mut config = None;
    for file in REQUIRED_FILES {
        let path = fetch(file).map_err(|e| explain(file, e))?;
        config.get_or_insert(path);
    }
    match fetch(WEIGHTS_INDEX) {
        Ok(index) => {
            for shard in index_shards(&index)? {
                fetch(&shard).map_err(|e| explain(&shard, e))?;
            }
        }
        Err(e) if is_not_found(&e) => {
            fetch(SINGLE_WEIGHTS).map_err(|e| explain(SINGLE_WEIGHTS, e))?;
        }
        Err(e) => return Err(explain(WEIGHTS_INDEX, e)),
    }
    let config = config.ok_or_else(|| HubError::Download(format!("{label}: no config.json")))?;
    let dir = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HubError::Download(format!("{label}: the cached config.json has no folder")))?;
    Ok(dir)
}

/// The snapshot folder when config, tokenizer and all weight files of the revision are cached.
fn cached_snapshot(cache: &Cache, repo: &Repo) -> Option<PathBuf> {
    if !missing_files(cache, repo).is_empty() {
        return None;
    }
    cache.repo(repo.clone()).get("config.json")?.parent().map(Path::to_path_buf)
}

/// Files of the model missing from the cached revision (empty when it is complete).
fn missing_files(cache: &Cache, repo: &Repo) -> Vec<String> {
    let cached = cache.repo(repo.clone());
    let mut missing: Vec<String> =
        REQUIRED_FILES.iter().filter(|f| cached.get(f).is_none()).map(|f| f.to_string()).collect();
    if let Some(index) = cached.get(WEIGHTS_INDEX) {
        match index_shards(&index) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| cached.get(s).is_none())),
            Err(_) => missing.push(format!("{WEIGHTS_INDEX} (unreadable)")),
        }
    } else if cached.get(SINGLE_WEIGHTS).is_none() {
        missing.push(format!("{SINGLE_WEIGHTS} (or {WEIGHTS_INDEX} and its shards)"));
    }
    missing
}

/// Shard file names listed in a safetensors index (`weight_map` values), sorted, unique.
pub fn index_shards(index: &Path) -> Result<Vec<String>> {
    let bad = |what: String| HubError::Index(format!("{}{what}", index.display()));
    let text =
        std::fs::read_to_string(index).map_err(|e| HubError::Index(format!("reading {}: {e}", index.display())))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!(" is not valid JSON: {e}")))?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad(" has no `weight_map`".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for value in map.values() {
        let name = value.as_str().ok_or_else(|| bad(": `weight_map` values must be file names".into()))?;
        if name.contains('/') || name.contains('\\') || name.contains("..") {
            return Err(bad(format!(": shard name `{name}` must be a plain file name")));
        }
        if !shards.iter().any(|s| s == name) {
            shards.push(name.to_string());
        }
    }
    shards.sort();
    Ok(shards)
}

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(inner) if matches!(**inner, ureq::Error::Status(404, _)))
}

/// A download failure in words a user can act on.
fn download_error(label: &str, file: &str, endpoint: &str, cache_root: &Path, e: ApiError) -> String {
    let fallback = format!(
        "Pass --model <folder> with config.json, tokenizer.json and the safetensors weights, set HF_ENDPOINT \
         to a reachable mirror, or copy the model's cache folder from a connected machine into {}.",
        cache_root.display()
    );
    match &e {
        ApiError::RequestError(inner) => match &**inner {
            ureq::Error::Transport(t) => format!(
                "cannot download {label} ({file}): the network is unavailable or {endpoint} cannot be reached \
                 ({t}).\nNothing usable is cached in {}.\n{fallback}",
                cache_root.display()
            ),
            ureq::Error::Status(401 | 403, _) => format!(
                "cannot download {label} ({file}) from {endpoint}: access denied. The repo may be private or \
                 gated: set HF_TOKEN to a token with access."
            ),
            ureq::Error::Status(404, _) => {
                format!("cannot download {label} ({file}) from {endpoint}: not found. Check the repo id and revision.")
            }
            ureq::Error::Status(code, _) => {
                format!("cannot download {label} ({file}) from {endpoint}: HTTP status {code}.\n{fallback}")
            }
        },
        ApiError::LockAcquisition(path) => format!(
            "cannot download {label} ({file}): another process is downloading it ({} is locked); try again \
             when it is done",
            path.display()
        ),
        _ => format!("cannot download {label} ({file}) from {endpoint}: {e}.\n{fallback}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_folders() {
        assert_eq!(
            ModelSource::parse("deepseek-ai/DeepSeek-OCR").unwrap(),
            ModelSource::Hub { repo: "deepseek-ai/DeepSeek-OCR".into(), revision: "main".into() }
        );
        assert_eq!(
            ModelSource::parse("a/b@v1.0").unwrap(),
            ModelSource::Hub { repo: "a/b".into(), revision: "v1.0".into() }
        );
        assert!(matches!(ModelSource::parse(".").unwrap(), ModelSource::Local(_)));
        for bad in ["./nope/dsocr-missing", "/nope/dsocr-missing", "a/b/c", "a", "../x", "a/b@"] {
            assert!(ModelSource::parse(bad).is_err(), "{bad}");
        }
    }
}
