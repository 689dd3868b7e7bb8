//! `Linear` in PyTorch's layout.

use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;

use dsocr_weights::backend::is_host_device;
use dsocr_weights::{VarBuilder, WeightError};

use crate::gemm;
use crate::host::{matvec_many, HostMatrix, DEQUANTIZE_CHUNK_ROWS, HOST_MATVEC_MAX_ROWS};
use crate::matvec::{matvec, MATVEC_MAX_ROWS};
use crate::quant::Quant;
use crate::quantized::{quant_matvec, QuantMatrix};

/// How [`Linear::load_as`] keeps a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// A Burn tensor in the model's dtype.
    #[default]
    Float,
    /// bf16 in host memory, multiplied by the CPU kernels of [`crate::host`] whatever the
    /// activations' dtype (CPU backends; a tensor in the model's dtype elsewhere): copied into
    /// huge-page memory ([`crate::arena`]), or with `mapped` multiplied where the checkpoint is
    /// mapped (no copy, the smallest resident set, at the cost of a TLB miss per 4 KiB page
    /// streamed: docs/performance.md).
    Bf16 { mapped: bool },
    /// Quantized at load ([`crate::quant`]): in host memory on the CPU backends, multiplied by
    /// [`crate::host`]; on a GPU device as a [`QuantMatrix`], multiplied by [`quant_matvec`].
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
// One value per projection, built once at load: boxing the tensor variant would add an
// indirection to every GPU product.
#[allow(clippy::large_enum_variant)]
enum Weight {
    /// `[in, out]` view of the stored `[out, in]` weight.
    Tensor(Tensor<2>),
    /// bf16 or quantized in host memory (CPU backends), with the device and dtype that the
    /// activations live in.
    Host { matrix: Arc<HostMatrix>, device: Device, dtype: DType },
    /// Quantized on a GPU device; `dtype`: the activations'.
    Quantized { matrix: QuantMatrix, dtype: DType },
}

