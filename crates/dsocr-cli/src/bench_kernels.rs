//! `dsocr bench kernels`: each CubeCL kernel of `dsocr-nn` against the op path it replaces,
//! at the decoder's real shapes (DeepSeek-OCR: hidden 1280, dense MLP 6848, 64 experts of 896,
//! two shared experts, a 129,280-token vocabulary), random inputs.
//!
//! Per case: the time per call of the kernel and of the reference (`--iters` calls in a row,
//! one device sync at the end: host launch cost included, as in an eager decode step), the
//! weight bytes read per second, and the relative error of both against an f32 matrix product
//! of the same inputs. RMSNorm (alone and after the residual add) at hidden size 1280 for a
//! decode step, a batch and a prompt; its GB/s counts the activations read and written.
//! Without the kernels (CPU builds, no plane operations, or `DSOCR_KERNELS=0`) both columns time
//! the reference.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use clap::Args;
use dsocr_nn::matvec::{gathered_matvec_reference, matvec_reference};
use dsocr_nn::quantized::{gathered_quant_matvec_reference, quant_matvec_reference, quantize_tensor};
use dsocr_nn::rms_norm::{add_rms_norm_reference, rms_norm_reference};
use dsocr_nn::{add_rms_norm, gathered_matvec, gathered_quant_matvec, matvec, quant_matvec, relative_error, rms_norm};
use dsocr_weights::{Backend, Precision};
use serde::Serialize;

#[derive(Args)]
pub struct KernelArgs {
    /// Backend: wgpu or cuda (cpu times the references only).
    #[arg(long, default_value_t = super::bench::default_backend())]
    device: String,
    /// Float precision (default: the backend's fast precision).
    #[arg(long)]
    precision: Option<String>,
    /// Time the quantized products (q8 or q4 weights, `dsocr_nn::quantized`) against their
    /// plain-Burn references instead of the float ones.
    #[arg(long)]
    quant: Option<dsocr_nn::Quant>,
    /// Calls timed per case.
    #[arg(long, default_value_t = 200)]
    iters: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One shape: `rows` rows through `out × in` weights, or `slots` expert slots of `rows` tokens
/// through a stack of `experts` such matrices.
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    rows: usize,
    out: usize,
    k: usize,
    /// `Some((experts, slots per row))` for the gathered product.
    gathered: Option<(usize, usize)>,
}

/// A timed operation.
type Op = Box<dyn Fn() -> Tensor<2>>;
/// A norm case: name, kernel, reference, f32 oracle, bytes moved.
type NormCase<'a> = (&'a str, &'a dyn Fn() -> Tensor<2>, &'a dyn Fn() -> Tensor<2>, &'a Tensor<2>, usize);

#[derive(Debug, Serialize)]
struct CaseResult {
    name: String,
    rows: usize,
    out: usize,
    k: usize,
    kernel_used: bool,
    kernel_us: f64,
    reference_us: f64,
    speedup: f64,
    kernel_gb_s: f64,
    kernel_rel_err: f32,
    reference_rel_err: f32,
}

