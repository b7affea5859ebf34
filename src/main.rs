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
    Run(cmd::run::RunArgs),
    /// Host huge pages: show pools and mounts, grow a pool, mount hugetlbfs.
    #[command(subcommand)]
    Hugepages(cmd::hugepages::HugepagesCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        Command::Run(a) => cmd::run::cmd_run(a),
        Command::Hugepages(c) => cmd::hugepages::run(c),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("memvisor: error: {msg}");
            ExitCode::from(1)
        }
    }
}
