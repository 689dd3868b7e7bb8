//! `dsocr render` (being written).

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Args)]
pub struct RenderArgs {}

pub fn run(_args: RenderArgs) -> Result<ExitCode> {
    bail!("`dsocr render` is not available in this build yet")
}