const CASES: [Case; 17] = [
    Case { name: "attention q/k/v/o", rows: 1, out: 1280, k: 1280, gathered: None },
    Case { name: "attention q/k/v/o", rows: 8, out: 1280, k: 1280, gathered: None },
    Case { name: "attention q/k/v/o", rows: 16, out: 1280, k: 1280, gathered: None },
    Case { name: "dense gate/up", rows: 1, out: 6848, k: 1280, gathered: None },
    Case { name: "dense down", rows: 1, out: 1280, k: 6848, gathered: None },
    Case { name: "shared gate/up", rows: 1, out: 1792, k: 1280, gathered: None },
    Case { name: "shared down", rows: 1, out: 1280, k: 1792, gathered: None },
    Case { name: "router", rows: 1, out: 64, k: 1280, gathered: None },
    Case { name: "lm_head", rows: 1, out: 129_280, k: 1280, gathered: None },
    Case { name: "lm_head", rows: 16, out: 129_280, k: 1280, gathered: None },
    Case { name: "experts gate+up (top 6)", rows: 1, out: 1792, k: 1280, gathered: Some((64, 6)) },
    Case { name: "experts down (top 6)", rows: 6, out: 1280, k: 896, gathered: Some((64, 1)) },
    Case { name: "experts gate+up (top 6)", rows: 16, out: 1792, k: 1280, gathered: Some((64, 6)) },
    Case { name: "experts down (top 6)", rows: 96, out: 1280, k: 896, gathered: Some((64, 1)) },
    // Batched decode steps (float only): more slots than experts take the grouped kernel.
    Case { name: "experts gate+up (top 6)", rows: 32, out: 1792, k: 1280, gathered: Some((64, 6)) },
    Case { name: "experts gate+up (top 6)", rows: 128, out: 1792, k: 1280, gathered: Some((64, 6)) },
    Case { name: "experts down (top 6)", rows: 768, out: 1280, k: 896, gathered: Some((64, 1)) },
];
/// The most expert slots a quantized case takes (its reference dequantizes every slot's matrix).
const QUANT_MAX_SLOTS: usize = 96;

/// RMSNorm shapes `(rows, d)`: a decode step, a batch of 16, the 902-token prompt.
const NORM_ROWS: [usize; 3] = [1, 16, 902];

