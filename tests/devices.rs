//! The device event thread: a running VM with a balloon, or with a balloon and disks on a
//! Linux guest's PCI bus, has exactly its vCPU threads, one `devices` thread and the API
//! threads; the balloon's and the disks' queue notifications reach the devices through
//! ioeventfds, never as exits to the VMM; API commands and the statistics timer run on the
//! device thread.

mod common;

use common::{kvm_or_skip, memvisor, text, wait_until, Running, TempDir};
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, Vmm};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// The threads of `pid`: each one's name and `/proc/PID/task/TID` directory.
fn threads(pid: u32) -> Vec<(String, std::path::PathBuf)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((name.trim().to_string(), e.path()))
        })
        .collect()
}

/// Thread names of `pid` with how many threads carry each.
fn thread_names(pid: u32) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (name, _) in threads(pid) {
        *out.entry(name).or_default() += 1;
    }
    out
}

/// Starts `memvisor run ARGS --api-sock SOCK` and waits until its API answers; returns the
/// VM (stopped when dropped) and its pid.
fn run_with_api(args: &[&str], sock: &Path) -> (Running, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .arg("run")
        .args(args)
        .arg("--api-sock")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let vm = Running(Some(child));
    let s = sock.to_str().unwrap();
    wait_until("the API", Duration::from_secs(60), || {
        memvisor(&["vm", "status", "--api-sock", s])
            .status
            .success()
    });
    (vm, pid)
}

/// The threads of a running VM `pid`: its main thread, `vcpu0`, one `devices` thread, the
/// API's threads, nothing else.
fn assert_device_threads_only(pid: u32) {
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
}

#[test]
fn a_vm_with_a_balloon_runs_vcpus_the_device_thread_and_the_api_only() {
    let t = "a_vm_with_a_balloon_runs_vcpus_the_device_thread_and_the_api_only";
    if !kvm_or_skip(t) {
        return;
    }
    let sock = std::env::temp_dir().join(format!("memvisor-devices-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let (mut vm, pid) = run_with_api(
        &[
            "--vcpus",
            "1",
            "-m",
            "64M",
            "--balloon",
            "amount_mib=0,stats_polling_interval_s=1",
            "-w",
            "balloon:data=4M,seconds=0",
        ],
        &sock,
    );
    let s = sock.to_str().unwrap();
    // The statistics timer fires on the device thread: statistics arrive without any other
    // thread.
    wait_until("the guest's statistics", Duration::from_secs(60), || {
        let out = memvisor(&["balloon", "stats", "--api-sock", s]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("free_memory")
    });
    assert_device_threads_only(pid);
    let out = vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
}

/// `Cpus_allowed_list` of the threads of `pid` named `name`.
fn cpus_of(pid: u32, name: &str) -> Vec<String> {
    threads(pid)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, dir)| {
            let status = std::fs::read_to_string(dir.join("status")).unwrap();
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap();
            line.trim().to_string()
        })
        .collect()
}

