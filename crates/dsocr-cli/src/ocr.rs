//! `dsocr ocr` (being written).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct OcrArgs {}

pub fn run(_args: OcrArgs) -> Result<ExitCode> {
    bail!("`dsocr ocr` is not available in this build yet")
}