pub fn run(args: KernelArgs) -> Result<ExitCode> {
    let backend: Backend = args.device.parse()?;
    let precision: Precision = match &args.precision {
        Some(p) => p.parse().map_err(anyhow::Error::msg)?,
        None => backend.fast_precision(),
    };
    let device = backend.device(precision)?;
    let dtype = precision.dtype();
    let iters = args.iters.max(1);
    let sync = || device.sync().map_err(|e| anyhow::anyhow!("device sync: {e:?}"));
    eprintln!("kernels on {backend} ({precision}), {iters} calls per case");

    let mut results = Vec::new();
    for case in CASES {
        let slots = case.rows * case.gathered.map_or(1, |(_, per_row)| per_row);
        if args.quant.is_some() && slots > QUANT_MAX_SLOTS {
            continue;
        }
        let x = Tensor::<2>::random([case.rows, case.k], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
        let (kernel, reference, want, used, weight_bytes): (Op, Op, _, _, _) = match (case.gathered, args.quant) {
            (gathered, Some(quant)) => {
                let (experts, per_row) = gathered.unwrap_or((1, 1));
                let w = Tensor::<2>::random([experts * case.out, case.k], Distribution::Normal(0.0, 0.05), &device);
                let (w, dequantized) = quantize_tensor(quant, w);
                let slots = case.rows * per_row;
                let ids: Vec<i64> = (0..slots).map(|s| ((s * 11 + s / per_row * 7) % experts) as i64).collect();
                let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
                let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [slots]), &device);
                let used = dsocr_nn::kernels_used_for_quant(&x, &w);
                let bytes = w.size_bytes() / experts * distinct;
                let out = case.out;
                let (xk, wk, ik, xr, wr, ir) = (x.clone(), w.clone(), ids.clone(), x.clone(), w, ids.clone());
                if gathered.is_some() {
                    let want = gathered_matvec_reference(
                        x.clone().cast(DType::F32),
                        dequantized.reshape([experts, out, case.k]),
                        ids,
                    );
                    (
                        Box::new(move || gathered_quant_matvec(xk.clone(), &wk, out, ik.clone())),
                        Box::new(move || gathered_quant_matvec_reference(xr.clone(), &wr, out, ir.clone())),
                        want,
                        used,
                        bytes,
                    )
                } else {
                    let want = x.clone().cast(DType::F32).matmul(dequantized.transpose());
                    (
                        Box::new(move || quant_matvec(xk.clone(), &wk)),
                        Box::new(move || quant_matvec_reference(xr.clone(), &wr)),
                        want,
                        used,
                        bytes,
                    )
                }
            }
            (None, None) => {
                let w = Tensor::<2>::random([case.out, case.k], Distribution::Normal(0.0, 0.05), &device).cast(dtype);
                let want = x.clone().cast(DType::F32).matmul(w.clone().cast(DType::F32).transpose());
                let used = kernel_used(&x, &w);
                let bytes = case.out * case.k * precision.dtype().size();
                let (xk, wk, xr, wr) = (x.clone(), w.clone(), x.clone(), w);
                (
                    Box::new(move || matvec(xk.clone(), wk.clone())),
                    Box::new(move || matvec_reference(xr.clone(), wr.clone())),
                    want,
                    used,
                    bytes,
                )
            }
            (Some((experts, per_row)), None) => {
                let w = Tensor::<3>::random([experts, case.out, case.k], Distribution::Normal(0.0, 0.05), &device)
                    .cast(dtype);
                let slots = case.rows * per_row;
                // Slots spread over the experts as a router would (distinct within a token).
                let ids: Vec<i64> = (0..slots).map(|s| ((s * 11 + s / per_row * 7) % experts) as i64).collect();
                let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
                let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [slots]), &device);
                let want =
                    gathered_matvec_reference(x.clone().cast(DType::F32), w.clone().cast(DType::F32), ids.clone());
                let used = kernel_used(&x, &w);
                let bytes = distinct * case.out * case.k * precision.dtype().size();
                let (xk, wk, ik) = (x.clone(), w.clone(), ids.clone());
                let (xr, wr, ir) = (x.clone(), w, ids);
                (
                    Box::new(move || gathered_matvec(xk.clone(), wk.clone(), ik.clone())),
                    Box::new(move || gathered_matvec_reference(xr.clone(), wr.clone(), ir.clone())),
                    want,
                    used,
                    bytes,
                )
            }
        };
        sync()?;
        let kernel_rel_err = relative_error(kernel(), want.clone());
        let reference_rel_err = relative_error(reference(), want);
        let kernel_s = time(&kernel, iters, &sync)?;
        let reference_s = time(&reference, iters, &sync)?;
        let result = CaseResult {
            name: case.name.to_string(),
            rows: case.rows,
            out: case.out,
            k: case.k,
            kernel_used: used,
            kernel_us: kernel_s * 1e6,
            reference_us: reference_s * 1e6,
            speedup: reference_s / kernel_s,
            kernel_gb_s: weight_bytes as f64 / kernel_s / 1e9,
            kernel_rel_err,
            reference_rel_err,
        };
        eprintln!(
            "{:<26} rows {:>3} {:>6}x{:<5} kernel {:>8.1} µs ({:>6.0} GB/s)  reference {:>8.1} µs  ×{:.1}  err {:.1e} / {:.1e}",
            result.name,
            result.rows,
            result.out,
            result.k,
            result.kernel_us,
            result.kernel_gb_s,
            result.reference_us,
            result.speedup,
            result.kernel_rel_err,
            result.reference_rel_err
        );
        results.push(result);
    }
    for rows in NORM_ROWS {
        let d = 1280;
        let x = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
        let delta = Tensor::<2>::random([rows, d], Distribution::Normal(0.0, 1.0), &device).cast(dtype);
        let w = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.1), &device).cast(dtype);
        let f32 = |t: &Tensor<2>| t.clone().cast(DType::F32);
        let want = rms_norm_reference(f32(&x), &w.clone().cast(DType::F32), 1e-6);
        let want_add = add_rms_norm_reference(f32(&x), f32(&delta), &w.clone().cast(DType::F32), 1e-6).1;
        let used = kernel_used_norm(&x, &w);
        let bytes = rows * d * dtype.size();
        let (xk, wk, xr, wr) = (x.clone(), w.clone(), x.clone(), w.clone());
        let norm_kernel = move || rms_norm(xk.clone(), &wk, 1e-6);
        let norm_reference = move || rms_norm_reference(xr.clone(), &wr, 1e-6);
        let (xk, dk, wk) = (x.clone(), delta.clone(), w.clone());
        let (xr, dr, wr) = (x, delta, w);
        let add_kernel = move || add_rms_norm(xk.clone(), dk.clone(), &wk, 1e-6).1;
        let add_reference = move || add_rms_norm_reference(xr.clone(), dr.clone(), &wr, 1e-6).1;
        let pairs: [NormCase; 2] = [
            ("rms_norm", &norm_kernel, &norm_reference, &want, 2 * bytes),
            ("add + rms_norm", &add_kernel, &add_reference, &want_add, 4 * bytes),
        ];
        for (name, kernel, reference, want, bytes) in pairs {
            sync()?;
            let kernel_rel_err = relative_error(kernel(), want.clone());
            let reference_rel_err = relative_error(reference(), want.clone());
            let kernel_s = time(kernel, iters, &sync)?;
            let reference_s = time(reference, iters, &sync)?;
            results.push(CaseResult {
                name: name.to_string(),
                rows,
                out: d,
                k: d,
                kernel_used: used,
                kernel_us: kernel_s * 1e6,
                reference_us: reference_s * 1e6,
                speedup: reference_s / kernel_s,
                kernel_gb_s: bytes as f64 / kernel_s / 1e9,
                kernel_rel_err,
                reference_rel_err,
            });
        }
    }
    let what = match args.quant {
        Some(quant) => format!("{backend} {precision}, {quant} weights"),
        None => format!("{backend} {precision}"),
    };
    print!("{}", markdown(&results, &what, iters));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn kernel_used<const D: usize>(x: &Tensor<2>, w: &Tensor<D>) -> bool {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        use dsocr_nn::kernels::Kernel;
        dsocr_nn::kernels::available(if D == 2 { Kernel::Matvec } else { Kernel::GatheredMatvec }, x, w)
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (x, w);
        false
    }
}

