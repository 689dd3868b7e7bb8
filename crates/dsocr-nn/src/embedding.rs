//! Token embedding: rows of a `[vocab, d]` table picked by id.
//!
//! On the CPU backends a table whose checkpoint dtype differs from the model's (an f32 model
//! from a bf16 file) stays as the checkpoint's mapped bytes and only the looked-up rows are
//! converted: the f32 copy of DeepSeek-OCR's 129,280 × 1,280 table would take 662 MB of the
//! resident set for the few rows a page uses. The conversion is the one loading would have
//! done (`bytes_to_f32`, then the model dtype), so the rows are bit-identical. Everywhere else
//! the table is a Burn tensor and the lookup a `select`.

use burn::prelude::*;
use burn::tensor::DType;
use dsocr_weights::backend::is_host_device;
use dsocr_weights::{bytes_into_f32, VarBuilder, WeightError};

#[derive(Debug, Clone)]
pub struct Embedding {
    table: Table,
    vocab: usize,
    dim: usize,
}

#[derive(Debug, Clone)]
enum Table {
    Tensor(Tensor<2>),
    /// Checkpoint bytes of `file_dtype`, rows converted to `dtype` on `device` when looked up.
    Host {
        raw: bytes::Bytes,
        file_dtype: DType,
        device: Device,
        dtype: DType,
    },
}

impl Embedding {
    /// Loads `<prefix>.weight` `[vocab, dim]` (module docs: where it is kept).
    pub fn load(vb: &VarBuilder, vocab: usize, dim: usize) -> Result<Self, WeightError> {
        let host = is_host_device(vb.device());
        let table = match vb.get_raw("weight", &[vocab, dim]) {
            Ok((file_dtype, raw)) if host && file_dtype != vb.dtype() => {
                Table::Host { raw, file_dtype, device: vb.device().clone(), dtype: vb.dtype() }
            }
            _ => Table::Tensor(vb.get("weight", [vocab, dim])?),
        };
        Ok(Self { table, vocab, dim })
    }

    /// An embedding over an existing `[vocab, dim]` tensor.
    pub fn from_tensor(table: Tensor<2>) -> Self {
        let [vocab, dim] = table.dims();
        Self { table: Table::Tensor(table), vocab, dim }
    }

    /// Rows `ids` → `[ids.len(), dim]` in the model dtype. Every id must be `< vocab` (the
    /// decoder checks ids before it embeds them).
    pub fn forward(&self, ids: &[u32]) -> Tensor<2> {
        match &self.table {
            Table::Tensor(table) => {
                let device = table.device();
                let ids: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
                let n = ids.len();
                table.clone().select(0, Tensor::<1, Int>::from_data(TensorData::new(ids, [n]), &device))
            }
            Table::Host { raw, file_dtype, device, dtype } => {
                let row_bytes = self.dim * file_dtype.size();
                let mut values = vec![0f32; ids.len() * self.dim];
                for (out, &id) in values.chunks_exact_mut(self.dim).zip(ids) {
                    let start = id as usize * row_bytes;
                    bytes_into_f32(&raw[start..start + row_bytes], *file_dtype, out);
                }
                let data = TensorData::new(values, [ids.len(), self.dim]).convert_dtype(*dtype);
                Tensor::from_data(data, (device, *dtype))
            }
        }
    }

    /// [`forward`](Self::forward) of ids held in a device tensor `[n]` (a captured decode
    /// step's token). A host table reads them first: on the CPU backends that is a copy, not
    /// a device round trip.
    pub fn forward_ids(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        match &self.table {
            Table::Tensor(table) => table.clone().select(0, ids),
            Table::Host { .. } => {
                let ids: Vec<u32> = ids.into_data().iter::<i64>().map(|id| id as u32).collect();
                self.forward(&ids)
            }
        }
    }

    /// The whole table as a tensor in the model dtype (a tied lm_head); a host table is
    /// converted into a new tensor.
    pub fn table(&self) -> Tensor<2> {
        match &self.table {
            Table::Tensor(table) => table.clone(),
            Table::Host { .. } => self.forward(&(0..self.vocab as u32).collect::<Vec<_>>()),
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn device(&self) -> Device {
        match &self.table {
            Table::Tensor(table) => table.device(),
            Table::Host { device, .. } => device.clone(),
        }
    }

    /// The model dtype of the rows it returns.
    pub fn dtype(&self) -> DType {
        match &self.table {
            Table::Tensor(table) => table.dtype(),
            Table::Host { dtype, .. } => *dtype,
        }
    }

    /// Whether the table stays in the checkpoint's bytes (module docs).
    pub fn is_host(&self) -> bool {
        matches!(self.table, Table::Host { .. })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dsocr_weights::{Backend, Precision, SafetensorsFiles};

    use super::*;

    /// An f32 model over the fixture's f32 file keeps a tensor; the same table written as bf16
    /// and loaded in f32 stays host bytes and gives exactly the rows a converted tensor gives.
    #[test]
    fn host_rows_equal_the_converted_tensor_rows() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let (vocab, dim) = (50, 24);
        let values: Vec<f32> = (0..vocab * dim).map(|j| ((j * 7919 % 1013) as f32 - 506.0) / 97.0).collect();
        let bf16 = Tensor::<2>::from_data(TensorData::new(values, [vocab, dim]), &device).cast(DType::BF16);
        let dir = std::env::temp_dir().join(format!("dsocr-embedding-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("e.safetensors");
        let bytes = bf16.clone().into_data().as_bytes().to_vec();
        let mut header =
            format!(r#"{{"e.weight":{{"dtype":"BF16","shape":[{vocab},{dim}],"data_offsets":[0,{}]}}}}"#, bytes.len());
        // Padded like real files, so the data is aligned for the zero-copy tensor.
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.extend_from_slice(&bytes);
        std::fs::write(&path, file).unwrap();

        let files = Arc::new(SafetensorsFiles::open(&path).unwrap());
        let host = Embedding::load(&VarBuilder::new(files.clone(), &device, DType::F32).pp("e"), vocab, dim).unwrap();
        assert!(host.is_host());
        let tensor = Embedding::load(&VarBuilder::new(files, &device, DType::BF16).pp("e"), vocab, dim).unwrap();
        assert!(!tensor.is_host(), "same dtype as the file: a zero-copy tensor");

        let ids = [3u32, 0, 49, 3];
        let got: Vec<f32> = host.forward(&ids).into_data().iter::<f32>().collect();
        let want: Vec<f32> = tensor.forward(&ids).cast(DType::F32).into_data().iter::<f32>().collect();
        assert_eq!(got, want);
        let device_ids = Tensor::<1, Int>::from_data(TensorData::new(vec![49i64, 3], [2]), &device);
        let got: Vec<f32> = host.forward_ids(device_ids).into_data().iter::<f32>().collect();
        assert_eq!(got, want[2 * dim..].to_vec());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
