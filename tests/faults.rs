//! Fault injection: what memvisor does when something it depends on fails under a running
//! guest. Each test breaks one thing and checks that the VMM reports it and stops (or carries
//! on) cleanly instead of hanging or dying.

mod common;

use common::{kvm_or_skip, parse_uffd_msg, uffd_copy, uffd_or_skip, TempDir, UFFD_EVENT_PAGEFAULT};
use memvisor::abi::WORK_AREA_GPA;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::Outcome;
use memvisor::runner::{RunOptions, Vmm};
use memvisor::workload::Workload;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

const M: u64 = 1 << 20;

/// An external page-fault handler that serves `serve` faults with zero-filled pages and then
/// dies (drops the descriptor and the socket), as a crashed handler process would.
fn dying_handler(listener: UnixListener, serve: u64) -> std::thread::JoinHandle<u64> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::io::IoSliceMut;
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut uffd: Option<OwnedFd> = None;
        let mut body = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<UnixAddr>(
                stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .unwrap();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    // SAFETY: a descriptor just received, owned by nobody else.
                    uffd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
                }
            }
            let n = msg.bytes;
            assert!(n > 0, "EOF during the handshake");
            body.extend_from_slice(&buf[..n]);
            if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                break;
            }
        }
        let uffd = uffd.expect("descriptor");
        let page = vec![0u8; 4096];
        let mut served = 0;
        while served < serve {
            let mut msg = [0u8; 32];
            match nix::unistd::read(&uffd, &mut msg) {
                Ok(32) => {}
                Ok(n) => panic!("short uffd read {n}"),
                Err(nix::errno::Errno::EAGAIN) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                Err(e) => panic!("read uffd: {e}"),
            }
            let (event, addr) = parse_uffd_msg(&msg);
            if event == UFFD_EVENT_PAGEFAULT {
                let _ = uffd_copy(uffd.as_raw_fd(), addr & !4095, &page);
                served += 1;
            }
        }
        // Dies: the descriptor and the socket close with the thread.
        drop(uffd);
        drop(stream);
        served
    })
}

#[test]
fn external_uffd_handler_dies_and_the_guest_is_stopped() {
    let t = "external_uffd_handler_dies_and_the_guest_is_stopped";
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("uffd-dies");
    let sock = dir.path().join("handler.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handler = dying_handler(listener, 100);
    let config = VmConfig {
        vcpus: 1,
        memory: vec![
            RegionConfig::anon(WORK_AREA_GPA),
            RegionConfig::parse(
                1,
                &format!(
                    "size=64M,backend=uffd,handler=external,socket={}",
                    sock.display()
                ),
            )
            .unwrap(),
        ],
        // Reads every page of the uffd region: the 101st fault is never served.
        workload: Workload::parse(&["checksum"]).unwrap(),
        ..Default::default()
    };
    let mut vmm = Vmm::start(&config).expect("start");
    let t0 = Instant::now();
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    assert_eq!(handler.join().unwrap(), 100);
    let took = t0.elapsed();
    match &report.outcome {
        Outcome::PagerDied { regions } => assert_eq!(regions, &vec![1]),
        o => panic!("expected the dead handler to be reported, got {o:?}"),
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(report.outcome.exit_code(), 1);
    let text = report.to_text();
    assert!(text.contains("page server of region(s) [1] died"), "{text}");
    // The VMM itself is intact: its memory still reads.
    use vm_memory::{Bytes, GuestAddress};
    let _: u64 = vmm
        .ram()
        .memory()
        .read_obj(GuestAddress(WORK_AREA_GPA - 8))
        .unwrap();
    let _ = M;
}

/// A region of `pages` huge pages on `dir` mapped the way another process would (shared,
/// without MAP_NORESERVE): `Err` when the pool cannot back it.
fn map_hugetlb_file(dir: &std::path::Path, pages: u64) -> std::io::Result<memmap2::MmapMut> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("drain"))?;
    std::fs::remove_file(dir.join("drain"))?;
    f.set_len(pages * 2 * M)?;
    // SAFETY: a fresh, unlinked file only this mapping uses.
    unsafe { memmap2::MmapOptions::new().map_mut(&f) }
}

