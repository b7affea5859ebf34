//! The overcommitted fleet: several built-in-guest VMs whose configured RAM together is twice
//! the memory they are allowed to use (the budget), half of them with KSM (`mergeable=on`, KSM
//! running), and `memvisor balance` running from the start to keep the fleet within its budget.
//!
//! The VMs are started one after another. Each first touches all of its RAM (a guest that used
//! memory and freed it again), then keeps a data set of 30% of its RAM that it verifies all
//! along; once the fleet is over its budget the controller takes the freed memory back through
//! the balloons, and the next VM starts only when the fleet is back within it. So the host
//! never has to hold more than the budget plus one VM, and the configured RAM of the whole fleet
//! may be larger than the host's. When every VM runs and the fleet fits its budget,
//! `report overcommit --all` shows the ratios; the fleet then runs on for the hold time, every
//! guest is told to end its balloon step (`PUT /actions FinishBalloonStep`) and verifies every
//! byte it still owns.
//!
//! CI size: 4 VMs x 1 GiB, budget 2 GiB, 20 s hold. Full size (README recipe; more configured
//! RAM than this 24 GiB host has): `MEMVISOR_FLEET_VMS=8 MEMVISOR_FLEET_VM_MEM=4G
//! MEMVISOR_FLEET_SECONDS=120 cargo test --release --test fleet -- --nocapture`.
//!
//! The budget is the controller's `--fleet-budget`: what the VMs use together (resident guest
//! RAM less KSM's savings), the same figure `report overcommit --all` shows and the test
//! checks. Its host floor (`MemAvailable` at the start minus the budget and one VM) only guards
//! the host. An earlier version enforced the budget through that floor alone, which other
//! processes move: on a fresh CI machine `MemAvailable` stayed above the floor while the fleet
//! used 415 MiB more than budget and slack, and the controller, content, held. Should KSM merge
//! enough that the fleet fits without the controller, the ballooning part did not run, and the
//! test says so with a `skip:` line instead of failing. The picture is taken once the guests
//! have followed the controller's first inflations.

mod common;

use common::{
    kvm_or_skip, proc_status_kib, report_overcommit_all, root_or_skip, wait_every, Running, TempDir,
};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| memvisor::config::parse_size(&v))
        .unwrap_or(default)
}

fn mem_available() -> u64 {
    memvisor::report::overcommit::HostMemory::read()
        .unwrap()
        .mem_available
}

/// Lowest `MemAvailable` seen while the fleet runs.
struct Low(u64);

impl Low {
    fn sample(&mut self) -> u64 {
        let a = mem_available();
        self.0 = self.0.min(a);
        a
    }
}

