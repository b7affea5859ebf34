//! Least privilege: the seccomp filters catch a forbidden call and say so, let the work of each
//! thread kind through (setup's deny-list too), are really installed on every thread of
//! `memvisor run` (and not at all with `--seccomp off`), and a running VMM has no network
//! sockets. Prealloc threads and sync-hook vCPU threads: `tests/seccomp_threads.rs`.
//!
//! Cases that install a filter run in a child process (this test binary again, with
//! `MEMVISOR_SECCOMP_CASE` naming the case), so a trap can be observed and never takes the test
//! harness down. About 5 s in all (three short `memvisor run`s).

mod common;

use common::{
    case, child, kvm_or_skip, memvisor, root_or_skip, skip, text, thread_seccomp, uffd_or_skip,
    wait_until, Running, TempDir, CASE,
};
use memvisor::config::RegionConfig;
use memvisor::memory::GuestRam;
use memvisor::seccomp::{SeccompMode, ThreadFilter, ThreadKind};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// In the child: runs `f` on a thread named `name` that installed the `kind` filter in `mode`
/// (a trap aborts the process). The caller exits the process with 0 afterwards.
fn on_filtered_thread(name: &str, kind: ThreadKind, mode: SeccompMode, f: impl FnOnce() + Send) {
    let filter = ThreadFilter::new(mode, kind).unwrap();
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn_scoped(s, move || {
                filter.apply().unwrap();
                f();
            })
            .unwrap()
            .join()
            .unwrap();
    });
}

#[test]
fn a_forbidden_call_is_reported_and_the_vmm_aborts() {
    let t = "a_forbidden_call_is_reported_and_the_vmm_aborts";
    match case().as_deref() {
        Some("socket") => on_filtered_thread("vcpu7", ThreadKind::Vcpu, SeccompMode::On, || {
            // SAFETY: plain socket(2); never returns here under the filter.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            println!("socket returned {fd}");
        }),
        Some("open") => on_filtered_thread("devices", ThreadKind::Devices, SeccompMode::On, || {
            let r = std::fs::File::open("/etc/hostname");
            println!("open returned {r:?}");
        }),
        Some("open-eacces") => {
            // The uffd handler may not open files either, but the call fails instead of
            // trapping (the C library's allocator tries one on that thread).
            on_filtered_thread("uffd-handler", ThreadKind::Uffd, SeccompMode::On, || {
                let r = std::fs::File::open("/etc/hostname");
                println!("open failed: {:?}", r.err().and_then(|e| e.raw_os_error()));
            })
        }
        Some("fork") => on_filtered_thread("memvisor", ThreadKind::Setup, SeccompMode::On, || {
            // Setup may do nearly anything, but not make a process (clone without
            // CLONE_THREAD).
            // SAFETY: fork(2); a child that got through exits at once.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: _exit in the forked child, which must not run anything else.
                unsafe { libc::_exit(0) };
            }
            println!("fork returned {pid}");
        }),
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    if case().is_some() {
        std::process::exit(0);
    }
    for (case, thread, kind, call) in [
        ("socket", "vcpu7", "vCPU", "socket (41)"),
        ("open", "devices", "device event thread", "openat (257)"),
        ("fork", "memvisor", "setup", "clone (56)"),
    ] {
        assert_trapped(
            case,
            &child(t, case),
            &[
                format!("thread `{thread}` ({kind} filter, tid "),
                format!("made a forbidden system call: {call}"),
                "--seccomp off".into(),
                "--seccomp log".into(),
            ],
        );
    }
    let out = child(t, "open-eacces");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("open failed: Some({})", libc::EACCES)),
        "{}",
        text(&out)
    );
    // The same socket call as a vCPU thread's arguments show it: AF_INET, SOCK_STREAM.
    let out = child(t, "socket");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("arguments 0x2, 0x1, 0x0"),
        "{}",
        text(&out)
    );
}