#[test]
fn hugetlb_pool_drained_by_someone_else_cannot_take_the_guests_pages() {
    use common::{pool, root_or_skip, skip, HugePool, HugetlbfsMount};
    use hugepages::HugePageSize;
    use std::sync::{Arc, Mutex};
    let t = "hugetlb_pool_drained_by_someone_else_cannot_take_the_guests_pages";
    if !kvm_or_skip(t) || !root_or_skip(t) {
        return;
    }
    const GUEST_PAGES: u64 = 16; // 32 MiB
    const SPARE: u64 = 8;
    let pool_guard = match HugePool::reserve(HugePageSize::Size2M, GUEST_PAGES + SPARE) {
        Ok(p) => p,
        Err(e) => {
            skip(t, format!("cannot grow the 2M pool: {e}"));
            return;
        }
    };
    let mount = HugetlbfsMount::new(HugePageSize::Size2M).expect("mount hugetlbfs");
    let config = VmConfig {
        vcpus: 1,
        memory: vec![
            RegionConfig::anon(WORK_AREA_GPA),
            RegionConfig::parse(
                1,
                &format!(
                    "size={}M,backend=hugetlbfs,mem-path={}",
                    GUEST_PAGES * 2,
                    mount.path().display()
                ),
            )
            .unwrap(),
        ],
        // The guest has touched none of its huge pages when the drain happens.
        workload: Workload::parse(&["sync:tag=1;fill:seed=5;verify:seed=5"]).unwrap(),
        ..Default::default()
    };
    let outcome: Arc<Mutex<Option<String>>> = Arc::default();
    let seen = outcome.clone();
    let dir = mount.path().to_path_buf();
    let hook: memvisor::vcpu::SyncHook = Arc::new(move |_, _, _| {
        // Someone else asks for every free page of the pool: the kernel refuses, since the
        // guest's pages were reserved when memvisor mapped them; the spare pages it can have.
        let free = pool(HugePageSize::Size2M).free;
        let all = map_hugetlb_file(&dir, free);
        let spare = map_hugetlb_file(&dir, SPARE).map(|mut m| {
            m.fill(1); // really takes them
            m
        });
        *seen.lock().unwrap() = Some(format!(
            "free {free}: all -> {}, spare -> {}",
            all.as_ref().map(|_| "mapped").unwrap_or("refused"),
            spare.as_ref().map(|_| "mapped").unwrap_or("refused")
        ));
        assert!(all.is_err(), "the guest's reserved pages were handed out");
        assert!(spare.is_ok(), "{:?}", spare.err());
        // Hold the spare pages while the guest runs on.
        std::mem::forget(spare);
    });
    let mut vmm = memvisor::runner::Vmm::start_with(
        &config,
        memvisor::runner::StartOptions {
            sync: Some(hook),
            ..Default::default()
        },
    )
    .expect("start");
    let report = vmm.wait(&RunOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    eprintln!("{:?}", outcome.lock().unwrap());
    assert!(
        matches!(report.outcome, Outcome::Completed),
        "{}",
        report.to_text()
    );
    let verify = report.ops.iter().find(|o| o.name == "verify").unwrap();
    assert_eq!(verify.mismatches, 0);
    assert_eq!(
        outcome
            .lock()
            .unwrap()
            .as_deref()
            .map(|s| s.contains("all -> refused")),
        Some(true)
    );
    drop(vmm);
    drop(mount);
    drop(pool_guard);
}

#[test]
fn api_socket_removed_under_a_running_vm() {
    use common::memvisor;
    use std::process::{Command, Stdio};
    let t = "api_socket_removed_under_a_running_vm";
    if !kvm_or_skip(t) {
        return;
    }
    let dir = TempDir::new("sock-removed");
    let sock = dir.path().join("api.sock");
    let rt = dir.path().join("rt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args([
            "run",
            "-m",
            "256M",
            "-w",
            "touch:passes=100000",
            "--api-sock",
        ])
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(&rt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    std::fs::remove_file(&sock).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the VM keeps running");
    let out = memvisor(&[
        "report",
        "overcommit",
        "--all",
        "--runtime-dir",
        rt.to_str().unwrap(),
    ]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("API socket") && text.contains("is gone"),
        "{text}"
    );
    // The VM still stops cleanly on SIGTERM and prints its report.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&out.stdout).contains("outcome: interrupted"));
}

#[test]
fn balance_notices_a_guest_that_stops_answering() {
    use std::process::{Command, Stdio};
    let t = "balance_notices_a_guest_that_stops_answering";
    if !kvm_or_skip(t) {
        return;
    }
    let dir = TempDir::new("unresponsive");
    let sock = dir.path().join("api.sock");
    let rt = dir.path().join("rt");
    // The driver answers for 3 s, then the guest does something else for a long time.
    let mut child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "-m", "1G", "--api-sock"])
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(&rt)
        .args([
            "--balloon",
            "amount_mib=0,stats_polling_interval_s=1",
            "-w",
            "balloon:data=256M,seconds=3;touch:passes=100000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    // A floor no host meets: the controller takes a step every second while it can.
    let out = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["balance", "--runtime-dir"])
        .arg(&rt)
        .args([
            "--min-host-free",
            "100T",
            "--max-step",
            "64M",
            "--interval",
            "0.5",
            "--unresponsive-after",
            "2",
            "--duration",
            "9",
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("inflate"),
        "it moved the balloon first:\n{text}"
    );
    assert!(
        text.contains("unresponsive: balloon stuck"),
        "it noticed the guest stopped answering:\n{text}"
    );
    // After noticing, no further inflation of that guest.
    let after = text
        .split("unresponsive: balloon stuck")
        .nth(1)
        .unwrap_or_default();
    assert!(!after.contains("inflate"), "{text}");
}
