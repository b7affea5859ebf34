//! `memvisor bench hugepages` (being built).

use clap::Args as ClapArgs;
use std::process::ExitCode;

/// Options of `memvisor bench hugepages`.
#[derive(ClapArgs, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> Result<ExitCode, String> {
    Err("`memvisor bench hugepages` is not built yet".into())
}
