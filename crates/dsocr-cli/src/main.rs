//! `dsocr`: DeepSeek-OCR on your own machine.

mod debug;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dsocr", version, about = "DeepSeek-OCR, locally: images, folders and PDFs to markdown, text and layout boxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Developer tools: run fixture cases, check numeric parity.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

fn main() -> Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Debug(cmd) => debug::run(cmd),
    }
}
