//! Boots the built-in guest through KVM and checks what really happened: bytes in guest memory,
//! vCPU threads, exit counters, failure and interrupt paths, the CLI's main job.

mod common;

use common::{kvm_or_skip, memvisor, text};
use memvisor::abi::{pattern_word, BOOT_INFO_GPA, BOOT_INFO_MAGIC, WORK_AREA_GPA};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, Vmm};
use vm_memory::{Bytes, GuestAddress};

fn config(mib: u64, vcpus: u32, steps: &str) -> VmConfig {
    VmConfig {
        vcpus,
        memory: vec![RegionConfig::anon(mib << 20)],
        workload: Workload::parse(&[steps]).unwrap(),
        ..Default::default()
    }
}

#[test]
fn guest_pattern_reads_back_on_the_host() {
    if !kvm_or_skip("guest_pattern_reads_back_on_the_host") {
        return;
    }
    let mut vmm = Vmm::start(&config(64, 1, "fill:seed=77;verify:seed=77")).unwrap();
    let report = vmm.wait(&RunOptions::default());
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    let mem = vmm.ram().memory();
    let mut buf = vec![0u8; (64 << 20) - WORK_AREA_GPA as usize];
    mem.read_slice(&mut buf, GuestAddress(WORK_AREA_GPA))
        .unwrap();
    let bad = buf
        .chunks_exact(8)
        .enumerate()
        .filter(|(i, w)| {
            u64::from_le_bytes((*w).try_into().unwrap())
                != pattern_word(WORK_AREA_GPA + 8 * *i as u64, 77)
        })
        .count();
    assert_eq!(
        bad, 0,
        "every word of the work area holds the guest's pattern"
    );
    // The guest kept to the work area: its boot info is intact.
    assert_eq!(
        mem.read_obj::<u64>(GuestAddress(BOOT_INFO_GPA)).unwrap(),
        BOOT_INFO_MAGIC
    );
    // The guest's own verification agrees.
    let verify = report.ops.iter().find(|o| o.name == "verify").unwrap();
    assert_eq!(verify.amount, (64 << 20) - WORK_AREA_GPA);
    assert_eq!(verify.mismatches, 0);
    // A word changed behind the guest's back is caught by the host-side check too.
    mem.write_obj(0u64, GuestAddress(WORK_AREA_GPA + 4096))
        .unwrap();
    assert_ne!(
        mem.read_obj::<u64>(GuestAddress(WORK_AREA_GPA + 4096))
            .unwrap(),
        pattern_word(WORK_AREA_GPA + 4096, 77)
    );
}

fn thread_names() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .map(|l| l.split(':').nth(1).unwrap().trim().to_string())
            .unwrap_or_default();
        v.push((comm.trim().to_string(), cpus));
    }
    v
}

#[test]
fn two_vcpus_run_on_named_threads_and_split_the_work() {
    if !kvm_or_skip("two_vcpus_run_on_named_threads_and_split_the_work") {
        return;
    }
    let mut c = config(64, 2, "fill:seed=5;random:accesses=20M;verify:seed=5");
    c.pin.insert(1, 0);
    let mut vmm = Vmm::start(&c).unwrap();
    let names = thread_names();
    let report = vmm.wait(&RunOptions::default());
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    let vcpu1 = names.iter().find(|(n, _)| n == "vcpu1");
    assert!(
        names.iter().any(|(n, _)| n == "vcpu0"),
        "threads: {names:?}"
    );
    assert_eq!(
        vcpu1.map(|(_, c)| c.as_str()),
        Some("0"),
        "vcpu1 pinned to CPU 0: {names:?}"
    );
    let work = (64 << 20) - WORK_AREA_GPA;
    for v in &report.vcpus {
        let fill = v
            .ops
            .iter()
            .find(|o| o.name == "fill")
            .expect("each vCPU filled");
        assert_eq!(
            fill.results[0],
            work / 2,
            "vcpu{} filled half the work area",
            v.id
        );
        let verify = v.ops.iter().find(|o| o.name == "verify").unwrap();
        assert_eq!(verify.results[1], 0);
    }
    // Both halves hold the pattern: the first and last word of each share.
    let mem = vmm.ram().memory();
    for gpa in [
        WORK_AREA_GPA,
        WORK_AREA_GPA + work / 2 - 8,
        WORK_AREA_GPA + work / 2,
        (64 << 20) - 8,
    ] {
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(gpa)).unwrap(),
            pattern_word(gpa, 5),
            "at {gpa:#x}"
        );
    }
}

