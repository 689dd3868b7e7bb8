//! `dsocr models`: what the Hugging Face cache holds (repo, revision, files, size).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::HumanBytes;

use crate::progress::write_stdout;
use dsocr::hub::{self, index_shards, REQUIRED_FILES, SINGLE_WEIGHTS, WEIGHTS_INDEX};

#[derive(Args)]
pub struct ModelsArgs {
    /// Also list the files of each cached revision.
    #[arg(long)]
    files: bool,
}

/// One cached revision (a `snapshots/<commit>` folder) of a model repo.
#[derive(Debug)]
pub struct CachedRevision {
    pub repo: String,
    pub commit: String,
    /// Refs (branches, tags) pointing at this commit.
    pub refs: Vec<String>,
    /// Paths relative to the snapshot folder, with their sizes (`None`: dangling link).
    pub files: Vec<(String, Option<u64>)>,
    /// Whether config.json, tokenizer.json and all weight files are present.
    pub complete: bool,
    pub dir: PathBuf,
}

impl CachedRevision {
    pub fn size(&self) -> u64 {
        self.files.iter().filter_map(|(_, s)| *s).sum()
    }
}

/// Every model revision in the hub cache folder `cache`, sorted by repo then commit.
pub fn scan_cache(cache: &Path) -> Result<Vec<CachedRevision>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(cache) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("reading {}", cache.display())),
    };
    let mut repos: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("models--")?;
            let repo = rest.replacen("--", "/", 1);
            Some((repo, e.path()))
        })
        .collect();
    repos.sort();
    for (repo, dir) in repos {
        let refs = read_refs(&dir.join("refs"));
        let Ok(snapshots) = std::fs::read_dir(dir.join("snapshots")) else { continue };
        let mut commits: Vec<PathBuf> =
            snapshots.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
        commits.sort();
        for snap in commits {
            let commit = snap.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut files = Vec::new();
            for entry in walkdir::WalkDir::new(&snap).min_depth(1).sort_by_file_name() {
                let Ok(entry) = entry else { continue };
                if entry.file_type().is_dir() {
                    continue;
                }
                let rel = entry.path().strip_prefix(&snap).unwrap_or(entry.path()).to_string_lossy().into_owned();
                // Snapshot entries are links into blobs/: follow them for the size.
                let size = std::fs::metadata(entry.path()).ok().filter(|m| m.is_file()).map(|m| m.len());
                files.push((rel, size));
            }
            let mut revision_refs: Vec<String> =
                refs.iter().filter(|(_, c)| *c == commit).map(|(r, _)| r.clone()).collect();
            revision_refs.sort();
            out.push(CachedRevision {
                complete: is_complete(&snap),
                repo: repo.clone(),
                commit,
                refs: revision_refs,
                files,
                dir: snap,
            });
        }
    }
    Ok(out)
}

/// `refs/<name>` files (names may contain `/`), as (name, commit).
fn read_refs(dir: &Path) -> Vec<(String, String)> {
    walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| {
            let name = e.path().strip_prefix(dir).ok()?.to_string_lossy().into_owned();
            let commit = std::fs::read_to_string(e.path()).ok()?.trim().to_string();
            Some((name, commit))
        })
        .collect()
}

/// Whether a snapshot folder can be loaded as a model.
fn is_complete(snap: &Path) -> bool {
    if !REQUIRED_FILES.iter().all(|f| snap.join(f).is_file()) {
        return false;
    }
    if snap.join(SINGLE_WEIGHTS).is_file() {
        return true;
    }
    match index_shards(&snap.join(WEIGHTS_INDEX)) {
        Ok(shards) => !shards.is_empty() && shards.iter().all(|s| snap.join(s).is_file()),
        Err(_) => false,
    }
}

/// Runs the command; a fatal error is printed as `error: …` (with its causes, no backtrace)
/// and gives exit code 1.
pub fn run(args: ModelsArgs) -> Result<ExitCode> {
    match run_inner(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn run_inner(args: ModelsArgs) -> Result<ExitCode> {
    let cache = hub::cache_dir();
    let revisions = scan_cache(&cache)?;
    let mut text = format!("Hugging Face cache: {}\n", cache.display());
    if revisions.is_empty() {
        text += &format!("no models cached (download one with `dsocr ocr --model {} <image>`)\n", hub::DEFAULT_MODEL);
        write_stdout(&text, 0)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 5]> = revisions
        .iter()
        .map(|r| {
            let short = &r.commit[..r.commit.len().min(12)];
            let revision =
                if r.refs.is_empty() { short.to_string() } else { format!("{} ({short})", r.refs.join(", ")) };
            let status = if r.complete { "complete" } else { "incomplete" };
            [r.repo.clone(), revision, r.files.len().to_string(), HumanBytes(r.size()).to_string(), status.to_string()]
        })
        .collect();
    let header = ["REPO", "REVISION", "FILES", "SIZE", "STATUS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        )
    };
    text += &line(header);
    text.push('\n');
    for (row, rev) in rows.iter().zip(&revisions) {
        text += &line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        text.push('\n');
        if args.files {
            text += &format!("    {}\n", rev.dir.display());
            for (file, size) in &rev.files {
                let size = size.map(|s| HumanBytes(s).to_string()).unwrap_or_else(|| "missing blob".into());
                text += &format!("    {file}  {size}\n");
            }
        }
    }
    write_stdout(&text, 0)?;
    Ok(ExitCode::SUCCESS)
}
