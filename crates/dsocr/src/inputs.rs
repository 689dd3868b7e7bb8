//! Inputs: image files, PDFs, and folders searched recursively; telling an image from a PDF.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Extensions picked up inside folders (ASCII case-insensitive). Files named on the command
/// line are taken whatever their extension.
pub const IMAGE_EXTENSIONS: [&str; 14] =
    ["png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp", "gif", "ppm", "pgm", "pbm", "pnm", "tga", "ico"];
pub const PDF_EXTENSION: &str = "pdf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Image,
    Pdf,
}

/// One file to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub kind: InputKind,
}

/// An input that could not be used (missing path, unreadable folder, empty folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    pub path: PathBuf,
    pub reason: String,
}

/// Expands the command-line inputs, in order: a file is taken as is; a folder contributes its
/// images and PDFs, recursively, sorted by name (hidden entries and the folder `exclude`, the
/// output folder, skipped). Each file appears once, at its first occurrence.
pub fn expand(inputs: &[PathBuf], exclude: Option<&Path>) -> (Vec<InputFile>, Vec<InputError>) {
    let exclude = exclude.and_then(|p| p.canonicalize().ok());
    let mut files: Vec<InputFile> = Vec::new();
    let mut errors = Vec::new();
    let push = |file: InputFile, files: &mut Vec<InputFile>| {
        if !files.iter().any(|f| f.path == file.path) {
            files.push(file);
        }
    };
    for input in inputs {
        let meta = match std::fs::metadata(input) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                errors.push(InputError { path: input.clone(), reason: "no such file or folder".into() });
                continue;
            }
            Err(e) => {
                errors.push(InputError { path: input.clone(), reason: e.to_string() });
                continue;
            }
        };
        if meta.is_file() {
            push(InputFile { path: input.clone(), kind: sniff_kind(input) }, &mut files);
            continue;
        }
        if !meta.is_dir() {
            errors.push(InputError { path: input.clone(), reason: "not a regular file or folder".into() });
            continue;
        }
        let before = files.len();
        let walker =
            walkdir::WalkDir::new(input).follow_links(true).sort_by_file_name().into_iter().filter_entry(|e| {
                e.depth() == 0
                    || (!is_hidden(e.file_name())
                        && !exclude.as_ref().is_some_and(|x| e.path().canonicalize().is_ok_and(|p| p == *x)))
            });
        for entry in walker {
            match entry {
                Ok(entry) if entry.file_type().is_file() => {
                    if let Some(kind) = kind_from_extension(entry.path()) {
                        push(InputFile { path: entry.into_path(), kind }, &mut files);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let path = e.path().map(Path::to_path_buf).unwrap_or_else(|| input.clone());
                    let reason = match e.io_error() {
                        Some(io) => io.to_string(),
                        None => e.to_string(),
                    };
                    errors.push(InputError { path, reason });
                }
            }
        }
        if files.len() == before {
            errors.push(InputError {
                path: input.clone(),
                reason: format!(
                    "no images or PDFs in this folder (looked for .{} and .{PDF_EXTENSION})",
                    IMAGE_EXTENSIONS.join(", .")
                ),
            });
        }
    }
    (files, errors)
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Image or PDF by extension; `None` for other files.
pub fn kind_from_extension(path: &Path) -> Option<InputKind> {
    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    if ext == PDF_EXTENSION {
        Some(InputKind::Pdf)
    } else if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        Some(InputKind::Image)
    } else {
        None
    }
}

/// A file named on the command line: a PDF when its first KiB contains `%PDF-` (readers accept
/// leading junk) or its extension is `.pdf`; otherwise an image (the decoder reports what it is
/// not).
pub fn sniff_kind(path: &Path) -> InputKind {
    let mut head = Vec::with_capacity(1024);
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(1024).read_to_end(&mut head);
    }
    sniff_bytes(&head, path)
}

/// [`sniff_kind`] of a file's bytes in memory, `name` standing for its path.
pub fn sniff_bytes(bytes: &[u8], name: &Path) -> InputKind {
    let head = &bytes[..bytes.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") || kind_from_extension(name) == Some(InputKind::Pdf) {
        InputKind::Pdf
    } else {
        InputKind::Image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_walk_is_sorted_recursive_and_filtered() {
        let dir = std::env::temp_dir().join(format!("dsocr-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("b/sub")).unwrap();
        std::fs::create_dir_all(dir.join(".hidden")).unwrap();
        for f in ["c.PNG", "a.pdf", "b/sub/z.jpg", "b/x.txt", ".hidden/h.png", "b/y.tiff"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let empty = dir.join("b/empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(dir.join("out/images")).unwrap();
        std::fs::write(dir.join("out/images/o.jpg"), b"x").unwrap();
        let (files, errors) =
            expand(&[dir.clone(), dir.join("a.pdf"), dir.join("missing.png"), empty.clone()], Some(&dir.join("out")));
        let names: Vec<String> =
            files.iter().map(|f| f.path.strip_prefix(&dir).unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.pdf", "b/sub/z.jpg", "b/y.tiff", "c.PNG"]);
        assert_eq!(files[0].kind, InputKind::Pdf);
        assert_eq!(files[3].kind, InputKind::Image);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert_eq!(errors[0].path, dir.join("missing.png"));
        assert_eq!(errors[1].path, empty);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
