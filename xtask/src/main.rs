//! Developer commands: `cargo xtask <command>`.
//!
//! - `make-checkpoint --out DIR`: a full-size DeepSeek-OCR model folder with random bf16 weights,
//!   the real tensor names (xtask/weight-names.txt, 2,710 tensors) and shapes (spec §2), a real
//!   `config.json`, and the fixture's small tokenizer. 6.67 GB; never commit it.

mod checkpoint;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
        Command::MakeCheckpoint { out, seed } => checkpoint::make(&out, seed),
    }
}
