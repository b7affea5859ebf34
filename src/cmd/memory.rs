//! `memvisor memory ...`: guest memory of a running VM (`memvisor run --api-sock`): the
//! in-VMM swap (`swap-out`, `swap-in`).

use super::client::{call_with_timeout, print_json, Sock};
use clap::Subcommand;
use memvisor::config::Size;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum MemoryCmd {
    /// In-VMM swap for hosts without swap: write the guest's memory to a new file, drop it
    /// from RAM and serve it back on access through userfaultfd (the guest pauses while it is
    /// written): PUT /memory/swap-out.
    SwapOut {
        #[command(flatten)]
        sock: Sock,
        /// The swap file to create (must not exist; on a disk filesystem that can punch holes).
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Only memory the guest has not used lately (needs the working-set estimate, which
        /// memvisor does not have yet: refused).
        #[arg(long)]
        cold_only: bool,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bring everything in the swap file back, stop serving faults from it and remove it:
    /// PUT /memory/swap-in.
    SwapIn {
        #[command(flatten)]
        sock: Sock,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A swap-out writes (and a swap-in reads) all of guest RAM before answering; the VMM gives a
/// swap-in 600 s.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(660);

fn call(sock: &Sock, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
    call_with_timeout(sock, method, path, body, TIMEOUT)
}

/// Prints the answer as JSON (`None`), or parses it for a line of text.
fn answer(text: &str, json: bool) -> Result<Option<serde_json::Value>, String> {
    if json {
        print_json(text);
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| format!("unexpected answer: {e}"))
}

fn field(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or(0)
}

pub fn run(cmd: MemoryCmd) -> Result<ExitCode, String> {
    match cmd {
        MemoryCmd::SwapOut {
            sock,
            file,
            cold_only,
            json,
        } => {
            // The VMM resolves nothing relative to the caller's directory.
            let file = std::path::absolute(&file)
                .map_err(|e| format!("--file {}: {e}", file.display()))?;
            let body = serde_json::json!({ "file": file, "cold_only": cold_only }).to_string();
            let text = call(&sock, "PUT", "/memory/swap-out", Some(&body))?;
            if let Some(v) = answer(&text, json)? {
                println!(
                    "swapped out {} to {} in {:.2} s: resident {} -> {}, the file takes {} on disk",
                    Size(field(&v, "bytes_written")),
                    file.display(),
                    v["seconds"].as_f64().unwrap_or(0.0),
                    Size(field(&v, "resident_before_bytes")),
                    Size(field(&v, "resident_after_bytes")),
                    Size(field(&v, "file_allocated_bytes")),
                );
            }
        }
        MemoryCmd::SwapIn { sock, json } => {
            let text = call(&sock, "PUT", "/memory/swap-in", None)?;
            if let Some(v) = answer(&text, json)? {
                println!(
                    "swapped in: {} read back in {:.2} s ({} faults served while swapped out); resident {} -> {}; {} removed",
                    Size(field(&v, "bytes_read")),
                    v["seconds"].as_f64().unwrap_or(0.0),
                    field(&v, "faults"),
                    Size(field(&v, "resident_before_bytes")),
                    Size(field(&v, "resident_after_bytes")),
                    v["file"].as_str().unwrap_or("the swap file"),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
