//! `memvisor bench memory-paths` and `memvisor bench mappings`: options and printing (the
//! measurements are in `memvisor::bench::memory_paths` and `memvisor::bench::mappings`).

use clap::Args as ClapArgs;
use memvisor::bench::mappings::Backing;
use std::process::ExitCode;

/// Options of `memvisor bench memory-paths`.
#[derive(ClapArgs, Debug)]
pub struct Args {}

/// Options of `memvisor bench mappings`.
#[derive(ClapArgs, Debug)]
pub struct MappingsArgs {
    /// Guest RAM to map (multiple of 2M); populated first.
    #[arg(long, default_value = "4G", value_parser = super::bench::size)]
    pub size: u64,
    /// Repetitions of each reader.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Host pages behind the guest RAM, each measured in turn: 4k (thp=off), default (no THP
    /// advice, memvisor's default region), thp (thp=on).
    #[arg(long, value_delimiter = ',', default_value = "4k,default,thp")]
    pub backings: Vec<Backing>,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: Args) -> Result<ExitCode, String> {
    Err("`memvisor bench memory-paths` is not built yet".into())
}
