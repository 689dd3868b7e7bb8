//! `dsocr models` (being written).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct ModelsArgs {}

pub fn run(_args: ModelsArgs) -> Result<ExitCode> {
    bail!("`dsocr models` is not available in this build yet")
}
