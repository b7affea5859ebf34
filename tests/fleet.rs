//! The overcommitted fleet: several built-in-guest VMs whose configured RAM together is twice
//! the memory they are allowed to use, half of them with KSM (`mergeable=on`, KSM running), and
//! `memvisor balance` keeping the host's floor. Every guest first touches all of its RAM (as a
//! guest that used memory and freed it again: together twice the budget), then keeps a data set
//! of 30% of its RAM that it verifies all along; the controller takes the freed memory back
//! through the balloons until the fleet fits the budget. At the end every guest verifies every
//! byte it still owns, and `report overcommit --all` (taken mid-run) shows the ratios.
//!
//! CI size: 4 VMs x 1 GiB, budget 2 GiB, 60 s of balloon phase. Larger (README recipe):
//! `MEMVISOR_FLEET_VMS=8 MEMVISOR_FLEET_VM_MEM=2G MEMVISOR_FLEET_SECONDS=120 cargo test --release
//! --test fleet -- --nocapture` (the guests touch all their RAM first, so it must fit the host).
//!
//! The budget is enforced through the controller's floor: `min-host-free` = `MemAvailable` at
//! the start minus the budget. Other processes allocating or freeing memory meanwhile move that
//! floor's meaning; run it on a quiet host.

mod common;

use common::{kvm_or_skip, report_overcommit_all, root_or_skip, TempDir};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| memvisor::config::parse_size(&v))
        .unwrap_or(default)
}

