//! Client subcommands that talk to a running `memvisor run --api-sock PATH`:
//! `memvisor balloon ...`, `memvisor vm ...`, `memvisor report mappings|overcommit ...`
//! (`report overcommit --all` reads the runtime directory instead of one socket).

use clap::{Args, Subcommand};
use memvisor::config::parse_size;
use memvisor::control::api::client;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct Sock {
    /// The API socket given to `memvisor run --api-sock`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum BalloonCmd {
    /// Set the balloon target (e.g. 256M, 1G; 0 deflates fully): PATCH /balloon.
    Set {
        /// Target size of the balloon.
        size: String,
        #[command(flatten)]
        sock: Sock,
    },
    /// Target and options (Firecracker's `Balloon`): GET /balloon.
    Status {
        #[command(flatten)]
        sock: Sock,
    },
    /// Target and actual size with the guest's latest statistics (Firecracker's
    /// `BalloonStats`): GET /balloon/statistics.
    Stats {
        #[command(flatten)]
        sock: Sock,
    },
    /// memvisor's extras: actual size, driver up or not, negotiated features, bytes returned
    /// to the host, when statistics last arrived, device counters: GET /balloon/device.
    Device {
        #[command(flatten)]
        sock: Sock,
    },
}

#[derive(Subcommand, Debug)]
pub enum VmCmd {
    /// State, configuration and per-vCPU exit counts: GET /vm.
    Status {
        #[command(flatten)]
        sock: Sock,
    },
    /// Pause every vCPU: PUT /vm {"state":"Paused"}.
    Pause {
        #[command(flatten)]
        sock: Sock,
    },
    /// Resume: PUT /vm {"state":"Resumed"}.
    Resume {
        #[command(flatten)]
        sock: Sock,
    },
    /// Stop the guest cleanly (memvisor run still prints its report): PUT /actions Shutdown.
    Stop {
        #[command(flatten)]
        sock: Sock,
    },
    /// Built-in guest: end its balloon step now (it verifies its data and goes on with the rest
    /// of its workload): PUT /actions FinishBalloonStep.
    FinishStep {
        #[command(flatten)]
        sock: Sock,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// GPA→HPA map of a running VM: GET /memory/mappings.
    Mappings {
        #[command(flatten)]
        sock: Sock,
        /// Only this guest-physical address range (with --len).
        #[arg(long)]
        gpa: Option<String>,
        /// Length of the range (e.g. 2M).
        #[arg(long)]
        len: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Overcommit figures: of one VM (--api-sock: GET /memory/report), or host-wide (--all:
    /// every VM registered in the runtime directory against MemTotal, stale entries skipped).
    Overcommit {
        /// The API socket of one VM.
        #[arg(long, value_name = "PATH", required_unless_present = "all")]
        api_sock: Option<PathBuf>,
        /// Every VM registered in the runtime directory, plus host memory, hugepage pools, KSM.
        #[arg(long, conflicts_with = "api_sock")]
        all: bool,
        /// The runtime directory (default as for `memvisor run --runtime-dir`).
        #[arg(long, value_name = "DIR", requires = "all")]
        runtime_dir: Option<PathBuf>,
        /// Remove stale entries (VMs that were killed) after reporting them.
        #[arg(long, requires = "all")]
        prune: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn call(sock: &Sock, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
    call_with_timeout(sock, method, path, body, client::DEFAULT_TIMEOUT)
}

/// [`call`] for requests that may take long (an answer waits for the work).
pub fn call_with_timeout(
    sock: &Sock,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: std::time::Duration,
) -> Result<String, String> {
    let (status, text) = client::request_with_timeout(&sock.api_sock, method, path, body, timeout)
        .map_err(|e| e.to_string())?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["fault_message"].as_str().map(String::from))
            .unwrap_or(text);
        return Err(format!("{method} {path}: {status}: {msg}"));
    }
    Ok(text)
}

pub fn print_json(text: &str) {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => println!("{}", serde_json::to_string_pretty(&v).expect("serialises")),
        Err(_) => println!("{text}"),
    }
}

pub fn balloon(cmd: BalloonCmd) -> Result<ExitCode, String> {
    match cmd {
        BalloonCmd::Set { size, sock } => {
            let bytes = parse_size(&size)
                .ok_or_else(|| format!("`{size}` is not a size (e.g. 256M, 1G)"))?;
            if bytes % (1 << 20) != 0 {
                return Err(format!("{size}: the balloon moves in whole MiB"));
            }
            let body = format!("{{\"amount_mib\": {}}}", bytes >> 20);
            call(&sock, "PATCH", "/balloon", Some(&body))?;
            println!("balloon target set to {} MiB", bytes >> 20);
        }
        BalloonCmd::Status { sock } => print_json(&call(&sock, "GET", "/balloon", None)?),
        BalloonCmd::Stats { sock } => print_json(&call(&sock, "GET", "/balloon/statistics", None)?),
        BalloonCmd::Device { sock } => print_json(&call(&sock, "GET", "/balloon/device", None)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// `PUT /actions {"action_type": ACTION}`.
fn put_action(sock: &Sock, action: &str) -> Result<String, String> {
    let body = serde_json::json!({ "action_type": action }).to_string();
    call(sock, "PUT", "/actions", Some(&body))
}

pub fn vm(cmd: VmCmd) -> Result<ExitCode, String> {
    match cmd {
        VmCmd::Status { sock } => print_json(&call(&sock, "GET", "/vm", None)?),
        VmCmd::Pause { sock } => {
            call(&sock, "PUT", "/vm", Some(r#"{"state": "Paused"}"#))?;
            println!("paused");
        }
        VmCmd::Resume { sock } => {
            call(&sock, "PUT", "/vm", Some(r#"{"state": "Resumed"}"#))?;
            println!("resumed");
        }
        VmCmd::Stop { sock } => {
            put_action(&sock, "Shutdown")?;
            println!("stopped");
        }
        VmCmd::FinishStep { sock } => {
            put_action(&sock, "FinishBalloonStep")?;
            println!("balloon step finishing");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(cmd: ReportCmd) -> Result<ExitCode, String> {
    match cmd {
        ReportCmd::Mappings {
            sock,
            gpa,
            len,
            json,
        } => {
            let mut path = "/memory/mappings".to_string();
            if let Some(g) = gpa {
                path.push_str(&format!("?gpa={g}"));
                if let Some(l) = len {
                    let bytes =
                        parse_size(&l).ok_or_else(|| format!("--len `{l}` is not a size"))?;
                    path.push_str(&format!("&len={bytes}"));
                }
            }
            let text = call(&sock, "GET", &path, None)?;
            if json {
                print_json(&text);
            } else {
                let m: memvisor::report::mappings::MappingReport =
                    serde_json::from_str(&text).map_err(|e| format!("unexpected answer: {e}"))?;
                print!("{}", m.to_text());
            }
        }
        ReportCmd::Overcommit {
            api_sock,
            all,
            runtime_dir,
            prune,
            json,
        } => {
            if all {
                let dir = memvisor::report::registry::RuntimeDir::or_default(runtime_dir);
                let r = memvisor::control::host_report::collect(&dir).map_err(|e| e.to_string())?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&r).expect("serialises"));
                } else {
                    print!("{}", r.to_text());
                }
                if prune {
                    for f in dir.prune().map_err(|e| e.to_string())? {
                        eprintln!("removed stale entry {}", f.display());
                    }
                }
            } else {
                let sock = Sock {
                    api_sock: api_sock.expect("clap requires --api-sock without --all"),
                };
                let text = call(&sock, "GET", "/memory/report", None)?;
                if json {
                    print_json(&text);
                } else {
                    let m: memvisor::report::overcommit::VmMemory = serde_json::from_str(&text)
                        .map_err(|e| format!("unexpected answer: {e}"))?;
                    println!("VM {} ({})", m.pid, sock.api_sock.display());
                    print!("{}", m.to_text());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
