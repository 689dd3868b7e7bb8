//! Developer commands: `cargo xtask <command>`.
//!
//! - `make-checkpoint --out DIR`: a full-size DeepSeek-OCR model folder with random bf16 weights,
//!   the real tensor names (crates/dsocr-testkit/weight-names.txt, 2,710 tensors) and shapes
//!   (spec §2), a real `config.json`, and the real DeepSeek-OCR tokenizer. 6.67 GB; never commit it.
//!   The writer lives in `dsocr_testkit::random_checkpoint`, so `dsocr bench --model DIR` can make
//!   the same folder on a machine without cargo.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use dsocr_testkit::random_checkpoint;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a full-size random bf16 checkpoint folder (config.json, model.safetensors, tokenizer.json).
    MakeCheckpoint {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1234)]
        seed: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::MakeCheckpoint { out, seed } => {
            let written = random_checkpoint::write(&out, seed)?;
            println!(
                "wrote {} ({} tensors, {} parameters, {} bytes) with config.json and the real tokenizer",
                written.weights.display(),
                written.tensors,
                written.parameters,
                written.bytes
            );
            Ok(())
        }
    }
}
