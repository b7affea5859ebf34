//! `memvisor memory`: a running VM's guest memory and host swap — reclaim now, the standing
//! resident limit, and what reclaim has done (talks to `memvisor run --api-sock`).

use super::client::{call, call_with_timeout, print_json, Sock};
use clap::Subcommand;
use memvisor::config::{parse_size, Size};
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
}

fn mib(text: &str, what: &str) -> Result<u64, String> {
    let bytes =
        parse_size(text).ok_or_else(|| format!("{what} `{text}` is not a size (e.g. 256M)"))?;
    if bytes % (1 << 20) != 0 {
        return Err(format!("{what} {text}: give whole MiB"));
    }
    Ok(bytes >> 20)
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
    }
    Ok(ExitCode::SUCCESS)
}
