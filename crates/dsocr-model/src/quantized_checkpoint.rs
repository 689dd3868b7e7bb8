//! A quantized checkpoint (`dsocr quantize`): a model folder whose decoder weights are stored
//! already quantized, so that loading it copies them instead of quantizing (docs/cli.md,
//! "dsocr quantize"; load times in docs/performance.md).
//!
//! The folder holds the source's other files (`config.json`, `tokenizer.json`, ...) and one
//! `model.safetensors`:
//! - every tensor that [`Decoder::keeps_in_layer_format`] names (the decoder's `*_proj.weight`
//!   matrices and, unless the lm_head stays float, `lm_head.weight`) is replaced by
//!   `<name>.qvalues` (U8 `[out, blocks · block_bytes]`) and `<name>.qscales` (F32
//!   `[out, blocks]`), the layout of [`dsocr_nn::quant`];
//! - every other tensor is copied as stored (dtype and bytes unchanged);
//! - the header's `__metadata__` says `dsocr.quant` (`q8` / `q4`), `dsocr.quant_lm_head`
//!   (`true` / `false`) and `dsocr.quant_block` (`32`).
//!
//! The file is written one tensor at a time (never a second copy of the model in memory) to
//! `model.safetensors.part`, renamed when complete.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use dsocr_decoder::{Decoder, Quant};
use dsocr_nn::host::HostMatrix;
use dsocr_nn::quant::{blocks_per_row, QSCALES, QVALUES};
use dsocr_weights::{SafetensorsFiles, WeightError};
use serde_json::{json, Value};

use crate::{ModelError, ModelFiles};

/// The header key holding the format of a quantized checkpoint.
pub const QUANT_KEY: &str = "dsocr.quant";
/// The header key saying whether the lm_head is quantized too.
pub const QUANT_LM_HEAD_KEY: &str = "dsocr.quant_lm_head";
/// The header key holding the block size (always [`dsocr_nn::quant::BLOCK`]).
pub const QUANT_BLOCK_KEY: &str = "dsocr.quant_block";

/// What [`save_quantized`] reports while it writes.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizeEvent {
    /// Tensor `index` of `total` is being written (quantized or copied).
    Tensor { name: String, index: usize, total: usize, quantized: bool },
}

/// What [`save_quantized`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeReport {
    pub weights: PathBuf,
    /// Matrices stored quantized.
    pub quantized: usize,
    /// Tensors copied as they were.
    pub copied: usize,
    /// Bytes of tensor data read and written.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The format of a quantized checkpoint, read from its header: `None` for a float checkpoint,
/// `(format, lm_head quantized)` for one written by [`save_quantized`].
pub fn stored_quant(files: &SafetensorsFiles) -> Result<Option<(Quant, bool)>, ModelError> {
    let Some(name) = files.metadata(QUANT_KEY) else { return Ok(None) };
    let path = files.paths().first().cloned().unwrap_or_default();
    let quant = name.parse::<Quant>().map_err(|e| ModelError::Config { path: path.clone(), message: e })?;
    let block = files.metadata(QUANT_BLOCK_KEY).unwrap_or("32");
    if block != dsocr_nn::quant::BLOCK.to_string() {
        return Err(ModelError::Config { path, message: format!("quantization blocks of {block} (dsocr reads 32)") });
    }
    Ok(Some((quant, files.metadata(QUANT_LM_HEAD_KEY) != Some("false"))))
}

/// One tensor of the output: where its bytes come from.
enum Entry {
    Copy { name: String, dtype: DType, shape: Vec<usize> },
    Quantize { name: String, rows: usize, cols: usize },
}

