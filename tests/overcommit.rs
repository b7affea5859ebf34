//! Host-wide overcommit report: three `memvisor run` processes register in a runtime
//! directory, each configured with 1 GiB but using a fraction of it (one has ballooned part of
//! its memory back); one is killed with SIGKILL. `memvisor report overcommit --all` must list
//! the two live VMs with figures that match what the test reads from /proc itself, skip the
//! killed one as stale, and compute the ratios from the kernel's MemTotal.

mod common;

use common::{
    kvm_or_skip, memvisor, proc_status_kib, report_overcommit_all, text, wait_until, ChildVm,
};
use memvisor::control::api::client::request;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const M: u64 = 1 << 20;
const G: u64 = 1 << 30;

fn start(dir: &Path, name: &str, extra: &[&str]) -> ChildVm {
    let sock = dir.join(format!("{name}.sock"));
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "-m", "1G", "--api-sock"])
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ChildVm {
        child: Some(child),
        sock,
    }
}

fn mem_total() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn three_vms_one_killed_report_all() {
    if !kvm_or_skip("three_vms_one_killed_report_all") {
        return;
    }
    // Removed on drop, also when the test fails.
    let tmp = common::TempDir::new("overcommit");
    let dir = tmp.path().to_path_buf();
    let idle = ["--balloon", "amount_mib=0", "-w"];
    // a: uses 64 MiB of its 1 GiB; b: fills 256 MiB and then balloons 128 MiB of it back;
    // c: will be killed.
    let a = start(
        &dir,
        "a",
        &[
            &idle[..],
            &["random:ws=64M,accesses=200000;balloon:data=64M,seconds=0"],
        ]
        .concat(),
    );
    let b = start(
        &dir,
        "b",
        &[&idle[..], &["balloon:data=256M,seconds=0"]].concat(),
    );
    let mut c = start(
        &dir,
        "c",
        &[&idle[..], &["balloon:data=16M,seconds=0"]].concat(),
    );
    wait_until("three registered VMs", Duration::from_secs(30), || {
        report_overcommit_all(&dir)["live_vms"] == 3
    });
    // b's driver is up and its data written once actual follows a target.
    let (s, _) = request(&b.sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 128}"#)).unwrap();
    assert_eq!(s, 204);
    wait_until("b's balloon at 128 MiB", Duration::from_secs(60), || {
        let (_, body) = request(&b.sock, "GET", "/balloon/device", None).unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["actual_mib"] == 128
    });
    wait_until("a's working set", Duration::from_secs(60), || {
        let (_, body) = request(&a.sock, "GET", "/memory/report", None).unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["resident_bytes"]
            .as_u64()
            .unwrap()
            >= 64 * M
    });

    // SIGKILL c: it cannot unregister.
    let c_pid = c.pid();
    let mut child = c.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        dir.join(format!("vm-{c_pid}.json")).exists(),
        "a killed VM leaves its entry"
    );

    let r = report_overcommit_all(&dir);
    assert_eq!(r["live_vms"], 2, "{r:#}");
    assert_eq!(r["skipped_vms"], 1, "{r:#}");
    let vms = r["vms"].as_array().unwrap();
    let dead = vms.iter().find(|v| v["pid"] == c_pid).unwrap();
    assert!(dead["memory"].is_null());
    assert!(
        dead["skipped"]
            .as_str()
            .unwrap()
            .contains(&format!("process {c_pid} is gone")),
        "{dead:#}"
    );
    let mut configured = 0;
    let mut used = 0;
    for vm in [&a, &b] {
        let v = vms.iter().find(|v| v["pid"] == vm.pid()).expect("listed");
        let m = &v["memory"];
        assert_eq!(m["configured_bytes"], G);
        let resident = m["resident_bytes"].as_u64().unwrap();
        // Guest RAM resident fits in the VMM's whole RSS, read here from /proc.
        let rss = proc_status_kib(vm.pid(), "VmRSS:").unwrap() * 1024;
        assert!(
            resident <= rss,
            "pid {}: resident {resident} > VmRSS {rss}",
            vm.pid()
        );
        assert!(
            resident < G / 2,
            "most of the 1 GiB is untouched: {resident}"
        );
        configured += m["configured_bytes"].as_u64().unwrap();
        used += m["used_bytes"].as_u64().unwrap();
    }
    let mb = vms.iter().find(|v| v["pid"] == b.pid()).unwrap();
    assert_eq!(mb["memory"]["ballooned_bytes"], 128 * M);
    assert_eq!(r["ballooned_bytes"], 128 * M);
    assert_eq!(r["configured_bytes"], configured);
    assert_eq!(r["used_bytes"], used);
    // Ratios from the kernel's MemTotal, as the test reads it.
    let total = mem_total();
    assert_eq!(r["host"]["mem_total"], total);
    let ratio = r["overcommit_ratio"].as_f64().unwrap();
    assert!(
        (ratio - configured as f64 / total as f64).abs() < 1e-12,
        "{ratio}"
    );
    let density = r["density"].as_f64().unwrap();
    assert!((density - configured as f64 / used as f64).abs() < 1e-9);
    assert!(
        density > 2.0,
        "configured 2 GiB over {used} used: {density}"
    );

    // The readable table says the same, and --prune removes the stale entry.
    let out = memvisor(&[
        "report",
        "overcommit",
        "--all",
        "--prune",
        "--runtime-dir",
        dir.to_str().unwrap(),
    ]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("2 answering, 1 skipped"), "{t}");
    assert!(t.contains(&format!("process {c_pid} is gone")), "{t}");
    assert!(t.contains("overcommit ratio"), "{t}");
    assert!(!dir.join(format!("vm-{c_pid}.json")).exists());
    assert_eq!(report_overcommit_all(&dir)["skipped_vms"], 0);

    // A VM that stops cleanly unregisters.
    let a_pid = a.pid();
    let out = memvisor(&["vm", "stop", "--api-sock", a.sock.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("a's entry to go", Duration::from_secs(20), || {
        !dir.join(format!("vm-{a_pid}.json")).exists()
    });
    drop((a, b, c));
}