impl Linear {
    /// Loads `<prefix>.weight` `[out, in]` and, if `bias`, `<prefix>.bias` `[out]`, as a Burn
    /// tensor in the builder's dtype.
    pub fn load(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self, WeightError> {
        let weight = Weight::Tensor(vb.get("weight", [out_dim, in_dim])?.transpose());
        Ok(Self { weight, bias: Self::load_bias(vb, out_dim, bias)? })
    }

    /// [`load`](Self::load) with the weight kept as `format` says (the decoder's projections
    /// and experts). A copied or quantized weight is read from the file, not through the
    /// mapping, and only its converted form is kept.
    pub fn load_as(
        vb: &VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        format: WeightFormat,
    ) -> Result<Self, WeightError> {
        let host = is_host_device(vb.device());
        let matrix = match format {
            WeightFormat::Bf16 { mapped: false } if host => {
                let (dtype, raw) = vb.read_raw("weight", &[out_dim, in_dim])?;
                HostMatrix::bf16_copied(dtype, &raw, out_dim, in_dim)
            }
            WeightFormat::Bf16 { mapped: true } if host => {
                let (dtype, raw) = vb.get_raw("weight", &[out_dim, in_dim])?;
                HostMatrix::bf16(dtype, raw, out_dim, in_dim)
            }
            WeightFormat::Float | WeightFormat::Bf16 { .. } => return Self::load(vb, in_dim, out_dim, bias),
            WeightFormat::Quantized(quant) if host => Self::quantized_host(vb, quant, out_dim, in_dim)?,
            WeightFormat::Quantized(quant) => {
                // Quantized on the host (huge-page memory, freed once uploaded), then uploaded.
                let host = Self::quantized_host(vb, quant, out_dim, in_dim)?;
                let matrix = QuantMatrix::from_host(&host, vb.device()).ok_or_else(|| WeightError::Unsupported {
                    name: vb.path("weight"),
                    reason: format!("{quant} quantization gave no quantized matrix"),
                })?;
                let weight = Weight::Quantized { matrix, dtype: vb.dtype() };
                return Ok(Self { weight, bias: Self::load_bias(vb, out_dim, bias)? });
            }
        };
        let weight = Weight::Host { matrix: Arc::new(matrix), device: vb.device().clone(), dtype: vb.dtype() };
        Ok(Self { weight, bias: Self::load_bias(vb, out_dim, bias)? })
    }

    /// `<prefix>.weight` quantized on the host: read as stored by a quantized checkpoint
    /// ([`crate::quant::QVALUES`], [`crate::quant::QSCALES`]), or quantized from the float
    /// weight.
    fn quantized_host(vb: &VarBuilder, quant: Quant, rows: usize, cols: usize) -> Result<HostMatrix, WeightError> {
        if !vb.contains(crate::quant::QVALUES) {
            let (dtype, raw) = vb.read_raw("weight", &[rows, cols])?;
            return Ok(HostMatrix::quantize(quant, dtype, &raw, rows, cols));
        }
        let blocks = crate::quant::blocks_per_row(cols);
        let values = vb.read_bytes(crate::quant::QVALUES, DType::U8, &[rows, blocks * quant.block_bytes()])?;
        let scales = vb.read_bytes(crate::quant::QSCALES, DType::F32, &[rows, blocks])?;
        // The shapes were checked against `quant`'s layout just above.
        HostMatrix::from_quantized(quant, &scales, &values, rows, cols).ok_or_else(|| WeightError::Unsupported {
            name: vb.path(crate::quant::QVALUES),
            reason: format!("not a {quant} matrix of {rows}×{cols}"),
        })
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
    ///
    /// A weight quantized on a GPU device goes through [`quant_matvec`]: the dequantizing
    /// kernel for a few rows, slices of dequantized rows and a matmul for more.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dims = x.dims();
        let (d_in, d_out) = (self.in_dim(), self.out_dim());
        let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
        let x = x.reshape([rows, d_in]);
        let y = match &self.weight {
            Weight::Tensor(weight) if rows <= MATVEC_MAX_ROWS && !is_host_device(&x.device()) => {
                matvec(x, weight.clone().transpose())
            }
            Weight::Tensor(weight) => gemm(x, weight.clone()),
            Weight::Quantized { matrix, .. } => quant_matvec(x, matrix),
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
        self.finish(y, dims)
    }

    /// `[l.forward(x) for l in linears]`: several projections of one input (q/k/v, gate/up).
    /// When all are host weights and `x` has at most [`HOST_MATVEC_MAX_ROWS`] rows, `x` is read
    /// once and all products run in one parallel pass ([`matvec_many`]), with the same results
    /// as one forward each.
    pub fn forward_all<const D: usize, const N: usize>(linears: [&Linear; N], x: Tensor<D>) -> [Tensor<D>; N] {
        let dims = x.dims();
        let rows = dims[..D.saturating_sub(1)].iter().product::<usize>();
        let d_in = dims[D - 1];
        let host: Option<Vec<(&HostMatrix, &Device)>> = linears
            .iter()
            .map(|l| match &l.weight {
                Weight::Host { matrix, device, .. } if matrix.cols() == d_in => Some((&**matrix, device)),
                _ => None,
            })
            .collect();
        let Some(host) = host.filter(|_| rows <= HOST_MATVEC_MAX_ROWS) else {
            return linears.map(|l| l.forward(x.clone()));
        };
        let dtype = x.dtype();
        let xs: Vec<f32> = x.cast(DType::F32).into_data().iter::<f32>().collect();
        let jobs: Vec<(&HostMatrix, &[f32])> = host.iter().map(|(m, _)| (*m, xs.as_slice())).collect();
        let mut ys = matvec_many(&jobs, rows);
        std::array::from_fn(|j| {
            let (matrix, device) = host[j];
            let y = std::mem::take(&mut ys[j]);
            let y = Tensor::<2>::from_data(TensorData::new(y, [rows, matrix.rows()]), (device, DType::F32));
            linears[j].finish(y.cast(dtype), dims)
        })
    }

    /// Adds the bias to `y: [rows, out]` and restores the leading dims of the input.
    fn finish<const D: usize>(&self, y: Tensor<2>, mut dims: [usize; D]) -> Tensor<D> {
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        dims[D - 1] = self.out_dim();
        y.reshape(dims)
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
            Weight::Quantized { matrix, dtype } => matrix.dequantize(*dtype),
        }
    }

    /// The device-quantized form of the weight, if it has one.
    pub fn quantized(&self) -> Option<&QuantMatrix> {
        match &self.weight {
            Weight::Quantized { matrix, .. } => Some(matrix),
            _ => None,
        }
    }

    /// The host form of the weight, if it has one.
    pub fn host_matrix(&self) -> Option<&HostMatrix> {
        match &self.weight {
            Weight::Host { matrix, .. } => Some(matrix),
            _ => None,
        }
    }

    pub fn device(&self) -> Device {
        match &self.weight {
            Weight::Tensor(weight) => weight.device(),
            Weight::Host { device, .. } => device.clone(),
            Weight::Quantized { matrix, .. } => matrix.device(),
        }
    }

    pub fn in_dim(&self) -> usize {
        match &self.weight {
            Weight::Tensor(weight) => weight.dims()[0],
            Weight::Host { matrix, .. } => matrix.cols(),
            Weight::Quantized { matrix, .. } => matrix.cols(),
        }
    }

    pub fn out_dim(&self) -> usize {
        match &self.weight {
            Weight::Tensor(weight) => weight.dims()[1],
            Weight::Host { matrix, .. } => matrix.rows(),
            Weight::Quantized { matrix, .. } => matrix.rows(),
        }
    }
}