#[test]
fn log_mode_allows_the_call_and_the_kernel_logs_it() {
    let t = "log_mode_allows_the_call_and_the_kernel_logs_it";
    if case().is_some() {
        on_filtered_thread("vcpu3", ThreadKind::Vcpu, SeccompMode::Log, || {
            // SAFETY: plain socket(2), closed at once.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            assert!(fd >= 0, "log mode lets the call through");
            // SAFETY: closes the descriptor just created.
            unsafe { libc::close(fd) };
        });
        std::process::exit(0);
    }
    if dmesg().is_none() {
        skip(
            t,
            "dmesg is not readable here: the kernel's log records are not checked",
        );
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([t, "--exact", "--nocapture", "--test-threads=1"])
        .env(CASE, "log")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // The kernel's audit record of the SECCOMP_RET_LOG action: type 1326, this child's pid,
    // the thread's name, syscall 41 (socket).
    let wanted = |l: &&str| {
        l.contains("type=1326")
            && l.contains(&format!(" pid={pid} "))
            && l.contains("comm=\"vcpu3\"")
            && l.contains(" syscall=41 ")
    };
    let t0 = Instant::now();
    while let Some(log) = dmesg() {
        if log.lines().any(|l| wanted(&l)) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            // The kernel prints audit records through a rate limit when no audit daemon
            // listens; a burst of them (from anything on the host) can drop ours.
            let limited = log.lines().any(|l| l.contains("kauditd_printk_skb"));
            if limited {
                skip(t, "no audit record in dmesg, and the kernel's audit printk rate limit dropped records");
                return;
            }
            panic!("no audit record of the logged socket call (pid {pid}) in dmesg");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn dmesg() -> Option<String> {
    let out = Command::new("dmesg").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_work_of_each_thread_kind_passes_its_filter() {
    let t = "the_work_of_each_thread_kind_passes_its_filter";
    match case().as_deref() {
        Some("vcpu") => {
            // Eventfds and the VM are made before vCPU threads start.
            let ram = test_ram();
            let vm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
            let kvm = memvisor::devices::pci::KvmIrq::new(vm.kvm(), vm.fd()).unwrap();
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            // A notification forwarded to the device thread is written by the vCPU thread
            // (and read here); a guest moving a virtio-pci BAR moves its ioeventfds.
            let fwd = evt.try_clone().unwrap();
            on_filtered_thread("vcpu0", ThreadKind::Vcpu, SeccompMode::On, move || {
                use memvisor::devices::events::IoeventRegistrar;
                fwd.write(1).unwrap();
                kvm.register(&fwd, 0xe000_3000, None).unwrap();
                kvm.unregister(&fwd, 0xe000_3000, None).unwrap();
            });
            assert_eq!(evt.read().unwrap(), 1);
            std::process::exit(0);
        }
        Some("devices") => {
            // The device thread's epoll set and descriptors are made before it is filtered.
            let ram = test_ram();
            let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
            let ev = vmm_sys_util::epoll::EpollEvent::new(vmm_sys_util::epoll::EventSet::IN, 1);
            epoll
                .ctl(
                    vmm_sys_util::epoll::ControlOperation::Add,
                    evt.as_raw_fd(),
                    ev,
                )
                .unwrap();
            let mut timer = vmm_sys_util::timerfd::TimerFd::new().unwrap();
            evt.write(1).unwrap();
            // A disk's image is opened (and locked) before the VM runs.
            let tmp = TempDir::new("seccomp-disk");
            let img = tmp.path().join("disk.img");
            std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
            let image = block::RawImage::open(&img, false, false).unwrap();
            on_filtered_thread("devices", ThreadKind::Devices, SeccompMode::On, move || {
                let mut ready = [vmm_sys_util::epoll::EpollEvent::default(); 4];
                assert_eq!(epoll.wait(1000, &mut ready).unwrap(), 1);
                assert_eq!(evt.read().unwrap(), 1);
                timer
                    .reset(Duration::from_millis(1), Some(Duration::from_secs(1)))
                    .unwrap();
                assert!(timer.wait().unwrap() >= 1);
                // The balloon's discards and reclaims.
                device_work(&ram);
                // The disks' I/O: every request type's host calls.
                disk_work(image);
            });
            drop(tmp);
            std::process::exit(0);
        }
        Some("irq") => {
            // The balloon's virtio-pci interrupts. Made at setup: the GSI, its eventfd and the
            // irqfd (KVM_IRQFD). On a vCPU thread (an MSI-X table write): pointing the route
            // (KVM_SET_GSI_ROUTING) and sending; on API and device threads: sending, an
            // eventfd write. INTx from all three: an irqfd write to assert, nothing to deassert
            // (KVM lowers the line at the guest's EOI), and on the device thread the resample
            // eventfd's read and the write that raises the line again.
            let (vm, _vcpu) = irqchip_vm();
            let route =
                std::sync::Arc::new(std::sync::Mutex::new(vm.irq_routing().route().unwrap()));
            let irq = memvisor::devices::pci::KvmIrq::new(vm.kvm(), vm.fd()).unwrap();
            let line = irq.intx(10).unwrap();
            for kind in [ThreadKind::Vcpu, ThreadKind::Api, ThreadKind::Devices] {
                let filter = ThreadFilter::new(SeccompMode::On, kind).unwrap();
                let (line, route) = (line.clone(), route.clone());
                let resample = line.resample_event().unwrap();
                std::thread::spawn(move || {
                    use memvisor::devices::pci::{IntxLine, MsiRoute};
                    filter.apply().unwrap();
                    let mut route = route.lock().unwrap();
                    if kind == ThreadKind::Vcpu {
                        route.set(0xfee0_0000, 0x30).unwrap();
                    }
                    route.send().unwrap();
                    line.set_level(true).unwrap();
                    line.set_level(false).unwrap();
                    if kind == ThreadKind::Devices {
                        resample.write(1).unwrap(); // as KVM does at an EOI
                        assert_eq!(resample.read().unwrap(), 1);
                        line.set_level(true).unwrap();
                    }
                })
                .join()
                .unwrap();
            }
            std::process::exit(0);
        }
        Some("setup") => {
            let dir = TempDir::new("seccomp-setup");
            on_filtered_thread("memvisor", ThreadKind::Setup, SeccompMode::On, || {
                // What `memvisor run` does before the VM runs: map memory (memfd too), create
                // the VM and a vCPU, bind the API socket, connect to a page server, write the
                // runtime-directory entry, start threads.
                let ram = test_ram();
                let vm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
                vm.create_vcpu(0).unwrap();
                let sock = dir.path().join("api.sock");
                let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
                let _client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
                drop(listener.accept().unwrap());
                std::fs::write(dir.path().join("vm-1.json"), b"{}").unwrap();
                std::thread::spawn(|| std::fs::read_to_string("/proc/self/status").unwrap())
                    .join()
                    .unwrap();
            });
            drop(dir);
            std::process::exit(0);
        }
        Some("api") => {
            let ram = test_ram();
            on_filtered_thread("api-conn", ThreadKind::Api, SeccompMode::On, || {
                // What GET /memory/report does, and a thread of its own (clone3 fails with ENOSYS,
                // the C library falls back to clone, whose flags say CLONE_THREAD).
                let report = memvisor::report::overcommit::VmMemory::read(&ram, None);
                assert_eq!(report.configured_bytes, 24 << 20);
                std::thread::spawn(|| std::fs::read_to_string("/proc/self/status").unwrap())
                    .join()
                    .unwrap();
            })
        }
        Some(other) => panic!("unknown case {other}"),
        None => {}
    }
    if case().is_some() {
        std::process::exit(0);
    }
    if !kvm_or_skip(t) {
        return;
    }
    for case in ["vcpu", "devices", "irq", "api", "setup"] {
        let out = child(t, case);
        assert!(
            out.status.success(),
            "{case}: {:?}\n{}",
            out.status,
            text(&out)
        );
    }
}

/// A VM with the in-kernel irqchip and vCPU 0 (APIC id 0).
fn irqchip_vm() -> (memvisor::vmm::vm::Vm, kvm_ioctls::VcpuFd) {
    let ram = GuestRam::new(&[RegionConfig::anon(16 << 20)]).unwrap();
    let vm = memvisor::vmm::vm::Vm::new(&ram).unwrap();
    vm.fd().create_irq_chip().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    (vm, vcpu)
}

/// The GSI routing table is only rewritten on vCPU threads (MSI-X table and configuration
/// writes) and irqfds are only made at setup: the device thread may do neither (it only writes
/// the eventfds: `the_work_of_each_thread_kind_passes_its_filter`), a vCPU thread may not make
/// irqfds, and no thread may send an MSI or set an INTx level by ioctl any more.
#[test]
fn interrupt_routing_ioctls_are_allowed_only_where_they_are_made() {
    let t = "interrupt_routing_ioctls_are_allowed_only_where_they_are_made";
    use memvisor::devices::pci::MsiRoute;
    use memvisor::seccomp::rules::{KVM_IRQFD, KVM_IRQ_LINE, KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI};
    let threads = [
        ("vcpu0", ThreadKind::Vcpu, "vCPU"),
        ("api-conn", ThreadKind::Api, "API"),
        ("devices", ThreadKind::Devices, "device event thread"),
    ];
    if let Some(c) = case() {
        let (vm, _vcpu) = irqchip_vm();
        let mut route = vm.irq_routing().route().unwrap();
        let fd = vm.fd().as_raw_fd();
        let evt = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (call, thread) = c.split_once('@').expect("call@thread");
        let &(name, kind, _) = threads.iter().find(|k| k.0 == thread).unwrap();
        on_filtered_thread(name, kind, SeccompMode::On, move || {
            let r = match call {
                "routing" => format!("{:?}", route.set(0xfee0_0000, 0x30)),
                "irqfd" => format!("{:?}", vm.fd().register_irqfd(&evt, 40)),
                "msi" => {
                    let msi = kvm_bindings::kvm_msi {
                        address_lo: 0xfee0_0000,
                        data: 0x30,
                        ..Default::default()
                    };
                    // SAFETY: KVM_SIGNAL_MSI reads one kvm_msi from a live reference.
                    let r = unsafe { libc::ioctl(fd, KVM_SIGNAL_MSI as _, &msi as *const _) };
                    r.to_string()
                }
                "irq-line" => format!("{:?}", vm.fd().set_irq_line(10, true)),
                other => panic!("unknown call {other}"),
            };
            println!("{call} returned {r}");
        });
        std::process::exit(0);
    }
    if !kvm_or_skip(t) {
        return;
    }
    let mut forbidden = vec![
        ("routing", "devices", KVM_SET_GSI_ROUTING),
        ("routing", "api-conn", KVM_SET_GSI_ROUTING),
        ("irqfd", "vcpu0", KVM_IRQFD),
        ("irqfd", "devices", KVM_IRQFD),
    ];
    forbidden.extend(threads.iter().map(|k| ("msi", k.0, KVM_SIGNAL_MSI)));
    forbidden.extend(threads.iter().map(|k| ("irq-line", k.0, KVM_IRQ_LINE)));
    for (call, thread, request) in forbidden {
        let kind = threads.iter().find(|k| k.0 == thread).unwrap().2;
        let case = format!("{call}@{thread}");
        assert_trapped(
            &case,
            &child(t, &case),
            &[
                format!("thread `{thread}` ({kind} filter, tid "),
                "made a forbidden system call: ioctl (16), arguments ".to_string(),
                format!(", {request:#x}, "),
            ],
        );
    }
}

/// The child of `case` aborted on its forbidden call (which printed nothing after it: the call
/// did not return) and its report says each of `wanted`.
fn assert_trapped(case: &str, out: &std::process::Output, wanted: &[String]) {
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGABRT),
        "{case}: the child must abort: {:?}\n{}",
        out.status,
        text(out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("returned"),
        "{case}: the call went through:\n{}",
        text(out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    for want in wanted {
        assert!(
            err.contains(want.as_str()),
            "{case}: no `{want}` in:\n{err}"
        );
    }
}

/// 16 MiB of anonymous and 8 MiB of memfd memory (the discard paths with and without a file).
fn test_ram() -> GuestRam {
    GuestRam::new(&[
        RegionConfig::parse(0, "size=16M,thp=off").unwrap(),
        RegionConfig::parse(1, "size=8M,backend=memfd").unwrap(),
    ])
    .unwrap()
}

/// Balloon work on the device thread: guest memory written, discarded (madvise; fallocate for
/// memfd), residency read (mincore), reclaimed with populate (MADV_POPULATE_WRITE).
fn device_work(ram: &GuestRam) {
    use vm_memory::{Bytes, GuestAddress};
    let mem = ram.memory();
    let all = ram.size();
    mem.write_slice(&vec![0x5a; all as usize], GuestAddress(0))
        .unwrap();
    let before: u64 = ram.resident_bytes().iter().sum();
    let out = ram.discard(0, all).unwrap();
    assert_eq!(out.released, all);
    let after: u64 = ram.resident_bytes().iter().sum();
    assert!(after < before, "resident {before} -> {after}");
    assert_eq!(mem.read_obj::<u64>(GuestAddress(all - 8)).unwrap(), 0);
    ram.reclaim(0, 1 << 20, true).unwrap();
    let back: u64 = ram.resident_bytes().iter().sum();
    assert!(back >= 1 << 20, "populated again: {back}");
}

/// What a disk's requests do to its image: write, read, flush, discard, write-zeroes (with and
/// without a hole).
fn disk_work(mut image: block::RawImage) {
    use block::DiskBackend;
    let data = vec![0x5au8; 8192];
    image.write_at(&data, 4096).unwrap();
    let mut back = vec![0u8; 8192];
    image.read_at(&mut back, 4096).unwrap();
    assert_eq!(back, data);
    image.flush().unwrap();
    // A discard is a hint (false: the file system cannot punch holes); write-zeroes is not.
    let punched = image.discard(4096, 4096).unwrap();
    image.write_zeroes(8192, 2048, false).unwrap();
    image.write_zeroes(10240, 2048, true).unwrap();
    image.read_at(&mut back, 4096).unwrap();
    assert!(back[4096..].iter().all(|&b| b == 0), "zeroed");
    assert_eq!(back[..4096].iter().all(|&b| b == 0), punched, "discarded");
}

/// Inodes of the sockets `pid` holds.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// Socket inodes listed in `/proc/<pid>/net/<table>` (column `inode`).
fn net_table_inodes(pid: u32, table: &str) -> BTreeSet<u64> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
        return BTreeSet::new();
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    // tcp/udp/raw headers have "tx_queue rx_queue" and "tr tm->when" as single columns in the
    // data rows but two words in the header; unix has a plain "Inode" column.
    let col = if table == "unix" {
        header.iter().position(|h| *h == "Inode").unwrap()
    } else {
        header.iter().position(|h| *h == "inode").unwrap() - 2
    };
    lines
        .filter_map(|l| l.split_whitespace().nth(col)?.parse().ok())
        .collect()
}

/// Starts `memvisor run --seccomp MODE` with the API, a balloon (statistics thread) and, where
/// userfaultfd works, a uffd region (handler thread); returns the thread table once the VM
/// answers its API, and the socket check; stops it through the API.
fn run_and_inspect(dir: &Path, mode: &str, uffd: bool) -> (BTreeMap<String, (u32, u32)>, u32) {
    let sock = dir.join(format!("{mode}.sock"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_memvisor"));
    cmd.args(["run", "--seccomp", mode, "-m", "32M"]);
    if uffd {
        cmd.args(["-m", "size=16M,backend=uffd"]);
    }
    cmd.arg("--api-sock")
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(dir)
        .args(["--balloon", "amount_mib=0,stats_polling_interval_s=1"])
        .args(["-w", "balloon:data=4M,seconds=0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = child.id();
    let mut vm = Running(Some(child));
    let s = sock.to_str().unwrap();
    wait_until("the API", Duration::from_secs(30), || {
        memvisor(&["vm", "status", "--api-sock", s])
            .status
            .success()
    });
    // The main thread installs its filter right after the VM started; give it the moment.
    if mode != "off" {
        wait_until("the main thread's filter", Duration::from_secs(10), || {
            thread_seccomp(pid).get("main").is_some_and(|m| m.0 == 2)
        });
    }
    // Exercise the API (connection threads, /proc reads) before looking.
    let report = memvisor(&["report", "overcommit", "--api-sock", s]);
    assert!(report.status.success(), "{mode}: {}", text(&report));
    let threads = thread_seccomp(pid);
    // Nothing on the network: every socket of the process is a Unix socket; none is in the
    // TCP, UDP or raw tables of its network namespace.
    // (Sockets held both before and after the tables are read: an API connection may close
    // meanwhile.)
    let held = socket_inodes(pid);
    let tables: Vec<(&str, BTreeSet<u64>)> = [
        "tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6", "unix",
    ]
    .into_iter()
    .map(|t| (t, net_table_inodes(pid, t)))
    .collect();
    let sockets: BTreeSet<u64> = held.intersection(&socket_inodes(pid)).copied().collect();
    assert!(!sockets.is_empty(), "the API socket at least");
    for (table, inodes) in &tables[..8] {
        let common: Vec<_> = sockets.intersection(inodes).collect();
        assert!(
            common.is_empty(),
            "{mode}: sockets {common:?} are in net/{table}"
        );
    }
    let other: Vec<_> = sockets.difference(&tables[8].1).collect();
    assert!(
        other.is_empty(),
        "{mode}: sockets {other:?} are not AF_UNIX"
    );
    let stop = memvisor(&["vm", "stop", "--api-sock", s]);
    assert!(stop.status.success(), "{}", text(&stop));
    let out = vm.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{mode}: {}", text(&out));
    (threads, sockets.len() as u32)
}

#[test]
fn memvisor_run_filters_every_thread_unless_off_and_has_no_network_sockets() {
    let t = "memvisor_run_filters_every_thread_unless_off_and_has_no_network_sockets";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    let uffd = uffd_or_skip(t);
    // The socket check finds an inet socket where there is one: this test's own listener.
    let me = std::process::id();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mine = socket_inodes(me);
    let tcp = net_table_inodes(me, "tcp");
    assert_eq!(mine.intersection(&tcp).count(), 1, "{mine:?} {tcp:?}");
    assert!(mine.is_disjoint(&net_table_inodes(me, "unix")));
    drop(listener);
    let dir = TempDir::new("seccomp");
    let mut kinds = vec![
        "main",
        "vcpu0",
        "api-accept",
        "api-reclaim",
        "devices",
        "vmm-swap",
    ];
    if uffd {
        kinds.push("uffd-handler");
    }
    for mode in ["on", "log"] {
        let (threads, _) = run_and_inspect(dir.path(), mode, uffd);
        for k in &kinds {
            let (seccomp, filters) = threads
                .get(*k)
                .unwrap_or_else(|| panic!("{mode}: no thread {k} in {threads:?}"));
            assert_eq!(
                *seccomp, 2,
                "{mode}: {k} runs in seccomp filter mode: {threads:?}"
            );
            // Every thread has the setup filters of the main thread (the clone3 filter and the
            // deny-list: it was started during setup, or is the main thread) and its own: API
            // main, the API threads and vmm-swap the clone3 filter and the allow-list, the uffd handler the
            // openat-EACCES filter and the allow-list, the others the allow-list.
            let own = if matches!(
                *k,
                "main" | "api-accept" | "api-reclaim" | "vmm-swap" | "uffd-handler"
            ) {
                2
            } else {
                1
            };
            assert_eq!(*filters, 2 + own, "{mode}: {k}: {threads:?}");
        }
    }
    let (threads, _) = run_and_inspect(dir.path(), "off", uffd);
    for k in &kinds {
        assert_eq!(
            threads.get(*k).map(|s| s.0),
            Some(0),
            "off: {k} has no filter: {threads:?}"
        );
    }
}
