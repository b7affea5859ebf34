//! Stopping a VM in the middle of guest work: every vCPU thread is joined before `wait`
//! returns (none is left running the guest while its memory goes away), and a stop requested
//! over the API is answered before the API server closes.
//!
//! Regression tests: a stop requested without waiting (to stop all vCPUs in parallel) used to
//! make the later joining stop return at once, leaving the vCPU thread running ("did not stop
//! in time"); and the API server closed the connection of the Shutdown request before its
//! answer was written.

mod common;

use common::{kvm_or_skip, memvisor, text};
use memvisor::config::workload::Workload;
use memvisor::config::VmConfig;
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, Vmm};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names of this process's threads that start with `vcpu`.
fn vcpu_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|c| c.trim().to_string())
        .filter(|c| c.starts_with("vcpu"))
        .collect()
}

#[test]
fn interrupted_run_joins_every_vcpu_thread() {
    if !kvm_or_skip("interrupted_run_joins_every_vcpu_thread") {
        return;
    }
    let config = VmConfig {
        vcpus: 2,
        memory: vec![memvisor::config::RegionConfig::anon(1 << 30)],
        // Long ring-3 work: many passes over all RAM.
        workload: Workload::parse(&["touch:passes=1000"]).unwrap(),
        ..Default::default()
    };
    let mut vmm = Vmm::start(&config).expect("start");
    assert_eq!(vcpu_threads().len(), 2);
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    let setter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let t0 = Instant::now();
    let report = vmm.wait(&RunOptions {
        interrupt: Some(interrupt),
        timeout: Some(Duration::from_secs(60)),
    });
    setter.join().unwrap();
    assert!(
        matches!(report.outcome, Outcome::Interrupted),
        "{:?}",
        report.outcome
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(
        vcpu_threads(),
        Vec::<String>::new(),
        "vCPU threads still running after wait() returned"
    );
    drop(vmm);
}

#[test]
fn stop_over_the_api_is_answered() {
    if !kvm_or_skip("stop_over_the_api_is_answered") {
        return;
    }
    for round in 0..3 {
        let sock =
            std::env::temp_dir().join(format!("memvisor-stop-{}-{round}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let mut child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
            .args(["run", "-m", "1G", "-w", "touch:passes=1000", "--api-sock"])
            .arg(&sock)
            .arg("--runtime-dir")
            .arg(std::env::temp_dir().join(format!("memvisor-stop-rt-{}", std::process::id())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        common::wait_until("the API socket", Duration::from_secs(20), || sock.exists());
        std::thread::sleep(Duration::from_millis(300));
        let out = memvisor(&["vm", "stop", "--api-sock", sock.to_str().unwrap()]);
        let t = text(&out);
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let run = child.wait_with_output().unwrap();
        assert!(out.status.success(), "round {round}: {t}");
        assert!(t.contains("stopped"), "{t}");
        assert_eq!(run.status.code(), Some(130));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!stderr.contains("did not stop in time"), "{stderr}");
    }
}
