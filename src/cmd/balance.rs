//! `memvisor balance`: the memory controller's loop (balloons, then the swap lever; policy in
//! `memvisor::control::balance`).

use clap::Args;
use memvisor::config::parse_size;
use memvisor::control::balance::{self, Controller, Decision, Policy};
use memvisor::report::registry::RuntimeDir;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BalanceArgs {
    /// Runtime directory where the VMs registered (default as for `memvisor run`).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Host free-memory floor (MemAvailable) to keep.
    #[arg(long, default_value = "2G", value_parser = size)]
    min_host_free: u64,
    /// Most memory the registered VMs may use together: resident guest RAM less what KSM saves,
    /// as `memvisor report overcommit --all` counts it (default: no budget). Over it the
    /// controller takes memory as under the floor; both limits hold when both are set. Unlike
    /// the floor, a budget does not move when other processes allocate or free memory.
    #[arg(long, value_name = "SIZE", value_parser = size)]
    fleet_budget: Option<u64>,
    /// Band above the floor (and below the budget) where nothing moves; beyond it memory is
    /// given back to guests short of it.
    #[arg(long, default_value = "1G", value_parser = size)]
    release_margin: u64,
    /// RAM no guest is ballooned below.
    #[arg(long, default_value = "256M", value_parser = size)]
    guest_floor: u64,
    /// Free memory left to each guest when taking from it; a guest with less is short and gets
    /// memory back first (only short guests do) when the host can spare it.
    #[arg(long, default_value = "64M", value_parser = size)]
    headroom: u64,
    /// Largest change of one guest's balloon per decision.
    #[arg(long, default_value = "256M", value_parser = size)]
    max_step: u64,
    /// Memory PSI `some avg10` (percent) that counts as pressure; 0 ignores PSI.
    #[arg(long, default_value_t = 10.0)]
    psi_limit: f64,
    /// Seconds between decisions.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Seconds without balloon movement after which a guest is unresponsive.
    #[arg(long, default_value_t = 15.0)]
    unresponsive_after: f64,
    /// Do not use the swap lever: never reclaim guest memory to host swap (by default, when
    /// the balloons leave memory missing and host swap is active, the coldest memory of the
    /// guests they could not take from is reclaimed to it).
    #[arg(long)]
    no_swap: bool,
    /// Print what it would do without changing any balloon or reclaiming anything.
    #[arg(long)]
    dry_run: bool,
    /// Decide once and exit.
    #[arg(long)]
    once: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
    /// Append every tick's input and decisions as JSON lines to FILE (replayable in tests).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("`{s}` is not a size; write e.g. 2G, 256M"))
}

pub fn run(a: BalanceArgs) -> Result<ExitCode, String> {
    let dir = RuntimeDir::or_default(a.runtime_dir);
    let policy = Policy {
        min_host_free: a.min_host_free,
        fleet_budget: a.fleet_budget,
        release_margin: a.release_margin,
        guest_floor: a.guest_floor,
        headroom: a.headroom,
        max_step: a.max_step,
        psi_limit: (a.psi_limit > 0.0).then_some(a.psi_limit),
        stale_after: (a.interval * 5.0).max(10.0),
        unresponsive_after: a.unresponsive_after,
        swap: !a.no_swap,
    };
    if a.interval.is_nan() || a.interval <= 0.0 {
        return Err("--interval must be more than 0 seconds".into());
    }
    let mut record = match &a.record {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("--record {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    eprintln!(
        "memvisor balance: {} VMs in {}, floor {} MiB free{}, swap lever {}, {}",
        if a.dry_run {
            "watching (dry run)"
        } else {
            "balancing"
        },
        dir.path().display(),
        policy.min_host_free >> 20,
        policy
            .fleet_budget
            .map(|b| format!(", fleet budget {} MiB", b >> 20))
            .unwrap_or_default(),
        if policy.swap { "on" } else { "off" },
        if a.once { "once" } else { "every interval" }
    );
    let mut c = Controller::new(policy);
    let t0 = Instant::now();
    loop {
        let (sample, notes) = balance::sample(&dir, t0.elapsed().as_secs_f64());
        for n in &notes {
            eprintln!("[{:7.1}s] {n}", sample.t);
        }
        let decisions = c.decide(&sample);
        for d in &decisions {
            let applied = if a.dry_run {
                " (dry run)".to_string()
            } else {
                match balance::apply(d) {
                    Ok(()) => String::new(),
                    Err(e) => format!(" FAILED: {e}"),
                }
            };
            println!("[{:7.1}s] {d}{applied}", sample.t);
        }
        if let Some(f) = record.as_mut() {
            let line = serde_json::json!({"sample": sample, "decisions": decisions});
            let _ = writeln!(f, "{line}");
        }
        if decisions.iter().all(|d| matches!(d, Decision::Note { .. })) && a.once {
            println!(
                "[{:7.1}s] no change: host MemAvailable {} MiB, the VMs use {} MiB, {} guest(s), {} with a balloon",
                sample.t,
                sample.host.mem_available >> 20,
                sample.fleet_used() >> 20,
                sample.guests.len(),
                sample.guests.iter().filter(|g| g.balloon).count()
            );
        }
        if a.once
            || stop.load(Ordering::Relaxed)
            || a.duration.is_some_and(|d| t0.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        let until = Instant::now() + Duration::from_secs_f64(a.interval);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(ExitCode::SUCCESS)
}
