//! `memvisor ksm`: look at and steer the host's kernel samepage merging.

use clap::Subcommand;
use ksm::{Ksm, KsmRun};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub enum KsmCmd {
    /// Knobs, global counters (pages shared/sharing, full scans, profit) and this host's state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start merging (run=1).
    On,
    /// Stop merging (run=0); merged pages stay merged. `--unmerge` splits them (run=2).
    Off {
        /// Unmerge every merged page.
        #[arg(long)]
        unmerge: bool,
    },
    /// Scan rate: pages per wake-up and the sleep between wake-ups.
    Tune {
        /// Pages to scan per wake-up (pages_to_scan).
        #[arg(long)]
        pages_to_scan: Option<u64>,
        /// Milliseconds between wake-ups (sleep_millisecs).
        #[arg(long)]
        sleep_ms: Option<u64>,
    },
}

pub fn run(cmd: KsmCmd) -> Result<ExitCode, String> {
    let k = Ksm::system();
    let e = |e: ksm::KsmError| e.to_string();
    let changes = match cmd {
        KsmCmd::Status { json } => {
            if json {
                let v = serde_json::json!({
                    "settings": k.settings().map_err(e)?,
                    "counters": k.counters().map_err(e)?,
                });
                println!("{}", serde_json::to_string_pretty(&v).expect("serialises"));
            } else {
                print!("{}", ksm::status_text(&k).map_err(e)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        KsmCmd::On => vec![k.set_run(KsmRun::Merge).map_err(e)?],
        KsmCmd::Off { unmerge } => vec![k
            .set_run(if unmerge {
                KsmRun::Unmerge
            } else {
                KsmRun::Stop
            })
            .map_err(e)?],
        KsmCmd::Tune {
            pages_to_scan,
            sleep_ms,
        } => {
            if pages_to_scan.is_none() && sleep_ms.is_none() {
                return Err("ksm tune: give --pages-to-scan N and/or --sleep-ms N".into());
            }
            let mut v = Vec::new();
            if let Some(n) = pages_to_scan {
                v.push(k.set_pages_to_scan(n).map_err(e)?);
            }
            if let Some(ms) = sleep_ms {
                v.push(k.set_sleep_millisecs(ms).map_err(e)?);
            }
            v
        }
    };
    for c in changes {
        println!("{c}");
    }
    Ok(ExitCode::SUCCESS)
}
