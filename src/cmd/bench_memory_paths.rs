//! `memvisor bench memory-paths` and `memvisor bench mappings`: options and printing (the
//! measurements are in `memvisor::bench::memory_paths` and `memvisor::bench::mappings`).

use super::bench::size;
use clap::Args as ClapArgs;
use memvisor::bench::mappings::Backing;
use memvisor::bench::memory_paths::{self, MemoryPathsOptions, Section};
use std::process::ExitCode;

/// Options of `memvisor bench memory-paths`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Repetitions in every section.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Prealloc region size (multiple of 2M).
    #[arg(long, default_value = "1G", value_parser = size)]
    prealloc_size: u64,
    /// Guest RAM for start-up and RSS measurements (whole MiB).
    #[arg(long, default_value = "512M", value_parser = size)]
    startup_size: u64,
    /// Memory ballooned per round (whole MiB).
    #[arg(long, default_value = "1G", value_parser = size)]
    balloon_size: u64,
    /// userfaultfd region size.
    #[arg(long, default_value = "64M", value_parser = size)]
    uffd_size: u64,
    /// Guest RAM mapped by the GPA->HPA benchmark, per backing (multiple of 2M).
    #[arg(long, default_value = "1G", value_parser = size)]
    mappings_size: u64,
    /// Sections to run: prealloc, startup, balloon, uffd, mappings.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "prealloc,startup,balloon,uffd,mappings"
    )]
    sections: Vec<Section>,
    #[command(flatten)]
    qemu: super::bench::QemuArgs,
    /// Print JSON instead of the tables.
    #[arg(long)]
    json: bool,
}

/// Options of `memvisor bench mappings`.
#[derive(ClapArgs, Debug)]
pub struct MappingsArgs {
    /// Guest RAM to map (multiple of 2M); populated first.
    #[arg(long, default_value = "4G", value_parser = size)]
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

pub fn run(a: Args) -> Result<ExitCode, String> {
    let opts = MemoryPathsOptions {
        reps: a.reps,
        prealloc_size: a.prealloc_size,
        startup_size: a.startup_size,
        balloon_size: a.balloon_size,
        uffd_size: a.uffd_size,
        mappings_size: a.mappings_size,
        binary: std::env::current_exe().ok(),
        qemu: a.qemu.choice(),
        sections: a.sections,
    };
    let progress = |line: &str| eprintln!("{line}");
    let mut report = memory_paths::run(&opts, &progress).map_err(|e| e.to_string())?;
    report.summary.command = super::bench::command_line();
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
