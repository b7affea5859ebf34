//! The `memvisor` command line.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// memvisor: a KVM virtual machine monitor built around guest memory and overcommit.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a guest (the built-in guest by default: 512 MiB, 1 vCPU) and print a report.
    Run(Box<cmd::run::RunArgs>),
    /// Host huge pages: show pools and mounts, grow a pool, mount hugetlbfs.
    #[command(subcommand)]
    Hugepages(cmd::hugepages::HugepagesCmd),
    /// Host KSM: status, on, off, tune (prints what it changed).
    #[command(subcommand)]
    Ksm(cmd::ksm::KsmCmd),
    /// Host swap: status, a zram device or a swap file, off (prints what it changed).
    #[command(subcommand)]
    Swap(cmd::swap::SwapCmd),
    /// Balloon of a running VM (needs `memvisor run --api-sock`).
    #[command(subcommand)]
    Balloon(cmd::client::BalloonCmd),
    /// State of a running VM: status, pause, resume, stop, finish-step (needs `--api-sock`).
    #[command(subcommand)]
    Vm(cmd::client::VmCmd),
    /// Guest memory of a running VM and host swap: reclaim, resident limit, status, the in-VMM
    /// swap (swap-out, swap-in).
    #[command(subcommand)]
    Memory(cmd::memory::MemoryCmd),
    /// Memory reports: GPA→HPA map of a VM, overcommit of a VM or of the whole host.
    #[command(subcommand)]
    Report(cmd::client::ReportCmd),
    /// The memory controller: keeps a host free-memory floor (and with --fleet-budget the VMs
    /// within a budget) by moving the balloons of the VMs registered in the runtime directory,
    /// then by reclaiming guest memory to host swap.
    Balance(cmd::balance::BalanceArgs),
    /// Benchmarks of memvisor's memory paths beside minimal baselines (and QEMU).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
}

fn main() -> ExitCode {
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts, so that
    // `memvisor ... | head` ends quietly instead of panicking on a closed stdout.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Run(a) => cmd::run::cmd_run(*a),
        Command::Hugepages(c) => cmd::hugepages::run(c),
        Command::Ksm(c) => cmd::ksm::run(c),
        Command::Swap(c) => cmd::swap::run(c),
        Command::Balloon(c) => cmd::client::balloon(c),
        Command::Vm(c) => cmd::client::vm(c),
        Command::Report(c) => cmd::client::report(c),
        Command::Memory(c) => cmd::memory::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Balance(a) => cmd::balance::run(a),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("memvisor: error: {msg}");
            ExitCode::from(1)
        }
    }
}
