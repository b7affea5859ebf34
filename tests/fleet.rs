//! The overcommitted fleet: several built-in-guest VMs whose configured RAM together is twice
//! the memory they are allowed to use, half of them with KSM (`mergeable=on`, KSM running), and
//! `memvisor balance` keeping the host's floor. The guests fill data sets that together want more
//! than the budget and verify them all along; the controller takes memory back through their
//! balloons. At the end every guest verifies every byte it still owns, and
//! `report overcommit --all` (taken mid-run) shows the ratios.
//!
//! CI size: 4 VMs x 1 GiB, budget 2 GiB, 40 s. Full size (README recipe):
//! `MEMVISOR_FLEET_VMS=8 MEMVISOR_FLEET_VM_MEM=4G MEMVISOR_FLEET_SECONDS=120 cargo test --release
//! --test fleet -- --nocapture`.
//!
//! The budget is enforced through the controller's floor: `min-host-free` = `MemAvailable` at
//! the start minus the budget. Other processes allocating or freeing memory meanwhile move that
//! floor's meaning; run it on a quiet host.

mod common;

use common::{kvm_or_skip, memvisor, root_or_skip, text, TempDir};
use std::path::Path;
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

fn report(rt: &Path) -> serde_json::Value {
    let out = memvisor(&[
        "report",
        "overcommit",
        "--all",
        "--json",
        "--runtime-dir",
        rt.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn overcommitted_fleet_keeps_every_byte() {
    let t = "overcommitted_fleet_keeps_every_byte";
    if !kvm_or_skip(t) {
        return;
    }
    let vms = env_u64("MEMVISOR_FLEET_VMS", 4) as usize;
    let vm_mem = env_u64("MEMVISOR_FLEET_VM_MEM", 1 << 30);
    let seconds = env_u64("MEMVISOR_FLEET_SECONDS", 40);
    let configured = vms as u64 * vm_mem;
    let budget = configured / 2;
    // Every guest wants 70% of its RAM for data: together 1.4x the budget.
    let data = vm_mem / 10 * 7 / M * M;
    let avail = mem_available();
    if avail < budget + (2 << 30) {
        common::skip(
            t,
            format!(
                "MemAvailable {} MiB is too small for a {} MiB budget plus 2 GiB for the host",
                avail / M,
                budget / M
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
                    "balloon:data={}M,seconds={seconds},seed=3",
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
    while report(&rt)["live_vms"].as_u64() != Some(vms as u64) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "VMs did not register"
        );
        std::thread::sleep(Duration::from_millis(200));
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
            "--duration",
        ])
        .arg((seconds - 5).to_string())
        .arg("--record")
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run picture, once the controller has had time to act.
    std::thread::sleep(Duration::from_secs(seconds * 3 / 4));
    let mid = report(&rt);
    let out = controller.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{log}");
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
        "fleet: {vms} VMs x {} MiB = {} MiB configured, budget {} MiB, data wanted {} MiB",
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
        used <= budget + 256 * M,
        "the fleet used {} MiB, over the {} MiB budget:\n{log}",
        used / M,
        budget / M
    );
    if ksm {
        assert!(saved > 0, "KSM saved nothing in the mergeable half");
    }
}