/// Writes the quantized checkpoint of the model folder `src` to `out` (module docs): the
/// decoder's matrices in `quant`, the lm_head too if `lm_head`.
pub fn save_quantized(
    src: &Path,
    quant: Quant,
    lm_head: bool,
    out: &Path,
    mut on_event: impl FnMut(QuantizeEvent),
) -> Result<QuantizeReport, ModelError> {
    ModelFiles::in_dir(src)?;
    let files = SafetensorsFiles::open(src)?;
    if let Some((stored, _)) = stored_quant(&files)? {
        return Err(ModelError::Input(format!(
            "{} is already a {stored} checkpoint: quantize the float model it came from",
            src.display()
        )));
    }
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Write { path: path.clone(), source }
    };
    std::fs::create_dir_all(out).map_err(write_err(out))?;
    if same_dir(src, out) {
        return Err(ModelError::Input(format!("--out {} is the source folder: choose another", out.display())));
    }

    let entries: Vec<Entry> = files
        .names()
        .into_iter()
        .map(|name| {
            // Every listed name has its info.
            let info = files.info(name).ok_or_else(|| WeightError::Missing { name: name.to_string() })?;
            let float = matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16);
            Ok(match info.shape[..] {
                [rows, cols] if float && Decoder::keeps_in_layer_format(name, lm_head) => {
                    Entry::Quantize { name: name.to_string(), rows, cols }
                }
                _ => Entry::Copy { name: name.to_string(), dtype: info.dtype, shape: info.shape.clone() },
            })
        })
        .collect::<Result<_, ModelError>>()?;
    if !entries.iter().any(|e| matches!(e, Entry::Quantize { .. })) {
        return Err(ModelError::Input(format!("{} has no decoder matrices to quantize", src.display())));
    }

    // The header: every tensor's dtype, shape and byte range, in the order written.
    let mut header = serde_json::Map::new();
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert(QUANT_KEY.to_string(), quant.name().to_string());
    metadata.insert(QUANT_LM_HEAD_KEY.to_string(), lm_head.to_string());
    metadata.insert(QUANT_BLOCK_KEY.to_string(), dsocr_nn::quant::BLOCK.to_string());
    header.insert("__metadata__".into(), json!(metadata));
    let mut offset = 0usize;
    let mut put = |name: String, dtype: &str, shape: Vec<usize>, len: usize| {
        header.insert(name, json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len] }));
        offset += len;
    };
    for entry in &entries {
        match entry {
            Entry::Copy { name, dtype, shape } => {
                let len = shape.iter().product::<usize>() * dtype.size();
                put(name.clone(), safetensors_dtype(*dtype), shape.clone(), len);
            }
            Entry::Quantize { name, rows, cols } => {
                let blocks = blocks_per_row(*cols);
                let prefix = name.strip_suffix("weight").unwrap_or(name);
                let values = blocks * quant.block_bytes();
                put(format!("{prefix}{QVALUES}"), "U8", vec![*rows, values], rows * values);
                put(format!("{prefix}{QSCALES}"), "F32", vec![*rows, blocks], rows * blocks * 4);
            }
        }
    }
    let mut header = serde_json::to_vec(&Value::Object(header)).map_err(|e| ModelError::Input(e.to_string()))?;
    // Pad with spaces so the data starts 8-byte aligned (as the safetensors format suggests).
    header.resize(header.len().div_ceil(8) * 8, b' ');

    let weights = out.join("model.safetensors");
    let part = out.join("model.safetensors.part");
    let written = write_tensors(&files, &entries, quant, &header, &part, &mut on_event).inspect_err(|_| {
        let _ = std::fs::remove_file(&part);
    })?;
    std::fs::rename(&part, &weights).map_err(write_err(&weights))?;
    copy_other_files(src, out)?;
    let quantized = entries.iter().filter(|e| matches!(e, Entry::Quantize { .. })).count();
    let bytes_in = files.names().iter().filter_map(|n| files.info(n)).map(|i| (i.end - i.start) as u64).sum();
    Ok(QuantizeReport { weights, quantized, copied: entries.len() - quantized, bytes_in, bytes_out: written })
}

/// The data of every entry after the header, one tensor in memory at a time; returns the bytes
/// of tensor data written.
fn write_tensors(
    files: &SafetensorsFiles,
    entries: &[Entry],
    quant: Quant,
    header: &[u8],
    part: &Path,
    on_event: &mut impl FnMut(QuantizeEvent),
) -> Result<u64, ModelError> {
    let io = |source| ModelError::Write { path: part.to_path_buf(), source };
    let mut w = BufWriter::with_capacity(8 << 20, std::fs::File::create(part).map_err(io)?);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(header).map_err(io)?;
    let mut written = 0u64;
    for (index, entry) in entries.iter().enumerate() {
        match entry {
            Entry::Copy { name, .. } => {
                on_event(QuantizeEvent::Tensor { name: name.clone(), index, total: entries.len(), quantized: false });
                let (_, bytes) = files.read(name)?;
                w.write_all(&bytes).map_err(io)?;
                written += bytes.len() as u64;
            }
            Entry::Quantize { name, rows, cols } => {
                on_event(QuantizeEvent::Tensor { name: name.clone(), index, total: entries.len(), quantized: true });
                let (info, raw) = files.read(name)?;
                let matrix = HostMatrix::quantize(quant, info.dtype, &raw, *rows, *cols);
                drop(raw);
                // A matrix just quantized has its parts.
                let (_, scales, values) =
                    matrix.quantized_parts().ok_or_else(|| ModelError::Input(format!("{name}: not quantized")))?;
                w.write_all(values).map_err(io)?;
                let scales: Vec<u8> = scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                w.write_all(&scales).map_err(io)?;
                written += (values.len() + scales.len()) as u64;
            }
        }
    }
    w.flush().map_err(io)?;
    Ok(written)
}

/// The safetensors name of a dtype the checkpoint reader accepts.
fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::I64 => "I64",
        DType::I32 => "I32",
        _ => "U8",
    }
}

/// Copies the source folder's files other than its weights (config, tokenizer, ...).
fn copy_other_files(src: &Path, out: &Path) -> Result<(), ModelError> {
    let read = |source| ModelError::Io { path: src.to_path_buf(), source };
    for entry in std::fs::read_dir(src).map_err(read)? {
        let path = entry.map_err(read)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let weights = name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json");
        if path.is_file() && !weights {
            let to = out.join(name);
            std::fs::copy(&path, &to).map_err(|source| ModelError::Write { path: to.clone(), source })?;
        }
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
