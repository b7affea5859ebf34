//! `memvisor memory`: a running VM's guest memory (talks to `memvisor run --api-sock`): reclaim
//! to host swap now, the standing resident limit and what reclaim has done; the in-VMM swap
//! (`swap-out`, `swap-in`) for hosts without swap.

use super::client::{call, call_with_timeout, print_json, Sock};
use clap::Subcommand;
use memvisor::config::{parse_size, Size};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long a reclaim may take before the client gives up (GiBs compressed into zram, or
/// written to a slow disk).
const RECLAIM_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Subcommand, Debug)]
pub enum MemoryCmd {
    /// Page guest memory out to host swap (coldest first) until at most SIZE is resident:
    /// PUT /memory/reclaim.
    Reclaim {
        #[command(flatten)]
        sock: Sock,
        /// Resident guest RAM to reach, e.g. 256M.
        #[arg(long)]
        to: String,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep resident guest RAM under SIZE by reclaiming when the VM grows past it (`off`
    /// removes the limit): PATCH /memory.
    Limit {
        #[command(flatten)]
        sock: Sock,
        /// The limit (e.g. 512M), or off.
        size: String,
    },
    /// The limit, reclaims done, bytes paged out, major faults (swap-ins): GET /memory/reclaim.
    Status {
        #[command(flatten)]
        sock: Sock,
    },
    /// In-VMM swap for hosts without swap: write the guest's memory to a new file, drop it
    /// from RAM and serve it back on access through userfaultfd (the guest pauses while it is
    /// written): PUT /memory/swap-out.
    SwapOut {
        #[command(flatten)]
        sock: Sock,
        /// The swap file to create (must not exist; on a disk filesystem that can punch holes).
        #[arg(long, value_name = "PATH")]
        file: PathBuf,
        /// Only memory outside the working set (nothing written to it in the last window of
        /// the working-set estimate); the working set stays resident. Refused, with tracking
        /// started, until the first window (2 s) has ended: retry then.
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

fn mib(text: &str, what: &str) -> Result<u64, String> {
    let bytes =
        parse_size(text).ok_or_else(|| format!("{what} `{text}` is not a size (e.g. 256M)"))?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("{what} {text}: give whole MiB"));
    }
    Ok(bytes >> 20)
}

/// A swap-out writes (and a swap-in reads) all of guest RAM before answering; the VMM gives a
/// swap-in 600 s.
const SWAP_TIMEOUT: Duration = Duration::from_secs(660);

fn call_swap(sock: &Sock, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
    call_with_timeout(sock, method, path, body, SWAP_TIMEOUT)
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
        MemoryCmd::Reclaim { sock, to, json } => {
            let body = serde_json::json!({ "target_resident_mib": mib(&to, "--to")? }).to_string();
            let text = call_with_timeout(
                &sock,
                "PUT",
                "/memory/reclaim",
                Some(&body),
                RECLAIM_TIMEOUT,
            )?;
            if json {
                print_json(&text);
                return Ok(ExitCode::SUCCESS);
            }
            let o: memvisor::memory::ReclaimOutcome =
                serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))?;
            println!(
                "resident {} -> {} (target {}): {} paged out in {:.3} s ({}, {})",
                Size(o.resident_before_bytes),
                Size(o.resident_after_bytes),
                Size(o.target_resident_bytes),
                Size(o.paged_out_bytes),
                o.seconds,
                o.method,
                o.order
            );
            for n in &o.notes {
                println!("note: {n}");
            }
        }
        MemoryCmd::Limit { sock, size } => {
            let limit = if size == "off" {
                0
            } else {
                mib(&size, "limit")?
            };
            let body = serde_json::json!({ "resident_limit_mib": limit }).to_string();
            call(&sock, "PATCH", "/memory", Some(&body))?;
            if limit == 0 {
                println!("resident limit removed");
            } else {
                println!("resident limit set to {limit} MiB");
            }
        }
        MemoryCmd::Status { sock } => print_json(&call(&sock, "GET", "/memory/reclaim", None)?),
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
            let text = call_swap(&sock, "PUT", "/memory/swap-out", Some(&body))?;
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
            let text = call_swap(&sock, "PUT", "/memory/swap-in", None)?;
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