#[test]
fn exit_counters_equal_guest_hypercalls() {
    if !kvm_or_skip("exit_counters_equal_guest_hypercalls") {
        return;
    }
    let report = memvisor::runner::run(
        &config(32, 2, "touch;checksum;read:stride=64K;fill;verify"),
        &RunOptions::default(),
    )
    .unwrap();
    assert!(matches!(report.outcome, Outcome::Completed));
    for v in &report.vcpus {
        // begin + end per step, plus done.
        assert_eq!(v.guest_hypercalls, Some(2 * 5 + 1));
        assert_eq!(v.hypercall_exits, v.guest_hypercalls.unwrap());
        assert_eq!(v.exits.get("io_out").copied(), v.guest_hypercalls);
    }
    assert_eq!(report.exits("io_out"), 22);
}

#[test]
fn default_run_touches_all_512_mib() {
    if !kvm_or_skip("default_run_touches_all_512_mib") {
        return;
    }
    let out = memvisor(&["run", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["outcome"]["kind"], "completed");
    let touch = &r["ops"][0];
    assert_eq!(touch["name"], "touch");
    assert_eq!(
        touch["amount"],
        512 * 256,
        "one touch per 4 KiB page of 512 MiB"
    );
    assert_eq!(r["ops"][2]["mismatches"], 0);
    assert_eq!(
        r["regions"][0]["resident"],
        512u64 << 20,
        "every page of guest RAM is resident on the host"
    );
}

#[test]
fn triple_fault_exits_non_zero_with_the_reason() {
    if !kvm_or_skip("triple_fault_exits_non_zero_with_the_reason") {
        return;
    }
    let out = memvisor(&["run", "--memory", "32M", "--triple-fault"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("vCPU 0") && t.contains("triple fault") && t.contains("RIP 0x"),
        "{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

#[test]
fn guest_exception_is_reported_with_vector_and_rip() {
    if !kvm_or_skip("guest_exception_is_reported_with_vector_and_rip") {
        return;
    }
    let out = memvisor(&["run", "--memory", "32M", "-w", "fault"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("#UD") && t.contains("vector 6") && t.contains("RIP 0x"),
        "{t}"
    );
}

#[test]
fn ctrl_c_stops_the_guest_and_still_reports() {
    if !kvm_or_skip("ctrl_c_stops_the_guest_and_still_reports") {
        return;
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "--memory", "64M", "-w", "random:accesses=100G"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The guest runs (memvisor installs its signal handlers before it starts the vCPUs).
    common::wait_until(
        "the guest to run",
        std::time::Duration::from_secs(60),
        || !common::threads_named(child.id(), "vcpu0").is_empty(),
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(130), "{t}");
    assert!(
        t.contains("outcome: interrupted") && t.contains("vcpu0"),
        "{t}"
    );
}

#[test]
fn bad_cli_input_names_the_flag() {
    for (args, needle) in [
        (vec!["run", "--memory", "size=12X"], "memory region 0"),
        (vec!["run", "--vcpus", "0"], "--vcpus"),
        (vec!["run", "--pin", "zero=1"], "--pin"),
        (vec!["run", "-w", "dance"], "--workload"),
        (vec!["run", "--memory", "16M"], "minimum"),
    ] {
        let out = memvisor(&args);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {t}");
        assert!(t.contains(needle), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{t}");
    }
}
