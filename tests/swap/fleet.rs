//! The fleet with swap: half the guests have no balloon, and host swap carries them.
//!
//! Four 512 MiB built-in guests (2 GiB configured) under a 1 GiB budget, `memvisor balance`
//! running with the swap lever on (its default) and the budget as its `--fleet-budget` (its
//! host floor, `MemAvailable` minus the budget and one VM, only guards the host), as in
//! tests/fleet.rs:
//! - vm0 and vm1 have a balloon: they touch all their RAM, keep 150 MiB of data and give the
//!   rest back when the controller inflates;
//! - vm2 and vm3 have none: they fill all 512 MiB with data that compresses about 8:1 (the
//!   pattern in every 8th word, zeros between: `fill:sparse=8`) and keep writing the first
//!   128 MiB (`hold:ws=128M`), so only host swap can take memory from them.
//!
//! Host swap is a 2 GiB zram device (`memvisor swap zram`). Not a swap file: a page reclaimed
//! to a disk swap area is written asynchronously and stays in the swap cache, resident and not
//! counted in `MemAvailable`, until the kernel itself runs short of memory (with 20 GiB free,
//! never): the controller then sees nothing freed and reclaims on, into the guests' working
//! sets (seen in the first version of this test). zram completes the write at once and frees
//! the page, and compressible data is what zram is for.
//!
//! The test passes when the fleet fits its budget with the balloon-less guests' memory partly
//! in swap (the controller's `reclaim` decisions name them), the balloons inflated, and every
//! guest then verifies every word (the balloon-less ones fault their swapped pages back in).

use super::*;
use std::process::{Command, Stdio};
use std::time::Instant;

const M: u64 = 1 << 20;
const VM_MEM: u64 = 512 * M;
const VMS: usize = 4;
const BUDGET: u64 = VMS as u64 * VM_MEM / 2;

