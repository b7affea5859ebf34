//! `memvisor bench memory-paths` (being built).

use clap::Args as ClapArgs;
use std::process::ExitCode;

/// Options of `memvisor bench memory-paths`.
#[derive(ClapArgs, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, String> {
    Err("`memvisor bench memory-paths` is not built yet".into())
}
