//! `Linear` in PyTorch's layout.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;

use dsocr_weights::backend::is_host_device;
use dsocr_weights::{VarBuilder, WeightError};

use crate::host::{HostMatrix, DEQUANTIZE_CHUNK_ROWS, HOST_MATVEC_MAX_ROWS};
use crate::matvec::{matvec, MATVEC_MAX_ROWS};
use crate::quant::Quant;

/// How [`Linear::load_as`] keeps a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// The model's float precision. On the CPU backends a bf16 model keeps the checkpoint's
    /// bf16 bytes in place and multiplies with the CPU kernels of [`crate::host`]; everything
    /// else is a Burn tensor.
    #[default]
    Float,
    /// Quantized at load ([`crate::quant`]); CPU backends only for now.
    Quantized(Quant),
}

/// `y = x W^T + b` with `W` kept in PyTorch's `[out, in]` layout (a transposed view is fed to
/// the matmul, so loading never transposes on the host).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor<1>>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// `[in, out]` view of the stored `[out, in]` weight.
    Tensor(Tensor<2>),
    /// bf16 or quantized in host memory (CPU backends), with the device and dtype that the
    /// activations live in.
    Host { matrix: Arc<HostMatrix>, device: Device, dtype: DType },
}

impl Linear {
    /// Loads `<prefix>.weight` `[out, in]` and, if `bias`, `<prefix>.bias` `[out]`, as a Burn
    /// tensor in the builder's dtype.
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self, WeightError> {
        let weight = Weight::Tensor(vb.get("weight", [out_dim, in_dim])?.transpose());
        Ok(Self { weight, bias: Self::load_bias(vb, out_dim, bias)? })
    }

    /// [`load`](Self::load) with the weight kept as `format` says (the decoder's projections
    /// and experts). A quantized weight is read from the file, not through the mapping, and
    /// only its quantized form is kept.
    pub fn load_as(
        vb: &VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let host = is_host_device(vb.device());
        let matrix = match format {
            WeightFormat::Float if host && vb.dtype() == DType::BF16 => {
                let (dtype, raw) = vb.get_raw("weight", &[out_dim, in_dim])?;
                HostMatrix::bf16(dtype, raw, out_dim, in_dim)
            }
            WeightFormat::Float => return Self::load(vb, in_dim, out_dim, bias),
            WeightFormat::Quantized(quant) if host => {
                let (dtype, raw) = vb.read_raw("weight", &[out_dim, in_dim])?;
                HostMatrix::quantize(quant, dtype, &raw, out_dim, in_dim)
            }
            WeightFormat::Quantized(quant) => {
                return Err(WeightError::Unsupported {
                    name: vb.path("weight"),
                    reason: format!("{quant} weights run on the CPU backends (cpu, ndarray) only so far"),
                })
            }
        };
        let weight = Weight::Host { matrix: Arc::new(matrix), device: vb.device().clone(), dtype: vb.dtype() };
        Ok(Self { weight, bias: Self::load_bias(vb, out_dim, bias)? })
    }

    /// A Linear over an existing `[out, in]` weight tensor (e.g. tied embeddings).
    pub fn from_rows(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self { weight: Weight::Tensor(weight.transpose()), bias }
    }

    fn load_bias(vb: &VarBuilder, out_dim: usize, bias: bool) -> Result<Option<Tensor<1>>, WeightError> {
        Ok(if bias { Some(vb.get("bias", [out_dim])?) } else { None })
    }

