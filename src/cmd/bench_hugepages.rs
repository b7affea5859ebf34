//! `memvisor bench hugepages`: the command-line side of `memvisor::bench::hugepages`.

use clap::Args as ClapArgs;
use memvisor::bench::hugepages::{self, Backing, HugepagesOptions};
use memvisor::config::parse_size;
use memvisor::config::workload::parse_count;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Options of `memvisor bench hugepages`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Guest RAM (one region; a multiple of 1G for the 1g backing).
    #[arg(long, default_value = "1G", value_parser = size)]
    memory: u64,
    /// Working set over all vCPUs (each vCPU gets an equal part).
    #[arg(long, default_value = "512M", value_parser = size)]
    working_set: u64,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Repetitions of every configuration (interleaved).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Untimed warm-up rounds over every configuration before the repetitions.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Backings: 4k (anon, THP off), thp (anon, MADV_HUGEPAGE), 2m and 1g (hugetlbfs).
    #[arg(long, value_delimiter = ',', default_value = "4k,thp,2m,1g")]
    backings: Vec<Backing>,
    /// Run each backing without prealloc (off), with it (on), or both.
    #[arg(long, value_delimiter = ',', default_value = "off,on", value_parser = on_off)]
    prealloc: Vec<bool>,
    /// Sequential passes over the working set.
    #[arg(long, default_value_t = 16)]
    seq_passes: u64,
    /// Bytes between two sequential reads (4K: one read per 4 KiB page).
    #[arg(long, default_value = "4K", value_parser = size)]
    seq_stride: u64,
    /// Random accesses over all vCPUs (K/M suffixes are decimal: 8M = 8,000,000).
    #[arg(long, default_value = "8M", value_parser = count)]
    random_accesses: u64,
    /// Write an SVG chart of the phases per configuration to FILE.
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("`{s}` is not a size; write e.g. 1G, 512M"))
}

fn count(s: &str) -> Result<u64, String> {
    parse_count(s).ok_or_else(|| format!("`{s}` is not a count; write e.g. 8M, 500K"))
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: write off, on or off,on")),
    }
}

pub fn run(a: Args) -> Result<ExitCode, String> {
    // Ctrl-C / SIGTERM end the benchmark early but still unmount and restore the pools.
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupt.clone())
            .map_err(|e| format!("installing the signal handler: {e}"))?;
    }
    let opts = HugepagesOptions {
        memory: a.memory,
        working_set: a.working_set,
        vcpus: a.vcpus,
        reps: a.reps,
        warmup: a.warmup,
        backings: a.backings,
        prealloc: a.prealloc,
        seq_passes: a.seq_passes,
        seq_stride: a.seq_stride,
        random_accesses: a.random_accesses,
        chart: a.chart,
        interrupt: Some(interrupt),
    };
    let progress = |line: &str| eprintln!("{line}");
    let report = hugepages::run(&opts, &progress).map_err(|e| e.to_string())?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
        if let Some(p) = &opts.chart {
            println!("chart written to {}", p.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
