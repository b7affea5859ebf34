//! `memvisor bench`: benchmarks of memvisor's memory paths beside minimal baselines (see
//! `memvisor::bench` and docs/benchmarks.md). Progress goes to stderr, the result to stdout.

use clap::{Args, Subcommand};
use memvisor::bench::prealloc::{self, PreallocBackend, PreallocOptions, QemuChoice};
use memvisor::bench::uffd_faults::{self, FaultSource, UffdOptions};
use memvisor::bench::{BenchError, BenchReport, BenchRow};
use memvisor::config::parse_size;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Preallocation throughput: memvisor's prealloc=on beside a bare MADV_POPULATE_WRITE loop
    /// and QEMU's prealloc, for hugetlbfs 2M and anon 4K with 1 and 2 threads (needs root for
    /// hugetlbfs; grows the pool and mounts a temporary hugetlbfs, both undone at the end).
    Prealloc(PreallocArgs),
    /// userfaultfd fault service rate: memvisor's in-process handler beside a minimal
    /// userfaultfd loop, for zero pages and a file image (cold and warm).
    Uffd(UffdArgs),
    /// Balloon return: PATCH /balloon on a running built-in guest until the host pages are
    /// gone, beside a raw madvise(MADV_DONTNEED) of the same amount.
    Balloon(BalloonArgs),
    /// Swap: reclaim GiB/s vs a raw MADV_PAGEOUT, guest swap-in faults/s vs a host loop, the
    /// working-set estimate's cost per GiB (root; sets up zram for the run without host swap).
    Swap(SwapArgs),
    /// Hugepage comparison: the same built-in-guest workload on 4K, THP, hugetlbfs 2M and 1G,
    /// with and without prealloc.
    Hugepages(super::bench_hugepages::Args),
    /// The speed of memvisor's memory machinery, each path beside a bare baseline.
    MemoryPaths(super::bench_memory_paths::Args),
    /// GPA->HPA map: ms per GiB to produce the map of a populated guest, beside raw
    /// /proc/self/pagemap (and /proc/kpageflags) reads of the same range (needs root for
    /// frame numbers and page kinds).
    Mappings(super::bench_memory_paths::MappingsArgs),
    /// Disk requests: the virtio-blk device (as --disk uses it) processing Linux-shaped
    /// requests over a raw image, beside raw pread/pwrite of the same offsets: sequential
    /// 128K MiB/s and random 4K IOPS, reads and writes.
    Disk(DiskArgs),
    /// Network frames: the virtio-net device (as --net uses it) transmitting Linux-shaped
    /// chains to a tap in its own network namespace, beside raw writev to the same tap and
    /// AF_PACKET sendto on a veth pair: 1514- and 64-byte frames, Gbit/s and frames/s (root).
    Net(NetArgs),
}

