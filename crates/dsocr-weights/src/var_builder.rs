//! Prefix-scoped access to checkpoint tensors, creating Burn tensors with shape checks.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};

use crate::safetensors_files::bytes_to_f32;
use crate::{SafetensorsFiles, WeightError};

/// A view on a checkpoint under a name prefix, bound to a device and a float dtype.
///
/// ```ignore
/// let vb = VarBuilder::new(files, &device, DType::F32).pp("model.sam_model");
/// let w = vb.pp("blocks").pp(0).pp("norm1").get("weight", [768])?; // model.sam_model.blocks.0.norm1.weight
/// ```
#[derive(Clone)]
pub struct VarBuilder {
    files: Arc<SafetensorsFiles>,
    prefix: String,
    device: Device,
    dtype: DType,
}

impl VarBuilder {
    pub fn new(files: Arc<SafetensorsFiles>, device: &Device, dtype: DType) -> Self {
        Self { files, prefix: String::new(), device: device.clone(), dtype }
    }

    /// The same view one level deeper: `pp("blocks").pp(3)` reads `…blocks.3.*`.
    pub fn pp(&self, name: impl ToString) -> Self {
        let name = name.to_string();
        let prefix = if self.prefix.is_empty() { name } else { format!("{}.{}", self.prefix, name) };
        Self { prefix, ..self.clone() }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The float dtype tensors are created in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The same view with another float dtype (e.g. an f32 router in a bf16 model).
    pub fn with_dtype(&self, dtype: DType) -> Self {
        Self { dtype, ..self.clone() }
    }

    pub fn files(&self) -> &Arc<SafetensorsFiles> {
        &self.files
    }

    /// Full checkpoint name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.files.contains(&self.path(name))
    }

    /// The checkpoint shape of `name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.files.info(&self.path(name)).map(|i| i.shape.clone())
    }

    /// A float tensor of exactly `shape`, in this builder's dtype, on its device.
    ///
    /// When the file already stores that dtype the bytes are shared zero-copy with the memory
    /// map; otherwise the one tensor is converted on the host (never the whole checkpoint).
    pub fn get<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, WeightError> {
        let full = self.path(name);
        // A slice of the mapping: no page is touched until it is read.
        let (info, mapped) = self.files.raw(&full)?;
        Self::check_float(&full, info, &shape)?;
        let data = if info.dtype == self.dtype && mapped.len() % info.dtype.size() == 0 {
            TensorData::from_bytes(Bytes::from_shared(mapped, AllocationProperty::File), shape, info.dtype)
        } else {
            // Read, not mapped: the file's pages stay out of the resident set (an f32 model
            // from a bf16 file would otherwise hold both: 20 GB instead of 13 at full size).
            let (_, raw) = self.files.read(&full)?;
            TensorData::new(bytes_to_f32(&raw, info.dtype), shape).convert_dtype(self.dtype)
        };
        Ok(Tensor::from_data(data, (&self.device, self.dtype)))
    }

    /// The checkpoint bytes of float tensor `name` (shape checked) and their dtype, shared
    /// zero-copy with the memory map: for host-side weight formats that read the mapped file
    /// directly (dsocr-nn's CPU matrix-vector products).
    pub fn get_raw(&self, name: &str, shape: &[usize]) -> Result<(DType, bytes::Bytes), WeightError> {
        let full = self.path(name);
        let (info, raw) = self.files.raw(&full)?;
        Self::check_float(&full, info, shape)?;
        Ok((info.dtype, raw))
    }

    /// Like [`get_raw`](Self::get_raw) but a copy read from the file, so the mapped pages do
    /// not enter this process's resident set (weights converted once at load, e.g. quantized).
    pub fn read_raw(&self, name: &str, shape: &[usize]) -> Result<(DType, Vec<u8>), WeightError> {
        let full = self.path(name);
        let (info, raw) = self.files.read(&full)?;
        Self::check_float(&full, info, shape)?;
        Ok((info.dtype, raw))
    }

    /// A copy of `name`'s raw bytes (read from the file, like [`read_raw`](Self::read_raw)),
    /// checked to have `dtype` and `shape`: tensors that are not floats, such as the packed
    /// values of a quantized checkpoint.
    pub fn read_bytes(&self, name: &str, dtype: DType, shape: &[usize]) -> Result<Vec<u8>, WeightError> {
        let full = self.path(name);
        let (info, raw) = self.files.read(&full)?;
        if info.shape != shape {
            return Err(WeightError::Shape { name: full, expected: shape.to_vec(), found: info.shape.clone() });
        }
        if info.dtype != dtype {
            return Err(WeightError::Dtype { name: full, dtype: format!("{:?} (expected {dtype:?})", info.dtype) });
        }
        Ok(raw)
    }

    fn check_float(full: &str, info: &crate::TensorInfo, shape: &[usize]) -> Result<(), WeightError> {
        if info.shape != shape {
            return Err(WeightError::Shape {
                name: full.to_string(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        if !matches!(info.dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(WeightError::Dtype { name: full.to_string(), dtype: format!("{:?}", info.dtype) });
        }
        Ok(())
    }

    /// A tensor read to the host as f32, with its shape checked (for load-time host work such as
    /// resizing position tables).
    pub fn get_host_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let full = self.path(name);
        let (found, values) = self.files.to_f32_vec(&full)?;
        if found != shape {
            return Err(WeightError::Shape { name: full, expected: shape.to_vec(), found });
        }
        Ok(values)
    }

    /// Creates a float tensor from host values in this builder's dtype and device.
    pub fn from_host<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape).convert_dtype(self.dtype), (&self.device, self.dtype))
    }
}