/// `memvisor run` of fleet member `i`: with a balloon (a data set of 150 MiB) or without one
/// (fill with compressible data, hold a 128 MiB working set, verify).
fn start_member(i: usize, balloon: bool, dir: &Path, rt: &Path) -> ChildVm {
    let sock = dir.join(format!("vm{i}.sock"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memvisor"));
    cmd.args(["run", "-m", "512M", "--api-sock"])
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(rt)
        .arg("--report-file")
        .arg(dir.join(format!("vm{i}.json")));
    if balloon {
        cmd.args([
            "--balloon",
            "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1",
            "-w",
            "touch:work-only=1;balloon:data=150M,seconds=0,seed=3",
        ]);
    } else {
        cmd.args(["-w", "fill:sparse=8;hold:ws=128M;verify:sparse=8"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let vm = ChildVm {
        child: Some(child),
        sock: sock.clone(),
    };
    wait_until("the API socket", Duration::from_secs(30), || sock.exists());
    vm
}

fn vm_entry(r: &Value, pid: u32) -> &Value {
    r["vms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} in {r:#}"))
}

#[test]
fn fleet_half_without_balloons_is_carried_by_swap() {
    let test = "fleet_half_without_balloons_is_carried_by_swap";
    let Some(t) = swap_test(test, true, "swap-fleet") else {
        return;
    };
    let avail = memvisor::report::overcommit::HostMemory::read()
        .unwrap()
        .mem_available;
    if avail < 2 * BUDGET + 2 * (1 << 30) {
        skip(
            test,
            format!(
                "MemAvailable {} MiB: the fleet needs 2 GiB plus 2 GiB for the host",
                avail / M
            ),
        );
        return;
    }
    zram_2g(&t.zram, &t.state);
    let dir = t.tmp.path();
    let rt = dir.join("rt");
    std::fs::create_dir_all(&rt).unwrap();
    let floor = avail - BUDGET - VM_MEM;
    let record = dir.join("balance.jsonl");
    let mut controller = Running(Some(
        Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(["balance", "--runtime-dir"])
            .arg(&rt)
            .arg("--min-host-free")
            .arg(format!("{}M", floor / M))
            .arg("--fleet-budget")
            .arg(format!("{}M", BUDGET / M))
            .args(["--release-margin", "256M", "--interval", "1"])
            .args(["--psi-limit", "0", "--max-step", "256M", "--record"])
            .arg(&record)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let started = Instant::now();
    let mut vms: Vec<ChildVm> = (0..VMS)
        .map(|i| start_member(i, i < VMS / 2, dir, &rt))
        .collect();
    let pids: Vec<u32> = vms.iter().map(|v| v.pid()).collect();

    // The fleet fits its budget, with the balloon-less half partly in swap.
    let slack = 256 * M + VM_MEM / 8;
    let mut last = Value::Null;
    wait_every(
        "the fleet to fit its budget with the balloon-less guests in swap",
        Duration::from_secs(300),
        Duration::from_secs(1),
        || {
            let r = report_overcommit_all(&rt);
            if r["live_vms"].as_u64() != Some(VMS as u64) {
                return false;
            }
            let used = r["used_bytes"].as_u64().unwrap();
            let swapped: Vec<u64> = pids[VMS / 2..]
                .iter()
                .map(|p| {
                    vm_entry(&r, *p)["memory"]["swapped_bytes"]
                        .as_u64()
                        .unwrap_or(0)
                })
                .collect();
            eprintln!(
                "[{:5.1}s] used {} MiB (budget {} MiB), ballooned {} MiB, swapped {} MiB, balloon-less swapped {:?} MiB",
                started.elapsed().as_secs_f64(),
                used / M,
                BUDGET / M,
                r["ballooned_bytes"].as_u64().unwrap_or(0) / M,
                r["swapped_bytes"].as_u64().unwrap_or(0) / M,
                swapped.iter().map(|s| s / M).collect::<Vec<_>>()
            );
            last = r.clone();
            used <= BUDGET + slack
                && r["ballooned_bytes"].as_u64().unwrap_or(0) > 0
                && swapped.iter().all(|s| *s >= 64 * M)
        },
    );
    let settled = started.elapsed().as_secs_f64();

    // Every guest ends its step and verifies every byte it owns.
    for v in &vms {
        finish(&v.sock);
    }
    for (i, vm) in vms.iter_mut().enumerate() {
        let report = dir.join(format!("vm{i}.json"));
        if i < VMS / 2 {
            let status = vm.child.as_mut().unwrap().wait().unwrap();
            let rep: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
            assert!(status.success(), "vm{i}: {:#}", rep["outcome"]);
            let driver = &rep["vcpus"][0]["balloon_driver"];
            assert_eq!(driver["mismatches"], 0, "vm{i}: {driver:#}");
            assert_eq!(driver["data_bytes"], 150 * M, "vm{i}: {driver:#}");
        } else {
            let (bad, bytes) = verified(vm, &report);
            assert_eq!(bad, 0, "vm{i}: mismatched words after swap");
            // The work area: guest RAM from 16 MiB up.
            assert_eq!(bytes, VM_MEM - 16 * M, "vm{i} verified its whole work area");
        }
    }
    let log = controller.stop_controller();
    eprintln!("controller log:\n{log}");
    let rec = std::fs::read_to_string(&record).unwrap();
    let reclaims = rec.matches(r#""kind":"reclaim""#).count();
    let inflations = log.matches("inflate ").count();
    assert!(reclaims >= 2, "the swap lever was used: {rec}");
    assert!(inflations >= 1, "the balloons were used: {log}");
    assert!(
        log.lines()
            .filter(|l| l.contains("reclaim ") && l.contains("to host swap"))
            .all(|l| !l.contains("FAILED")),
        "{log}"
    );
    eprintln!(
        "fleet with swap (zram, data 8:1 compressible): {VMS} x {} MiB, budget {} MiB; fit after {settled:.0} s: used {} MiB, ballooned {} MiB, swapped {} MiB, density {:.2}; {inflations} inflations, {reclaims} reclaims; every guest verified, 0 mismatches",
        VM_MEM / M,
        BUDGET / M,
        last["used_bytes"].as_u64().unwrap() / M,
        last["ballooned_bytes"].as_u64().unwrap_or(0) / M,
        last["swapped_bytes"].as_u64().unwrap_or(0) / M,
        last["density"].as_f64().unwrap_or(0.0)
    );
}