/// `--pin`: the device thread runs on the pinned vCPUs' CPU unless `devices=CPU` names its own.
#[test]
fn the_device_thread_runs_on_the_vcpus_cpus_or_where_pinned() {
    let t = "the_device_thread_runs_on_the_vcpus_cpus_or_where_pinned";
    if !kvm_or_skip(t) {
        return;
    }
    let cpus = memvisor::config::host_cpus();
    let last = (cpus - 1).to_string();
    let mut cases = vec![(format!("0={last}"), last.clone(), last.clone())];
    if cpus >= 2 {
        cases.push((format!("0={last},devices=0"), last.clone(), "0".to_string()));
    } else {
        common::skip(
            t,
            "one host CPU: the device thread pinned apart from the vCPU was not tried",
        );
    }
    for (pin, vcpu, devices) in cases {
        let sock =
            std::env::temp_dir().join(format!("memvisor-devices-pin-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&sock);
        let (mut vm, pid) = run_with_api(
            &[
                "-m",
                "64M",
                "--pin",
                &pin,
                "--balloon",
                "amount_mib=0",
                "-w",
                "balloon:data=4M,seconds=0",
            ],
            &sock,
        );
        assert_eq!(cpus_of(pid, "vcpu0"), vec![vcpu.clone()], "--pin {pin}");
        assert_eq!(cpus_of(pid, "devices"), vec![devices], "--pin {pin}");
        let out = vm.interrupt(Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    }
    // A CPU that is not online is refused before anything starts.
    let out = memvisor(&["run", "--pin", "devices=100000", "-m", "64M"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("is not online"), "{}", text(&out));
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

/// A Linux guest's PCI bus with a balloon and two disks: still one `devices` thread for all of
/// them (the disks have no thread of their own; their I/O runs on the device thread).
#[test]
fn a_vm_with_disks_runs_them_on_the_one_device_thread() {
    let t = "a_vm_with_disks_runs_them_on_the_one_device_thread";
    if !kvm_or_skip(t) {
        return;
    }
    let tmp = TempDir::new("devices-disks");
    let kernel = tmp.path().join("tiny.elf");
    std::fs::write(&kernel, common::tiny_kernel(&[0xf4, 0xeb, 0xfd])).unwrap(); // hlt loop
    let mut disks = Vec::new();
    for name in ["a.img", "b.img"] {
        let img = tmp.path().join(name);
        std::fs::write(&img, vec![0u8; MIB as usize]).unwrap();
        disks.push(format!("path={}", img.display()));
    }
    let sock = tmp.path().join("api.sock");
    let console = tmp.path().join("console.txt");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (mut vm, pid) = run_with_api(
        &[
            "--vcpus",
            "1",
            "-m",
            "64M",
            "--kernel",
            &path(&kernel),
            "--console",
            &path(&console),
            "--balloon",
            "amount_mib=0",
            "--disk",
            &disks[0],
            "--disk",
            &disks[1],
        ],
        &sock,
    );
    let (_, answer) = common::api(&sock, "GET", "/vm", None);
    let devices = answer["devices"].as_array().expect("a device list");
    assert_eq!(devices.len(), 3, "{answer}");
    assert_device_threads_only(pid);
    let out = vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
}

/// A tiny Linux-protocol kernel turns on memory decoding of the disk (PCI slot 1), reads its
/// BAR and writes queue 0's notification address 200 times, then resets the machine: the
/// writes woke the device thread through the queue's eventfd (the device saw them, as early
/// notifications before DRIVER_OK, and counted them), none was forwarded from a vCPU exit,
/// and the vCPU had fewer MMIO exits than writes.
#[test]
fn disk_notifications_arrive_through_ioeventfds() {
    let t = "disk_notifications_arrive_through_ioeventfds";
    if !kvm_or_skip(t) {
        return;
    }
    const WRITES: u32 = 200;
    let mut code = vec![0x66, 0xba, 0xf8, 0x0c]; // mov dx, 0xcf8
    code.push(0xb8); // mov eax, 00:01.0 register 4 (command)
    code.extend_from_slice(&(0x8000_0000u32 | 1 << 11 | 0x04).to_le_bytes());
    code.push(0xef); // out dx, eax
    code.extend_from_slice(&[0x66, 0xba, 0xfc, 0x0c]); // mov dx, 0xcfc
    code.extend_from_slice(&[0x66, 0xb8, 0x02, 0x00, 0x66, 0xef]); // mov ax, 2; out dx, ax
    code.extend_from_slice(&[0x66, 0xba, 0xf8, 0x0c]); // mov dx, 0xcf8
    code.push(0xb8); // mov eax, 00:01.0 register 0x10 (BAR0)
    code.extend_from_slice(&(0x8000_0000u32 | 1 << 11 | 0x10).to_le_bytes());
    code.push(0xef); // out dx, eax
    code.extend_from_slice(&[0x66, 0xba, 0xfc, 0x0c, 0xed]); // mov dx, 0xcfc; in eax, dx
    code.extend_from_slice(&[0x83, 0xe0, 0xf0]); // and eax, ~0xf
    code.extend_from_slice(&[0x48, 0x05, 0x00, 0x30, 0x00, 0x00]); // add rax, 0x3000 (notify)
    code.push(0xb9); // mov ecx, WRITES
    code.extend_from_slice(&WRITES.to_le_bytes());
    code.extend_from_slice(&[0x66, 0xc7, 0x00, 0x00, 0x00]); // 1: mov word [rax], 0
    code.extend_from_slice(&[0xff, 0xc9, 0x75, 0xf7]); // dec ecx; jnz 1b
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]); // reset; hlt loop
    let tmp = TempDir::new("devices-disk-notify");
    let kernel = tmp.path().join("tiny.elf");
    std::fs::write(&kernel, common::tiny_kernel(&code)).unwrap();
    let img = tmp.path().join("disk.img");
    std::fs::write(&img, vec![0u8; MIB as usize]).unwrap();
    let config = VmConfig {
        memory: vec![RegionConfig::anon(64 * MIB)],
        linux: Some(memvisor::config::linux::LinuxConfig {
            kernel,
            initrd: None,
            cmdline: None,
            console: Some(tmp.path().join("console.txt")),
        }),
        disks: vec![memvisor::config::disk::DiskConfig {
            path: img,
            read_only: false,
            id: "vda".into(),
            direct: false,
        }],
        ..Default::default()
    };
    let mut vmm = Vmm::start(&config).expect("start");
    let disk = vmm.disks()[0].clone();
    let link = disk
        .link()
        .expect("a device thread serves the disk")
        .clone();
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    assert!(
        matches!(report.outcome, Outcome::GuestStopped { .. }),
        "{}",
        report.to_text()
    );
    assert_eq!(disk.ioevent_base(), Some(disk.bar_address()));
    let received = link.received_notifications();
    assert!(
        (1..=u64::from(WRITES)).contains(&received),
        "{received} eventfd wake-ups"
    );
    assert_eq!(link.forwarded_notifications(), 0, "a notification exited");
    assert!(
        disk.bad_accesses() >= received,
        "the device thread counted each early notification"
    );
    let mmio: u64 = report.vcpus[0]
        .exits
        .iter()
        .filter(|(k, _)| k.starts_with("mmio"))
        .map(|(_, n)| n)
        .sum();
    eprintln!("{WRITES} notification writes: {received} eventfd wake-ups, {mmio} MMIO exits");
    assert!(
        mmio < u64::from(WRITES),
        "{mmio} MMIO exits: {:?}",
        report.vcpus[0].exits
    );
}
