//! `dsocr debug …`: the parity harness on the command line (docs/parity.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use dsocr::model::{Backend, DeepseekOcr, LoadOptions, Precision};
use dsocr_testkit::parity::{compare, run_case, write_safetensors, Fixture, Tolerances};

#[derive(Subcommand)]
pub enum DebugCommand {
    /// Run one case of a fixture and write its tensors (named like the fixture's) to a file.
    RunCase {
        #[command(flatten)]
        target: Target,
        /// Case name from DIR/cases.json.
        #[arg(long)]
        case: String,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Also write the preprocessed views (global.png, tile_<i>.png) into this folder.
        #[arg(long)]
        views: Option<PathBuf>,
    },
    /// Run every case of a fixture, compare with DIR/golden.safetensors, print a table.
    Parity {
        #[command(flatten)]
        target: Target,
        /// Only these cases (default: all).
        #[arg(long = "case")]
        cases: Vec<String>,
    },
    /// Check every GPU kernel of dsocr-nn against its plain-Burn reference on a device (small
    /// shapes, and the decoder's real ones with --real); exits 1 on any mismatch.
    Kernels {
        /// Backend: wgpu or cuda.
        #[arg(long, default_value_t = default_backend())]
        device: String,
        /// Float precision: f32, f16 or bf16 (one per process: a device keeps its float type).
        #[arg(long, default_value = "f32")]
        precision: String,
        /// Also the real shapes (lm_head, 64 experts): needs a few GB of device memory.
        #[arg(long)]
        real: bool,
    },
}

#[derive(Args)]
pub struct Target {
    /// Fixture folder: config.json, model.safetensors, tokenizer.json, cases.json, images/, golden.safetensors.
    #[arg(long)]
    fixture: PathBuf,
    /// Backend: cpu, ndarray, wgpu or cuda (among those compiled in).
    #[arg(long, default_value_t = default_backend())]
    device: String,
    /// Float precision: f32, f16 or bf16 (tolerances follow it, see docs/parity.md).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Quantize the decoder's weights at load: q8 or q4 (decoder tolerances follow it).
    #[arg(long)]
    quant: Option<String>,
    /// MoE expert path: auto, on-device (gathered decode, dense prefill), gathered-grouped or host-grouped.
    #[arg(long, default_value = "auto")]
    experts: String,
}

fn default_backend() -> String {
    Backend::compiled().last().map(|b| b.name().to_string()).unwrap_or_else(|| "cpu".into())
}

impl Target {
    fn load(&self) -> Result<(Fixture, DeepseekOcr)> {
        let backend: Backend = self.device.parse()?;
        let precision: Precision = self.precision.parse().map_err(anyhow::Error::msg)?;
        let fixture = Fixture::open(&self.fixture)?;
        let mut options = LoadOptions::new(backend, precision);
        if let Some(quant) = &self.quant {
            options.quant = Some(quant.parse().map_err(|e: String| anyhow::anyhow!("--quant: {e}"))?);
        }
        options.expert_dispatch = self.experts.parse().map_err(|e: String| anyhow::anyhow!("--experts: {e}"))?;
        let model = DeepseekOcr::load(&self.fixture, &options)
            .with_context(|| format!("loading the model in {}", self.fixture.display()))?;
        Ok((fixture, model))
    }
}

pub fn run(cmd: DebugCommand) -> Result<ExitCode> {
    match cmd {
        DebugCommand::Kernels { device, precision, real } => check_kernels(&device, &precision, real),
        DebugCommand::RunCase { target, case, out, views } => {
            let (fixture, model) = target.load()?;
            let case = fixture.case(&case)?;
            let run = run_case(&model, &fixture, case)?;
            write_safetensors(&out, &run.tensors)?;
            eprintln!("wrote {} tensors to {}", run.tensors.len(), out.display());
            if let Some(dir) = views {
                let Some(prepared) = &run.prepared else { bail!("case {} has no image, so no views", case.name) };
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let global = dir.join("global.png");
                prepared.global.save(&global).with_context(|| format!("writing {}", global.display()))?;
                for (i, tile) in prepared.tiles.iter().enumerate() {
                    let path = dir.join(format!("tile_{i}.png"));
                    tile.save(&path).with_context(|| format!("writing {}", path.display()))?;
                }
                eprintln!("wrote {} views to {}", 1 + prepared.tiles.len(), dir.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        DebugCommand::Parity { target, cases } => {
            let (fixture, model) = target.load()?;
            let golden = fixture.golden()?;
            let tol = Tolerances::for_run(model.backend, model.precision, model.quant);
            println!(
                "parity: fixture {} on {} ({}{}), tolerances vision {:e} hidden {:e} logits {:e}",
                fixture.dir.display(),
                model.backend,
                model.precision,
                model.quant.map(|q| format!(", {q} decoder")).unwrap_or_default(),
                tol.vision,
                tol.hidden,
                tol.logits
            );
            println!("{:<44} {:>12} {:>10}  result", "tensor", "max |diff|", "tolerance");
            let mut failures = 0;
            let selected: Vec<_> =
                fixture.cases.iter().filter(|c| cases.is_empty() || cases.contains(&c.name)).collect();
            if selected.is_empty() {
                bail!("no matching case in {}/cases.json", fixture.dir.display());
            }
            for case in selected {
                let run = run_case(&model, &fixture, case).with_context(|| format!("running case {}", case.name))?;
                for row in compare(&run, case, &golden, &tol) {
                    let tol = row.tolerance.map(|t| format!("{t:e}")).unwrap_or_else(|| "exact".into());
                    let result = match (row.pass, row.note.is_empty()) {
                        (true, true) => "ok".to_string(),
                        (true, false) => format!("ok ({})", row.note),
                        (false, _) => format!("FAIL {}", row.note),
                    };
                    println!("{:<44} {:>12.3e} {:>10}  {}", row.name, row.max_abs_diff, tol, result);
                    failures += usize::from(!row.pass);
                }
            }
            if failures > 0 {
                println!("{failures} tensor(s) outside tolerance");
                return Ok(ExitCode::FAILURE);
            }
            println!("all tensors within tolerance");
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn check_kernels(device: &str, precision: &str, real: bool) -> Result<ExitCode> {
    use dsocr_nn::kernels::check::{self, Sizes};
    let backend: Backend = device.parse()?;
    let sizes = if real { Sizes::Real } else { Sizes::Small };
    let mut failures = 0;
    let precision: Precision = precision.parse().map_err(anyhow::Error::msg)?;
    let device = backend.device(precision)?;
    println!("kernels on {backend} ({precision}), plane operations: {}", dsocr_nn::kernels::plane_ops(&device));
    for c in check::run(&device, precision.dtype(), sizes) {
        let result = if c.passed() { "ok" } else { "FAIL" };
        failures += usize::from(!c.passed());
        println!("  {:<58} {:>10.2e} {:>8.0e}  {result}", c.name, c.rel_err, c.tolerance);
    }
    if failures > 0 {
        println!("{failures} check(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    println!("all kernels match their references");
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn check_kernels(_device: &str, _precision: &str, _real: bool) -> Result<ExitCode> {
    bail!("this dsocr was built without GPU backends (features cuda, wgpu): it has no kernels to check")
}