fn start_vm(i: usize, vm_mem: u64, data: u64, mergeable: bool, dir: &Path, rt: &Path) -> Child {
    let mergeable = if mergeable { ",mergeable=on" } else { "" };
    Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "-m"])
        .arg(format!("size={}M{mergeable}", vm_mem / M))
        .arg("--api-sock")
        .arg(dir.join(format!("vm{i}.sock")))
        .arg("--runtime-dir")
        .arg(rt)
        .args([
            "--balloon",
            "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1",
            "-w",
        ])
        // The same seed everywhere: the KSM half holds identical pages across VMs. The balloon
        // step runs until the test asks it to finish.
        .arg(format!(
            "touch:work-only=1;balloon:data={}M,seconds=0,seed=3",
            data / M
        ))
        .arg("--report-file")
        .arg(dir.join(format!("vm{i}.json")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn overcommitted_fleet_keeps_every_byte() {
    let t = "overcommitted_fleet_keeps_every_byte";
    if !kvm_or_skip(t) {
        return;
    }
    let vms = env_u64("MEMVISOR_FLEET_VMS", 4) as usize;
    let vm_mem = env_u64("MEMVISOR_FLEET_VM_MEM", G);
    let hold = env_u64("MEMVISOR_FLEET_SECONDS", 20);
    let configured = vms as u64 * vm_mem;
    let budget = configured / 2;
    // Every guest keeps 30% of its RAM as data after touching all of it.
    let data = vm_mem / 10 * 3 / M * M;
    // Slack for the host's own overhead (VMMs, KVM's page tables) and the step in flight.
    let slack = 256 * M + vm_mem / 8;
    let avail = mem_available();
    // At most the budget plus one VM touching all its RAM, plus 2 GiB for the host.
    if avail < budget + vm_mem + 2 * G {
        common::skip(
            t,
            format!(
                "MemAvailable {} MiB is too small: the fleet needs its {} MiB budget plus one {} MiB VM touching all its RAM, plus 2 GiB for the host",
                avail / M,
                budget / M,
                vm_mem / M
            ),
        );
        return;
    }
    // The host's floor: MemAvailable with the whole budget and one more VM in use. The budget
    // itself is the controller's `--fleet-budget`.
    let floor = avail - budget - vm_mem;
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
    std::fs::create_dir_all(&rt).unwrap();
    // Killed on drop: a failing test leaves nothing running.
    let mut vm_procs: Vec<Running> = Vec::new();
    let record = dir.path().join("balance.jsonl");
    let step = (vm_mem / 4).clamp(256 * M, G) / M;
    let mut controller = Running(Some(
        Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(["balance", "--runtime-dir"])
            .arg(&rt)
            .arg("--min-host-free")
            .arg(format!("{}M", floor / M))
            .arg("--fleet-budget")
            .arg(format!("{}M", budget / M))
            .args(["--release-margin", "512M", "--interval", "1"])
            // The balloons only: host swap another test switches on must not change the run.
            .args(["--no-swap", "--psi-limit", "0", "--max-step"])
            .arg(format!("{step}M"))
            .arg("--record")
            .arg(&record)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut low = Low(avail);
    let started = Instant::now();
    let secs = || started.elapsed().as_secs_f64();
    for i in 0..vms {
        // The fleet is back within its budget and the host can hold one more VM touching all
        // of its RAM.
        wait_every(
            &format!(
                "the fleet to fit its {} MiB budget before starting vm{i}",
                budget / M
            ),
            Duration::from_secs(60 + 30 * vm_mem / G),
            Duration::from_secs(1),
            || {
                let a = low.sample();
                let used = if i == 0 {
                    0
                } else {
                    report_overcommit_all(&rt)["used_bytes"].as_u64().unwrap()
                };
                used <= budget + slack && a >= vm_mem + G
            },
        );
        let mergeable = i < vms / 2;
        vm_procs.push(Running(Some(start_vm(
            i,
            vm_mem,
            data,
            mergeable,
            dir.path(),
            &rt,
        ))));
        let pid = vm_procs[i].child().id();
        // It has touched all its RAM when its RSS shows it, or the balloon took some back.
        let t0 = Instant::now();
        wait_every(
            &format!("vm{i} to touch its RAM"),
            Duration::from_secs(60 + 30 * vm_mem / G),
            Duration::from_millis(250),
            || {
                low.sample();
                let rss = proc_status_kib(pid, "VmRSS:").expect("the VM died") * 1024;
                rss >= vm_mem / 10 * 9
                    || (t0.elapsed() > Duration::from_secs(2)
                        && report_overcommit_all(&rt)["vms"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|v| {
                                v["pid"] == pid
                                    && v["memory"]["ballooned_bytes"].as_u64().unwrap_or(0) > 0
                            }))
            },
        );
        eprintln!(
            "[{:5.1}s] vm{i} ({} MiB{}) has touched its RAM; MemAvailable {} MiB (floor {} MiB)",
            secs(),
            vm_mem / M,
            if mergeable { ", mergeable" } else { "" },
            mem_available() / M,
            floor / M
        );
    }

    // Every VM runs: wait for the fleet to fit its budget with the guests following the
    // controller (some memory ballooned), then take the picture.
    let mut mid = serde_json::Value::Null;
    wait_every(
        "the whole fleet to fit its budget",
        Duration::from_secs(120 + 30 * vm_mem / G),
        Duration::from_secs(1),
        || {
            low.sample();
            let r = report_overcommit_all(&rt);
            if r["live_vms"].as_u64() != Some(vms as u64) {
                let why: Vec<String> = r["vms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v["skipped"].as_str().map(String::from))
                    .collect();
                eprintln!("[{:5.1}s] not every VM answered: {why:?}", secs());
                return false; // a busy VM did not answer in time; ask again
            }
            let used = r["used_bytes"].as_u64().unwrap();
            eprintln!(
                "[{:5.1}s] used {} MiB, ballooned {} MiB, KSM saved {} MiB",
                secs(),
                used / M,
                r["ballooned_bytes"].as_u64().unwrap() / M,
                r["ksm_saved_bytes"].as_u64().unwrap() / M
            );
            // Once the controller has inflated, the picture waits for the guests to follow.
            let inflated = std::fs::read_to_string(&record).is_ok_and(|r| r.contains("set_target"));
            // Or the controller has nothing to do: KSM alone keeps the fleet within its budget
            // (and the host above its floor): the skip case below.
            let idle = !inflated && used <= budget && low.sample() >= floor;
            let fits = idle
                || (used <= budget + slack
                    && (!inflated || r["ballooned_bytes"].as_u64().unwrap() > 0));
            mid = r;
            fits
        },
    );
    let settled_at = secs();
    // The fleet runs on, verifying, under the controller.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(hold) {
        low.sample();
        for (i, k) in vm_procs.iter_mut().enumerate() {
            assert!(
                k.child().try_wait().unwrap().is_none(),
                "vm{i} ended during the hold"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The fleet still fits at the end of the hold: the controller did not hand the balloons
    // back just because the host looked free.
    let end = report_overcommit_all(&rt);
    assert_eq!(end["live_vms"], vms as u64, "{:#}", end["vms"]);
    // Every guest ends its balloon step and verifies every byte it still owns.
    for i in 0..vms {
        let out = common::memvisor(&[
            "vm",
            "finish-step",
            "--api-sock",
            dir.path().join(format!("vm{i}.sock")).to_str().unwrap(),
        ]);
        assert!(out.status.success(), "vm{i}: {}", common::text(&out));
    }
    let mut kept = 0;
    let mut verified = 0;
    for (i, k) in vm_procs.iter_mut().enumerate() {
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = k.child().try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "vm{i} did not finish"
            );
            std::thread::sleep(Duration::from_millis(100));
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
        // The guest still owns all its data, and verified it (the last pass covers all of it).
        let driver = &rep["vcpus"][0]["balloon_driver"];
        assert_eq!(driver["mismatches"], 0, "vm{i}: {driver:#}");
        assert_eq!(driver["data_bytes"], data, "vm{i} gave up data: {driver:#}");
        assert_eq!(balloon["amount"], data, "vm{i}: {balloon:#}");
        assert!(
            driver["verified_bytes"].as_u64().unwrap() >= data,
            "vm{i} did not verify all it kept: {driver:#}"
        );
        kept += data;
        verified += driver["verified_bytes"].as_u64().unwrap();
    }
    let log = controller.stop_controller();
    drop(guard.map(|g| g.restore()));
    eprintln!("controller log:\n{log}");

    // What the controller did and what the fleet used.
    let inflations = log.matches("inflate ").count();
    let deflations = log.matches("deflate ").count();
    let used = mid["used_bytes"].as_u64().unwrap();
    let ballooned = mid["ballooned_bytes"].as_u64().unwrap();
    let saved = mid["ksm_saved_bytes"].as_u64().unwrap();
    let ticks = std::fs::read_to_string(&record).unwrap().lines().count();
    let total = memvisor::report::overcommit::HostMemory::read()
        .unwrap()
        .mem_total;
    eprintln!(
        "fleet: {vms} VMs x {} MiB = {} MiB configured (host MemTotal {} MiB), budget {} MiB, data kept {} MiB",
        vm_mem / M,
        configured / M,
        total / M,
        budget / M,
        kept / M
    );
    eprintln!(
        "settled after {settled_at:.0} s: used {} MiB, resident {} MiB, ballooned {} MiB, KSM saved {} MiB, overcommit ratio {:.2}, density {:.2}",
        used / M,
        mid["resident_bytes"].as_u64().unwrap() / M,
        ballooned / M,
        saved / M,
        mid["overcommit_ratio"].as_f64().unwrap(),
        mid["density"].as_f64().unwrap()
    );
    eprintln!(
        "controller: {inflations} inflations, {deflations} deflations in {ticks} ticks; lowest MemAvailable {} MiB (floor {} MiB); guests verified {} MiB at the end, 0 mismatches",
        low.0 / M,
        floor / M,
        verified / M
    );
    assert_eq!(mid["live_vms"], vms as u64, "{:#}", mid["vms"]);
    assert_eq!(mid["configured_bytes"], configured);
    eprintln!(
        "after the {hold} s hold: used {} MiB, ballooned {} MiB, KSM saved {} MiB, density {:.2}",
        end["used_bytes"].as_u64().unwrap() / M,
        end["ballooned_bytes"].as_u64().unwrap() / M,
        end["ksm_saved_bytes"].as_u64().unwrap() / M,
        end["density"].as_f64().unwrap()
    );
    // The ballooning part runs when the fleet needs the controller; when KSM kept it within
    // its budget all along, it did not run here.
    // The host never ran out: it always had a GiB (or what the floor leaves when lower).
    assert!(
        low.0 >= G.min(floor / 2),
        "MemAvailable fell to {} MiB",
        low.0 / M
    );
    if ksm {
        assert!(saved > 0, "KSM saved nothing in the mergeable half");
    }
    if inflations == 0 {
        // The budget was never exceeded: what the fleet used against it then says nothing
        // about the controller (the data verified above).
        common::skip(
            t,
            format!(
                "the controller was not needed (the fleet used {} MiB of its {} MiB budget, KSM saved {} MiB; lowest MemAvailable {} MiB, floor {} MiB): the ballooning part did not run",
                used / M,
                budget / M,
                saved / M,
                low.0 / M,
                floor / M
            ),
        );
        return;
    }
    assert!(
        end["used_bytes"].as_u64().unwrap() <= budget + slack,
        "after the hold the fleet used {} MiB, over the {} MiB budget:\n{log}",
        end["used_bytes"].as_u64().unwrap() / M,
        budget / M
    );
    assert!(
        end["ballooned_bytes"].as_u64().unwrap() >= ballooned / 2,
        "the balloons were handed back during the hold ({} MiB left of {} MiB):\n{log}",
        end["ballooned_bytes"].as_u64().unwrap() / M,
        ballooned / M
    );
    assert!(ballooned > 0, "{log}");
    // Configured is at least twice what the fleet used (the budget), with slack for the
    // guests' own pages and the step in flight.
    assert!(
        used <= budget + slack,
        "the fleet used {} MiB, over the {} MiB budget:\n{log}",
        used / M,
        budget / M
    );
}
