//! The device event thread: a running VM with a balloon has exactly its vCPU threads, the
//! `devices` thread and the API threads; the balloon's queue notifications reach the device
//! through ioeventfds, never as exits to the VMM; API commands and the statistics timer run on
//! the device thread.

mod common;

use common::{kvm_or_skip, memvisor, text, wait_until, Running};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, Vmm};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Thread names of `pid` with how many threads carry each.
fn thread_names(pid: u32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(c) = std::fs::read_to_string(e.path().join("comm")) {
            *out.entry(c.trim().to_string()).or_default() += 1;
        }
    }
    out
}

#[test]
fn a_vm_with_a_balloon_runs_vcpus_the_device_thread_and_the_api_only() {
    let t = "a_vm_with_a_balloon_runs_vcpus_the_device_thread_and_the_api_only";
    if !kvm_or_skip(t) {
        return;
    }
    let sock = std::env::temp_dir().join(format!("memvisor-devices-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "--vcpus", "1", "-m", "64M"])
        .arg("--api-sock")
        .arg(&sock)
        .args(["--balloon", "amount_mib=0,stats_polling_interval_s=1"])
        .args(["-w", "balloon:data=4M,seconds=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut vm = Running(Some(child));
    let s = sock.to_str().unwrap();
    wait_until("the API", Duration::from_secs(60), || {
        memvisor(&["vm", "status", "--api-sock", s])
            .status
            .success()
    });
    // The statistics timer fires on the device thread: statistics arrive without any other
    // thread.
    wait_until("the guest's statistics", Duration::from_secs(60), || {
        let out = memvisor(&["balloon", "stats", "--api-sock", s]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("free_memory")
    });
    let names = thread_names(pid);
    // The main thread keeps the process's name; API connection threads come and go. KVM adds
    // its own kernel worker to the process of every VM (`kvm-nx-lpage-recovery`, shown
    // truncated): not a memvisor thread. The API has two workers beside its socket threads:
    // `api-reclaim` (reclaim requests and the resident limit) and `vmm-swap` (the in-VMM swap,
    // started with the VM because a thread inherits its starter's seccomp filter, and the API
    // threads may not create files or userfaultfds).
    let allowed = [
        "memvisor",
        "vcpu0",
        "devices",
        "api-accept",
        "api-conn",
        "api-reclaim",
        "vmm-swap",
        "kvm-nx-lpage-re",
    ];
    let unexpected: Vec<_> = names
        .keys()
        .filter(|n| !allowed.contains(&n.as_str()))
        .collect();
    assert!(unexpected.is_empty(), "threads {unexpected:?} in {names:?}");
    for n in [
        "memvisor",
        "vcpu0",
        "devices",
        "api-accept",
        "api-reclaim",
        "vmm-swap",
    ] {
        assert_eq!(names.get(n), Some(&1), "one thread {n}: {names:?}");
    }
    let out = vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
}

/// Inflating 256 MiB: the device processes the guest's notifications (its eventfds woke the
/// device thread) and none of them was an MMIO exit the transport had to forward (what happens
/// when KVM has no ioeventfd for the address or the written value does not match).
#[test]
fn balloon_notifications_arrive_through_ioeventfds() {
    let t = "balloon_notifications_arrive_through_ioeventfds";
    if !kvm_or_skip(t) {
        return;
    }
    let config = VmConfig {
        memory: vec![RegionConfig::anon(384 * MIB)],
        workload: Workload::parse(&["balloon:data=64M,seconds=0"]).unwrap(),
        balloon: Some(balloon::BalloonOptions::default()),
        ..Default::default()
    };
    let mut vmm = Vmm::start(&config).expect("start");
    let dev = vmm.balloon().expect("configured").clone();
    wait_until("the driver", Duration::from_secs(60), || {
        dev.with_device(|d| (d.model.is_activated(), false))
    });
    let link = dev
        .link()
        .expect("a device thread serves the balloon")
        .clone();
    let received = link.received_notifications();
    dev.command(|d| ((), d.model.set_target_mib(256)))
        .expect("the device thread answers");
    let t0 = Instant::now();
    wait_until("the inflate", Duration::from_secs(120), || {
        dev.with_device(|d| (d.model.actual_pages(), false)) as u64 == 256 * MIB / 4096
    });
    eprintln!("inflated 256 MiB in {:?}", t0.elapsed());
    let counters = dev.with_device(|d| (d.model.counters(), false));
    assert_eq!(counters.inflated_pages, 256 * MIB / 4096);
    assert!(link.received_notifications() > received);
    assert_eq!(link.forwarded_notifications(), 0, "a notification exited");
    vmm.request_finish();
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(120)),
        ..Default::default()
    });
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
}