fn mem_available() -> u64 {
    memvisor::overcommit::HostMemory::read()
        .unwrap()
        .mem_available
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn overcommitted_fleet_keeps_every_byte() {
    let t = "overcommitted_fleet_keeps_every_byte";
    if !kvm_or_skip(t) {
        return;
    }
    let vms = env_u64("MEMVISOR_FLEET_VMS", 4) as usize;
    let vm_mem = env_u64("MEMVISOR_FLEET_VM_MEM", 1 << 30);
    let seconds = env_u64("MEMVISOR_FLEET_SECONDS", 60);
    let configured = vms as u64 * vm_mem;
    let budget = configured / 2;
    // Every guest keeps 30% of its RAM as data after touching all of it.
    let data = vm_mem / 10 * 3 / M * M;
    let avail = mem_available();
    // Every guest touches all its RAM before the controller starts, so the host must hold the
    // whole configured RAM for a moment.
    if avail < configured + (2 << 30) {
        common::skip(
            t,
            format!(
                "MemAvailable {} MiB is too small: the guests touch {} MiB before the controller starts, plus 2 GiB for the host",
                avail / M,
                configured / M
            ),
        );
        return;
    }
    let floor = avail - budget;
    let ksm = root_or_skip("overcommitted_fleet_keeps_every_byte (KSM part)")
        && ksm::Ksm::system().available();
    let sys = ksm::Ksm::system();
    let guard = ksm.then(|| {
        let g = ksm::SettingsGuard::save(&sys).unwrap();
        sys.set_pages_to_scan(5000).unwrap();
        sys.set_sleep_millisecs(10).unwrap();
        sys.set_run(ksm::KsmRun::Merge).unwrap();
        g
    });
    let dir = TempDir::new("fleet");
    let rt = dir.path().join("rt");
    let mut kids = Kill(Vec::new());
    for i in 0..vms {
        let mergeable = if i < vms / 2 { ",mergeable=on" } else { "" };
        kids.0.push(
            Command::new(env!("CARGO_BIN_EXE_memvisor"))
                .args(["run", "-m"])
                .arg(format!("size={}M{mergeable}", vm_mem / M))
                .arg("--api-sock")
                .arg(dir.path().join(format!("vm{i}.sock")))
                .arg("--runtime-dir")
                .arg(&rt)
                .args([
                    "--balloon",
                    "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1",
                    "-w",
                ])
                // The same seed everywhere: the KSM half holds identical pages across VMs.
                .arg(format!(
                    "touch:work-only=1;balloon:data={}M,seconds={seconds},seed=3",
                    data / M
                ))
                .arg("--report-file")
                .arg(dir.path().join(format!("vm{i}.json")))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    while report_overcommit_all(&rt)["live_vms"].as_u64() != Some(vms as u64) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "VMs did not register"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every guest has touched all its RAM (the fleet is far over budget) before the controller
    // starts; the guests' balloon phase runs on for `seconds` after that.
    let t0 = Instant::now();
    loop {
        let r = report_overcommit_all(&rt);
        let res: Vec<u64> = r["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["memory"]["resident_bytes"].as_u64().unwrap_or(0) / M)
            .collect();
        eprintln!(
            "[{:.0}s] resident MiB per VM: {res:?}",
            t0.elapsed().as_secs_f64()
        );
        let touched =
            !res.is_empty()
                && r["vms"].as_array().unwrap().iter().all(|v| {
                    v["memory"]["resident_bytes"].as_u64().unwrap_or(0) >= vm_mem / 10 * 9
                });
        if touched {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the guests did not touch their RAM in 300 s: {:#}",
            r["vms"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let record = dir.path().join("balance.jsonl");
    let controller = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["balance", "--runtime-dir"])
        .arg(&rt)
        .arg("--min-host-free")
        .arg(format!("{}M", floor / M))
        .args([
            "--release-margin",
            "512M",
            "--max-step",
            "256M",
            "--interval",
            "1",
            "--psi-limit",
            "0",
            "--record",
        ])
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The picture once the fleet fits its budget (or the last one before the guests end).
    let budget_slack = 256 * M;
    let mut mid = report_overcommit_all(&rt);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(seconds) {
        if kids.0.iter_mut().any(|k| k.try_wait().unwrap().is_some()) {
            break; // a guest finished its balloon phase
        }
        let r = report_overcommit_all(&rt);
        if r["live_vms"].as_u64() != Some(vms as u64) {
            let why: Vec<String> = r["vms"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["skipped"].as_str().map(String::from))
                .collect();
            eprintln!(
                "[{:.0}s] not every VM answered: {why:?}",
                t0.elapsed().as_secs_f64()
            );
            std::thread::sleep(Duration::from_millis(500));
            continue; // a busy VM did not answer in time; ask again
        }
        eprintln!(
            "[{:.0}s] used {} MiB, ballooned {} MiB",
            t0.elapsed().as_secs_f64(),
            r["used_bytes"].as_u64().unwrap() / M,
            r["ballooned_bytes"].as_u64().unwrap() / M
        );
        mid = r;
        let ballooned = mid["ballooned_bytes"].as_u64().unwrap();
        if ballooned > 0 && mid["used_bytes"].as_u64().unwrap() <= budget + budget_slack {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    for (i, k) in kids.0.iter_mut().enumerate() {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = k.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "vm{i} did not finish"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let rep: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("vm{i}.json"))).unwrap())
                .unwrap();
        assert!(status.success(), "vm{i}: {:#}", rep["outcome"]);
        let balloon = rep["ops"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == "balloon")
            .expect("balloon step");
        assert_eq!(balloon["mismatches"], 0, "vm{i} lost bytes: {balloon:#}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(controller.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = controller.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{log}");
    drop(guard.map(|g| g.restore()));

    // What the controller did and what the fleet used.
    let inflations = log.matches("inflate ").count();
    let used = mid["used_bytes"].as_u64().unwrap();
    let ballooned = mid["ballooned_bytes"].as_u64().unwrap();
    let saved = mid["ksm_saved_bytes"].as_u64().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let min_avail = lines
        .iter()
        .map(|l| l["sample"]["host"]["mem_available"].as_u64().unwrap())
        .min()
        .unwrap();
    eprintln!(
        "fleet: {vms} VMs x {} MiB = {} MiB configured, budget {} MiB, data kept {} MiB",
        vm_mem / M,
        configured / M,
        budget / M,
        vms as u64 * data / M
    );
    eprintln!(
        "mid-run: used {} MiB, ballooned {} MiB, KSM saved {} MiB, overcommit ratio {:.2}, density {:.2}",
        used / M,
        ballooned / M,
        saved / M,
        mid["overcommit_ratio"].as_f64().unwrap(),
        mid["density"].as_f64().unwrap()
    );
    eprintln!(
        "controller: {inflations} inflations, {} ticks, lowest MemAvailable {} MiB (floor {} MiB)",
        lines.len(),
        min_avail / M,
        floor / M
    );
    assert_eq!(mid["live_vms"], vms as u64, "{:#}", mid["vms"]);
    assert_eq!(mid["configured_bytes"], configured);
    assert!(inflations > 0, "the controller never inflated:\n{log}");
    assert!(ballooned > 0);
    // Configured is at least twice what the fleet used (the budget), with 256 MiB slack for
    // the guests' own pages and the step in flight.
    assert!(
        used <= budget + budget_slack,
        "the fleet used {} MiB, over the {} MiB budget:\n{log}",
        used / M,
        budget / M
    );
    if ksm {
        assert!(saved > 0, "KSM saved nothing in the mergeable half");
    }
}