fn kernel_used_norm(x: &Tensor<2>, w: &Tensor<1>) -> bool {
    #[cfg(any(feature = "cuda", feature = "wgpu"))]
    {
        dsocr_nn::kernels::available(dsocr_nn::kernels::Kernel::RmsNorm, x, w)
    }
    #[cfg(not(any(feature = "cuda", feature = "wgpu")))]
    {
        let _ = (x, w);
        false
    }
}

/// Seconds per call: a warm-up call, then `iters` calls kept alive until one sync.
fn time(op: &dyn Fn() -> Tensor<2>, iters: usize, sync: &dyn Fn() -> Result<()>) -> Result<f64> {
    drop(op());
    sync()?;
    let start = Instant::now();
    let outputs: Vec<Tensor<2>> = (0..iters).map(|_| op()).collect();
    sync()?;
    let seconds = start.elapsed().as_secs_f64() / iters as f64;
    drop(outputs);
    Ok(seconds)
}

fn markdown(results: &[CaseResult], what: &str, iters: usize) -> String {
    let mut out = format!(
        "\n### Kernels vs the op path they replace ({what}, {iters} calls, one sync)\n\n\
         | op | rows | out × in | kernel µs | GB/s (weights; norms: activations) | reference µs | speed-up | rel. err kernel | rel. err reference |\n\
         |---|---|---|---|---|---|---|---|---|\n"
    );
    for r in results {
        out.push_str(&format!(
            "| {}{} | {} | {} × {} | {:.1} | {:.0} | {:.1} | {:.1}× | {:.1e} | {:.1e} |\n",
            r.name,
            if r.kernel_used { "" } else { " (no kernel)" },
            r.rows,
            r.out,
            r.k,
            r.kernel_us,
            r.kernel_gb_s,
            r.reference_us,
            r.speedup,
            r.kernel_rel_err,
            r.reference_rel_err
        ));
    }
    out
}
