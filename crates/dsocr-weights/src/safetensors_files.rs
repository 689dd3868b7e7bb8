//! Memory-mapped safetensors checkpoints, one file or sharded.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::WeightError;

/// Where one tensor lives: which mapped file, at which byte range, with which dtype and shape.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub file: usize,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range inside the mapped file.
    pub start: usize,
    pub end: usize,
}

/// A set of memory-mapped safetensors files with a name → tensor index over all of them.
///
/// Nothing is copied when the files are opened: tensors are read (or, when the dtype already
/// matches, shared zero-copy with the page cache) only when a model asks for them.
pub struct SafetensorsFiles {
    paths: Vec<PathBuf>,
    /// The open files, for reads that must not map pages into the process ([`Self::read`]).
    handles: Vec<File>,
    maps: Vec<bytes::Bytes>,
    index: HashMap<String, TensorInfo>,
    /// The `__metadata__` entries of all files (a later file's value wins on a clash).
    metadata: HashMap<String, String>,
}

impl SafetensorsFiles {
    /// Opens a checkpoint: a `.safetensors` file, a `model.safetensors.index.json`, or a model
    /// folder holding `model.safetensors`, `model.safetensors.index.json` or exactly one
    /// `*.safetensors` file (the original DeepSeek-OCR repo ships `model-00001-of-000001.safetensors`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightError> {
        let path = path.as_ref();
        if path.is_dir() {
            let single = path.join("model.safetensors");
            let index = path.join("model.safetensors.index.json");
            if single.is_file() {
                return Self::open_files(&[single]);
            }
            if index.is_file() {
                return Self::open_index(&index);
            }
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|source| WeightError::Io { path: path.to_path_buf(), source })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(WeightError::NoWeights { dir: path.to_path_buf() });
            }
            return Self::open_files(&found);
        }
        if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".index.json")) {
            return Self::open_index(path);
        }
        Self::open_files(&[path.to_path_buf()])
    }

    /// Opens the shards listed in a `*.safetensors.index.json` (`weight_map`: name → file).
    pub fn open_index(index_path: &Path) -> Result<Self, WeightError> {
        let text = std::fs::read_to_string(index_path)
            .map_err(|source| WeightError::Io { path: index_path.to_path_buf(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| WeightError::Index { path: index_path.to_path_buf(), message: e.to_string() })?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| WeightError::Index {
            path: index_path.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shards: Vec<PathBuf> = Vec::new();
        for value in map.values() {
            let name = value.as_str().ok_or_else(|| WeightError::Index {
                path: index_path.to_path_buf(),
                message: "`weight_map` values must be file names".into(),
            })?;
            if name.contains('/') || name.contains('\\') || name.contains("..") {
                return Err(WeightError::Index {
                    path: index_path.to_path_buf(),
                    message: format!("shard name `{name}` must be a plain file name"),
                });
            }
            let shard = dir.join(name);
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        shards.sort();
        let files = Self::open_files(&shards)?;
        for name in map.keys() {
            if !files.index.contains_key(name) {
                return Err(WeightError::Index {
                    path: index_path.to_path_buf(),
                    message: format!("`{name}` is listed but absent from its shard"),
                });
            }
        }
        Ok(files)
    }

    fn open_files(paths: &[PathBuf]) -> Result<Self, WeightError> {
        let mut maps = Vec::with_capacity(paths.len());
        let mut handles = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        let mut header_metadata = HashMap::new();
        for (file, path) in paths.iter().enumerate() {
            let io = |source| WeightError::Io { path: path.clone(), source };
            let handle = File::open(path).map_err(io)?;
            // SAFETY: the map is read-only; a checkpoint modified while we run is a user error
            // that at worst gives wrong numbers, as with every mmap-based loader.
            let mmap = unsafe { Mmap::map(&handle) }.map_err(io)?;
            let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| WeightError::Format { path: path.clone(), message: e.to_string() })?;
            let data_start = 8 + header_len;
            if let Some(entries) = metadata.metadata() {
                header_metadata.extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            for (name, info) in metadata.tensors() {
                let dtype = match info.dtype {
                    Dtype::F32 => DType::F32,
                    Dtype::F16 => DType::F16,
                    Dtype::BF16 => DType::BF16,
                    Dtype::I64 => DType::I64,
                    Dtype::I32 => DType::I32,
                    // Packed quantized values (`dsocr quantize`).
                    Dtype::U8 => DType::U8,
                    other => {
                        return Err(WeightError::Dtype { name, dtype: format!("{other:?}") });
                    }
                };
                let (start, end) = info.data_offsets;
                index.insert(
                    name,
                    TensorInfo {
                        file,
                        dtype,
                        shape: info.shape.clone(),
                        start: data_start + start,
                        end: data_start + end,
                    },
                );
            }
            maps.push(bytes::Bytes::from_owner(mmap));
            handles.push(handle);
        }
        Ok(Self { paths: paths.to_vec(), handles, maps, index, metadata: header_metadata })
    }

    /// A `__metadata__` entry of the header (e.g. `dsocr.quant` of a quantized checkpoint).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// The files that were mapped.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The raw little-endian bytes of a tensor, shared with the mapping (no copy).
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, bytes::Bytes), WeightError> {
        let info = self.index.get(name).ok_or_else(|| WeightError::Missing { name: name.to_string() })?;
        Ok((info, self.maps[info.file].slice(info.start..info.end)))
    }

    /// A copy of a tensor's raw bytes, read from the file rather than through the mapping.
    ///
    /// For tensors that are converted once at load and never read again (quantized weights):
    /// a read through the mapping would leave the checkpoint's pages in this process's resident
    /// set (they are counted in RSS until the kernel reclaims them); a read from the file only
    /// goes through the page cache.
    pub fn read(&self, name: &str) -> Result<(&TensorInfo, Vec<u8>), WeightError> {
        let info = self.index.get(name).ok_or_else(|| WeightError::Missing { name: name.to_string() })?;
        let mut buffer = vec![0u8; info.end - info.start];
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.handles[info.file]
                .read_exact_at(&mut buffer, info.start as u64)
                .map_err(|source| WeightError::Io { path: self.paths[info.file].clone(), source })?;
        }
        #[cfg(not(unix))]
        buffer.copy_from_slice(&self.maps[info.file][info.start..info.end]);
        Ok((info, buffer))
    }

    /// A tensor converted to f32 on the host (for host-side work such as position-table resizing).
    pub fn to_f32_vec(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), WeightError> {
        let (info, bytes) = self.raw(name)?;
        Ok((info.shape.clone(), bytes_to_f32(&bytes, info.dtype)))
    }
}

/// Decodes little-endian float bytes of the given dtype to f32.
/// [`bytes_to_f32`] of a float tensor (F32, BF16, F16) into an existing buffer of
/// `bytes.len() / dtype.size()` values (no allocation: load-time conversions row by row).
/// Other dtypes leave `out` as it is.
pub fn bytes_into_f32(bytes: &[u8], dtype: DType, out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*c);
            }
        }
        DType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = f32::from_bits((u16::from_le_bytes(*c) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.as_chunks::<2>().0) {
                *o = half::f16::from_bits(u16::from_le_bytes(*c)).to_f32();
            }
        }
        _ => {}
    }
}

pub fn bytes_to_f32(bytes: &[u8], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => {
            let mut out = vec![0f32; bytes.len() / dtype.size()];
            bytes_into_f32(bytes, dtype, &mut out);
            out
        }
        DType::I64 => {
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
        }
        DType::I32 => bytes.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect(),
        _ => Vec::new(),
    }
}