    /// `x: [..., in]` → `[..., out]`, computed as ONE 2-D matmul `[rows, in] @ [in, out]`.
    ///
    /// Not `burn::tensor::module::linear`: for a batch-1 input such as a decode step's
    /// `[1, 1, in]` it keeps the batched form and reshapes the weight to `[1, in, out]`, and a
    /// reshape of our transposed weight view is a full copy (flex `Layout::reshape` refuses
    /// non-contiguous layouts): every call copied the whole weight (the 129280×1280 lm_head:
    /// ~0.9 s per decode step on 2 CPU cores in f32). A 2-D matmul reads the strided view as it is.
    ///
    /// On GPU backends a few rows (a decode step, up to [`MATVEC_MAX_ROWS`]) go through
    /// [`matvec`] over the contiguous rows of the stored `[out, in]` weight: a CubeCL kernel
    /// that reads the weight once at close to the memory bandwidth, where the untuned tiled
    /// matmul kernels (16-row tensor-core tiles) were measured up to 100× slower than the
    /// bandwidth bound for `m = 1` on the H100 (docs/performance.md).
    ///
    /// A host weight (bf16 or quantized, CPU backends) multiplies up to
    /// [`HOST_MATVEC_MAX_ROWS`] rows with [`HostMatrix::matvec`]; more rows with flex's f32
    /// matmul over slices of [`DEQUANTIZE_CHUNK_ROWS`] dequantized rows, so no full float copy
    /// of the weight is ever made. Sums run in f32; the result is cast to `x`'s dtype.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (d_in, d_out) = (self.in_dim(), self.out_dim());
        let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
        let x = x.reshape([rows, d_in]);
        let y = match &self.weight {
            Weight::Tensor(weight) if rows <= MATVEC_MAX_ROWS && !is_host_device(&x.device()) => {
                matvec(x, weight.clone().transpose())
            }
            Weight::Tensor(weight) => x.matmul(weight.clone()),
            Weight::Host { matrix, device, .. } => {
                let dtype = x.dtype();
                let x = x.cast(DType::F32);
                let y = if rows <= HOST_MATVEC_MAX_ROWS {
                    let xs: Vec<f32> = x.into_data().iter::<f32>().collect();
                    Tensor::from_data(TensorData::new(matrix.matvec(&xs, rows), [rows, d_out]), (device, DType::F32))
                } else {
                    let parts = (0..d_out)
                        .step_by(DEQUANTIZE_CHUNK_ROWS)
                        .map(|start| {
                            let n = DEQUANTIZE_CHUNK_ROWS.min(d_out - start);
                            let w = TensorData::new(matrix.dequantize_rows(start, n), [n, d_in]);
                            x.clone().matmul(Tensor::<2>::from_data(w, (device, DType::F32)).transpose())
                        })
                        .collect::<Vec<_>>();
                    Tensor::cat(parts, 1)
                };
                y.cast(dtype)
            }
        };
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }

    /// The stored `[out, in]` weight: a view of a tensor weight; a host weight dequantized to
    /// a new tensor in the model's dtype (a full copy, for packing experts on a device).
    pub fn rows(&self) -> Tensor<2> {
        match &self.weight {
            Weight::Tensor(weight) => weight.clone().transpose(),
            Weight::Host { matrix, device, dtype } => {
                let data = TensorData::new(matrix.dequantize(), [matrix.rows(), matrix.cols()]);
                Tensor::<2>::from_data(data, (device, DType::F32)).cast(*dtype)
            }
        }
    }

    /// The host form of the weight, if it has one.
    pub fn host_matrix(&self) -> Option<&HostMatrix> {
        match &self.weight {
            Weight::Tensor(_) => None,
            Weight::Host { matrix, .. } => Some(matrix),
        }
    }

    pub fn device(&self) -> Device {
        match &self.weight {
            Weight::Tensor(weight) => weight.device(),
            Weight::Host { device, .. } => device.clone(),
        }
    }

    pub fn in_dim(&self) -> usize {
        match &self.weight {
            Weight::Tensor(weight) => weight.dims()[0],
            Weight::Host { matrix, .. } => matrix.cols(),
        }
    }

    pub fn out_dim(&self) -> usize {
        match &self.weight {
            Weight::Tensor(weight) => weight.dims()[1],
            Weight::Host { matrix, .. } => matrix.rows(),
        }
    }
}