#[derive(Args, Debug)]
pub struct NetArgs {
    /// Frames per repetition, path and frame size (rounded up to a multiple of 256).
    #[arg(long, default_value_t = 65536)]
    frames: u64,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct DiskArgs {
    /// Image size (multiple of 1M).
    #[arg(long, default_value = "256M", value_parser = size)]
    size: u64,
    /// Repetitions of each workload.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Directory for the image (default: the temp dir).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// O_DIRECT on both sides (the page cache bypassed).
    #[arg(long)]
    direct: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct SwapArgs {
    /// Memory paged out and back per repetition (a multiple of 2M).
    #[arg(long, default_value = "256M", value_parser = size)]
    size: u64,
    /// Repetitions.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct BalloonArgs {
    /// Memory to balloon per round (whole MiB).
    #[arg(long, default_value = "1G", value_parser = size)]
    size: u64,
    /// Rounds (each inflates and deflates once).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Host CPU for the guest's vCPU and so its device thread (`--pin 0=CPU`), or `none` for
    /// unpinned [default: the host's last CPU; none on a one-CPU host].
    #[arg(long, value_name = "CPU|none", value_parser = cpu_or_none)]
    cpu: Option<CpuChoice>,
    /// Also time raw madvise rounds whose memory sat this many seconds between its touch and
    /// the madvise (0: none). A balloon gives back memory the guest touched seconds before,
    /// and on some hosts that alone frees slower than memory touched just now.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    raw_age: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// `--cpu N` or `--cpu none`.
#[derive(Clone, Copy, Debug)]
pub enum CpuChoice {
    /// Pinned to this CPU.
    Cpu(usize),
    /// Not pinned.
    Unpinned,
}

fn cpu_or_none(s: &str) -> Result<CpuChoice, String> {
    if s == "none" {
        return Ok(CpuChoice::Unpinned);
    }
    let c: usize = s
        .parse()
        .map_err(|_| format!("`{s}`: a host CPU number or `none`"))?;
    match memvisor::config::host_cpu_not_online(c) {
        Some(why) => Err(why),
        None => Ok(CpuChoice::Cpu(c)),
    }
}

#[derive(Args, Debug)]
pub struct PreallocArgs {
    /// Region size per run (multiple of 2M).
    #[arg(long, default_value = "2G", value_parser = size)]
    size: u64,
    /// Repetitions of each run.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Populate thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Backends: hugetlbfs, anon.
    #[arg(long, value_delimiter = ',', default_value = "hugetlbfs,anon")]
    backends: Vec<PreallocBackend>,
    #[command(flatten)]
    qemu: QemuArgs,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

/// `--qemu PATH` / `--no-qemu` of the benchmarks that compare with QEMU.
#[derive(Args, Debug)]
pub struct QemuArgs {
    /// QEMU binary to compare with (default: qemu-system-x86_64 on PATH).
    #[arg(long, value_name = "PATH", conflicts_with = "no_qemu")]
    qemu: Option<PathBuf>,
    /// Skip the QEMU comparisons.
    #[arg(long)]
    no_qemu: bool,
}

impl QemuArgs {
    /// Which QEMU to compare with, if any.
    pub fn choice(self) -> QemuChoice {
        match (self.no_qemu, self.qemu) {
            (true, _) => QemuChoice::Skip,
            (false, Some(p)) => QemuChoice::Binary(p),
            (false, None) => QemuChoice::Auto,
        }
    }
}

#[derive(Args, Debug)]
pub struct UffdArgs {
    /// Region size per run (multiple of 4K).
    #[arg(long, default_value = "256M", value_parser = size)]
    size: u64,
    /// Repetitions of each run.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Sources: zero, file-cold, file-warm, vmm-swap (pages faulted back from the in-VMM
    /// swap's file after `GuestRam::swap_out`, beside the minimal loop on the cold image).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zero,file-cold,file-warm,vmm-swap"
    )]
    sources: Vec<FaultSource>,
    /// Directory for the file image (default: the temp dir; not tmpfs if it is to be cold).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub(super) fn size(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("`{s}` is not a size; write e.g. 2G, 256M"))
}

pub(super) fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("memvisor {}", args.join(" "))
}

fn print<R: BenchRow>(
    report: Result<BenchReport<R>, BenchError>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut report = report.map_err(|e| e.to_string())?;
    report.command = command_line();
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(cmd: BenchCmd) -> Result<ExitCode, String> {
    let progress = |line: &str| eprintln!("{line}");
    match cmd {
        BenchCmd::Prealloc(a) => {
            let opts = PreallocOptions {
                size: a.size,
                reps: a.reps,
                threads: a.threads,
                backends: a.backends,
                qemu: a.qemu.choice(),
            };
            print(prealloc::run(&opts, &progress), a.json)
        }
        BenchCmd::Uffd(a) => {
            let opts = UffdOptions {
                size: a.size,
                reps: a.reps,
                sources: a.sources,
                dir: a.dir,
            };
            print(uffd_faults::run(&opts, &progress), a.json)
        }
        BenchCmd::Balloon(a) => {
            use memvisor::bench::balloon::BalloonBenchOptions;
            let opts = BalloonBenchOptions {
                size: a.size,
                reps: a.reps,
                cpu: match a.cpu {
                    Some(CpuChoice::Cpu(c)) => Some(c),
                    Some(CpuChoice::Unpinned) => None,
                    None => BalloonBenchOptions::default_cpu(),
                },
                raw_age: std::time::Duration::from_secs(a.raw_age),
            };
            print(memvisor::bench::balloon::run(&opts, command_line()), a.json)
        }
        BenchCmd::Swap(a) => {
            let opts = memvisor::bench::swap::SwapBenchOptions {
                size: a.size,
                reps: a.reps,
            };
            print(memvisor::bench::swap::run(&opts, command_line()), a.json)
        }
        BenchCmd::Hugepages(a) => super::bench_hugepages::run(a),
        BenchCmd::MemoryPaths(a) => super::bench_memory_paths::run(a),
        BenchCmd::Disk(a) => {
            let opts = memvisor::bench::disk::DiskBenchOptions {
                size: a.size,
                reps: a.reps,
                dir: a.dir,
                direct: a.direct,
            };
            print(memvisor::bench::disk::run(&opts, &progress), a.json)
        }
        BenchCmd::Net(a) => {
            let opts = memvisor::bench::net::NetBenchOptions {
                frames: a.frames,
                reps: a.reps,
            };
            print(memvisor::bench::net::run(&opts, &progress), a.json)
        }
        BenchCmd::Mappings(a) => {
            let opts = memvisor::bench::mappings::MappingsOptions {
                size: a.size,
                reps: a.reps,
                backings: a.backings,
            };
            print(memvisor::bench::mappings::run(&opts, &progress), a.json)
        }
    }
}
