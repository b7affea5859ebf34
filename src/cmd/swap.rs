//! `memvisor swap`: look at and set up the host's swap (zram, swap files), and undo it.

use clap::Subcommand;
use memvisor::config::parse_size;
use memvisor::host::swap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum SwapCmd {
    /// Each swap device (size, used, priority), zram algorithm and compression ratio,
    /// vm.swappiness, and what memvisor set up.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The record of what memvisor set up (default: swap.json in the runtime directory).
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
    /// Configure an unused zram device of SIZE (uncompressed), mkswap it and swap on it.
    Zram {
        /// Capacity, e.g. 2G.
        size: String,
        /// Compression algorithm (lz4, zstd, lzo-rle, ... as the kernel offers).
        #[arg(long)]
        algorithm: Option<String>,
        /// Use this device (default: the first unused one, or a new one).
        #[arg(long)]
        device: Option<PathBuf>,
        /// Swap priority (higher is used first).
        #[arg(long, default_value_t = swap::ZRAM_PRIORITY)]
        priority: i32,
        /// The record of what memvisor set up.
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
    /// Create a swap file of SIZE at PATH (must not exist), mkswap it and swap on it.
    File {
        /// The file to create.
        path: PathBuf,
        /// Size, e.g. 4G.
        size: String,
        /// Swap priority (default: the kernel's, below every other area).
        #[arg(long)]
        priority: Option<i32>,
        /// The record of what memvisor set up.
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
    /// Switch off and reset (zram) or remove (file) what memvisor set up, or switch off DEVICE.
    Off {
        /// A swap device or file to switch off.
        device: Option<PathBuf>,
        /// The record of what memvisor set up.
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("`{s}` is not a size (e.g. 2G, 512M)"))
}

pub fn run(cmd: SwapCmd) -> Result<ExitCode, String> {
    let e = |e: swap::SwapError| e.to_string();
    let state = |f: Option<PathBuf>| f.unwrap_or_else(swap::default_state_file);
    let change = match cmd {
        SwapCmd::Status { json, state_file } => {
            let s = swap::status(&state(state_file)).map_err(e)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
            } else {
                print!("{}", swap::status_text(&s));
            }
            return Ok(ExitCode::SUCCESS);
        }
        SwapCmd::Zram {
            size,
            algorithm,
            device,
            priority,
            state_file,
        } => swap::setup_zram(
            size_arg(&size)?,
            algorithm.as_deref(),
            device.as_deref(),
            priority,
            &state(state_file),
        )
        .map_err(e)?,
        SwapCmd::File {
            path,
            size,
            priority,
            state_file,
        } => swap::setup_file(&path, size_arg(&size)?, priority, &state(state_file)).map_err(e)?,
        SwapCmd::Off { device, state_file } => {
            swap::off(device.as_deref(), &state(state_file)).map_err(e)?
        }
    };
    print!("{change}");
    Ok(ExitCode::SUCCESS)
}
