//! Fault injection: what memvisor does when something it depends on fails under a running
//! guest. Each test breaks one thing and checks that the VMM reports it and stops (or carries
//! on) cleanly instead of hanging or dying. The API socket flooded (silent clients holding
//! every connection slot, a burst of garbage, oversized and half-written requests, clients
//! that hang up) leaves the VMM's threads and descriptors bounded and the guest running, and
//! the API answers again once the flood ends.

mod common;

use common::{
    kvm_or_skip, parse_uffd_msg, threads_named, uffd_copy, uffd_or_skip, TempDir,
    UFFD_EVENT_PAGEFAULT,
};
use memvisor::abi::WORK_AREA_GPA;
use memvisor::config::workload::Workload;
use memvisor::config::{RegionConfig, VmConfig};
use memvisor::report::run::Outcome;
use memvisor::runner::{RunOptions, Vmm};
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

/// Boots a guest whose work area is uffd regions of `sizes` (MiB) on one external handler
/// socket, a handler that dies after 100 faults, and checks the guest is stopped with every
/// one of those regions reported.
fn handler_dies_and_the_guest_is_stopped(t: &str, sizes: &[u64]) {
    if !kvm_or_skip(t) || !uffd_or_skip(t) {
        return;
    }
    let dir = TempDir::new("uffd-dies");
    let sock = dir.path().join("handler.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handler = dying_handler(listener, 100);
    let mut memory = vec![RegionConfig::anon(WORK_AREA_GPA)];
    for (i, size) in sizes.iter().enumerate() {
        let spec = format!(
            "size={size}M,backend=uffd,handler=external,socket={}",
            sock.display()
        );
        memory.push(RegionConfig::parse(i + 1, &spec).unwrap());
    }
    let config = VmConfig {
        vcpus: 1,
        memory,
        // Reads every page of the uffd regions: the 101st fault is never served.
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
    let dead: Vec<usize> = (1..=sizes.len()).collect();
    match &report.outcome {
        Outcome::PagerDied { regions } => assert_eq!(regions, &dead),
        o => panic!("expected the dead handler to be reported, got {o:?}"),
    }
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(report.outcome.exit_code(), 1);
    let text = report.to_text();
    assert!(
        text.contains(&format!("page server of region(s) {dead:?} died")),
        "{text}"
    );
    assert!(text.contains("GONE"), "{text}");
    // The VMM itself is intact: its memory still reads.
    use vm_memory::{Bytes, GuestAddress};
    let _: u64 = vmm
        .ram()
        .memory()
        .read_obj(GuestAddress(WORK_AREA_GPA - 8))
        .unwrap();
    let _ = M;
}

#[test]
fn external_uffd_handler_dies_and_the_guest_is_stopped() {
    let t = "external_uffd_handler_dies_and_the_guest_is_stopped";
    handler_dies_and_the_guest_is_stopped(t, &[64]);
}

/// Two regions share the handler's connection and userfaultfd: both are reported and
/// released when it dies.
#[test]
fn external_uffd_handler_of_two_regions_dies_and_the_guest_is_stopped() {
    let t = "external_uffd_handler_of_two_regions_dies_and_the_guest_is_stopped";
    handler_dies_and_the_guest_is_stopped(t, &[32, 16]);
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
    // The other process's pages, held while the guest runs on and unmapped before the mount
    // goes (a mapping left behind would keep the hugetlbfs mount busy).
    let held: Arc<Mutex<Option<memmap2::MmapMut>>> = Arc::default();
    let hold = held.clone();
    let dir = mount.path().to_path_buf();
    let hook: memvisor::vmm::vcpu::SyncHook = Arc::new(move |_, _, _| {
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
        *hold.lock().unwrap() = spare.ok();
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
    drop(held.lock().unwrap().take());
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
    use common::ChildVm;
    use memvisor::control::api::client::request;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    let t = "balance_notices_a_guest_that_stops_answering";
    if !kvm_or_skip(t) {
        return;
    }
    let dir = TempDir::new("unresponsive");
    let sock = dir.path().join("api.sock");
    let rt = dir.path().join("rt");
    // The driver answers until the test ends its balloon step; then the guest does something
    // else for a long time and never looks at its balloon again. Events, not durations, decide
    // when that happens: a guest slow to start its driver (a loaded host) was once taken for
    // one that stopped answering.
    let vm = ChildVm {
        child: Some(
            Command::new(env!("CARGO_BIN_EXE_memvisor"))
                .args(["run", "-m", "1G", "--api-sock"])
                .arg(&sock)
                .arg("--runtime-dir")
                .arg(&rt)
                .args([
                    "--balloon",
                    "amount_mib=16,stats_polling_interval_s=1",
                    "-w",
                    "balloon:data=256M,seconds=0;touch:passes=1000000",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ),
        sock: sock.clone(),
    };
    common::wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    let actual_mib = || -> u64 {
        request(&sock, "GET", "/balloon/statistics", None)
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["actual_mib"].as_u64())
            .unwrap_or(0)
    };
    // The driver is up and follows its target, also once its data set is filled (the first
    // target is met before the fill; filling 256 MiB took over the controller's 2 s of
    // patience here, and the guest was taken for unresponsive).
    common::wait_until("the driver to follow", Duration::from_secs(120), || {
        actual_mib() >= 16
    });
    let (status, body) =
        request(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 32}"#)).unwrap();
    assert_eq!(status, 204, "{body}");
    common::wait_until(
        "the driver to follow again",
        Duration::from_secs(120),
        || actual_mib() >= 32,
    );
    // A floor no host meets: the controller takes a step every half second while it can.
    let mut balance = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["balance", "--runtime-dir"])
        .arg(&rt)
        .args([
            "--min-host-free",
            "100T",
            // Small steps: the guest has ~750 MiB to give, so it still has some left when
            // the test ends its driver, however slowly this host runs it.
            "--max-step",
            "16M",
            "--interval",
            "0.5",
            "--unresponsive-after",
            "2",
            "--duration",
            "300",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = balance.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Appends the controller's lines to `text` until `done` holds for the text after `from`
    // (or, with `done` never true, for all of `timeout`); returns the new length.
    let collect = |text: &mut String,
                   from: usize,
                   what: &str,
                   timeout: Duration,
                   done: &dyn Fn(&str) -> bool|
     -> Result<usize, String> {
        let t0 = Instant::now();
        while !done(&text[from..]) {
            let Some(left) = timeout.checked_sub(t0.elapsed()) else {
                return Err(format!("timed out after {timeout:?} waiting for {what}"));
            };
            match lines.recv_timeout(left) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(format!("the controller ended before {what}"))
                }
            }
        }
        Ok(text.len())
    };
    let mut text = String::new();
    // 1. The controller moves the balloon of the answering guest, and the guest follows.
    collect(
        &mut text,
        0,
        "a first inflation",
        Duration::from_secs(60),
        &|t| t.contains("inflate"),
    )
    .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    common::wait_until("the guest to follow", Duration::from_secs(60), || {
        actual_mib() >= 48
    });
    while let Ok(line) = lines.try_recv() {
        text.push_str(&line);
        text.push('\n');
    }
    // 2. The guest stops answering: its balloon step ends, the next step never looks back.
    let (status, body) = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FinishBalloonStep"}"#),
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    const NOTICE: &str = "unresponsive: balloon stuck";
    // The controller's view of the guest: not counted on since its last notice.
    let not_counted_on = |t: &str| {
        t.rfind(NOTICE)
            .is_some_and(|n| t.rfind("counted on again").is_none_or(|a| a < n))
    };
    collect(
        &mut text,
        0,
        "the controller to notice",
        Duration::from_secs(60),
        &not_counted_on,
    )
    .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    // 3. Four more ticks of the controller: no further inflation of that guest, and it is not
    // counted on again.
    match collect(&mut text, 0, "", Duration::from_secs(2), &|_| false) {
        Err(e) if e.starts_with("timed out") => {}
        other => panic!("{other:?}:\n{text}"),
    }
    let _ = balance.kill();
    let _ = balance.wait();
    drop(vm);
    reader.join().unwrap();
    let noticed = text.rfind(NOTICE).expect("noticed");
    let after = &text[noticed..];
    assert!(
        !after.contains("inflate"),
        "inflated after noticing:\n{text}"
    );
    assert!(
        !after.contains("counted on again"),
        "counted on again without moving:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// The API socket flooded: silent clients holding every connection slot, and a burst of short,
// malformed, oversized and half-written requests meanwhile.

/// The server's default connection limit (`ApiServerOptions::default().max_connections`).
const MAX_CONNECTIONS: usize = 128;

/// The status of an HTTP answer in `bytes` (`HTTP/1.1 NNN ...`), if there is one.
fn http_status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Everything the server sends on `s` until it closes (or `timeout`). A server that closes
/// with part of the request unread makes the kernel end the stream with ECONNRESET after the
/// answer, so an error after some bytes counts as the end.
fn read_answer(s: &mut std::os::unix::net::UnixStream, timeout: Duration) -> Vec<u8> {
    use std::io::Read;
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out
}

/// One burst request of kind `i % 7`: its answer's status, or `None` for the kind that hangs
/// up without reading (nothing to count). `Some(0)`: no HTTP answer at all.
fn burst_request(sock: &std::path::Path, i: usize) -> Option<u16> {
    use std::io::Write;
    use std::net::Shutdown;
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to the API socket");
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    // Write errors are expected where the server answers (503, 413) before reading it all.
    match i % 7 {
        0 => drop(s.write_all(b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n")),
        1 => drop(s.write_all(b"\x00\x01\x02 NOT HTTP\xff\r\n\r\n")),
        2 => {
            let head = b"PATCH /balloon HTTP/1.1\r\nContent-Length: 10485760\r\n\r\n";
            let _ = s.write_all(head).and_then(|()| s.write_all(&[b'x'; 8192]));
        }
        3 => {
            // Half a request, then end-of-file.
            let _ = s.write_all(b"GET /vm HTTP/1.1\r\nHo");
            let _ = s.shutdown(Shutdown::Write);
        }
        4 => drop(s.write_all(b"GET /nope HTTP/1.1\r\n\r\n")),
        5 => drop(s.write_all(b"PUT /actions HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"action\"")),
        _ => {
            // A whole request, then the client goes away without reading the answer.
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
            return None;
        }
    }
    Some(http_status(&read_answer(&mut s, Duration::from_secs(15))).unwrap_or(0))
}

/// Open file descriptors of `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `voluntary_ctxt_switches` of thread `tid` of `pid`: the vCPU thread blocks once per idle
/// iteration of the guest's balloon driver (`HC_WAIT`), so this counts guest iterations.
fn voluntary_switches(pid: u32, tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn api_socket_flooded_under_a_running_vm() {
    use common::{proc_status_kib, wait_until, ChildVm};
    use memvisor::control::api::client::request;
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let t = "api_socket_flooded_under_a_running_vm";
    if !kvm_or_skip(t) {
        return;
    }
    const SILENT: usize = 400;
    const BURST_THREADS: usize = 4;
    const HANG_UPS: usize = 64;
    let dir = TempDir::new("api-flood");
    let sock = dir.path().join("api.sock");
    let report_file = dir.path().join("report.json");
    let log = dir.path().join("stderr.log");
    let child = Command::new(env!("CARGO_BIN_EXE_memvisor"))
        .args(["run", "-m", "512M", "--api-sock"])
        .arg(&sock)
        .arg("--runtime-dir")
        .arg(dir.path().join("rt"))
        .arg("--report-file")
        .arg(&report_file)
        .args([
            "--balloon",
            "amount_mib=0,deflate_on_oom=on,stats_polling_interval_s=1",
            "-w",
            "touch:work-only=1;balloon:data=64M,seconds=0",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut vm = ChildVm {
        child: Some(child),
        sock: sock.clone(),
    };
    let get = |path: &str| -> (u16, serde_json::Value) {
        let (status, body) = request(&sock, "GET", path, None).unwrap();
        (status, serde_json::from_str(&body).unwrap_or_default())
    };
    let rss_kib = || proc_status_kib(pid, "VmRSS:").expect("VmRSS of the VMM");
    let threads = || proc_status_kib(pid, "Threads:").expect("threads of the VMM") as usize;
    wait_until("the API socket", Duration::from_secs(20), || sock.exists());
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "API socket mode");
    // The driver is up and the guest has touched its work area (the free pages the balloon
    // will take are resident).
    wait_until("the balloon driver", Duration::from_secs(30), || {
        get("/balloon/device").1["activated"] == true
    });
    wait_until(
        "the guest to touch its RAM",
        Duration::from_secs(30),
        || rss_kib() > 480 * 1024,
    );
    let vcpu0 = threads_named(pid, "vcpu0");
    assert_eq!(vcpu0.len(), 1, "one vcpu0 thread");
    let vcpu0 = vcpu0[0];
    let exits_before = get("/vm").1["vcpus"][0]["total_exits"].as_u64().unwrap();
    // When the device last received the guest's statistics (every second).
    let stats_at = || -> f64 {
        let (status, d) = get("/balloon/device");
        assert_eq!(status, 200, "{d}");
        d["stats_received_at_unix_s"].as_f64().unwrap()
    };
    wait_until("balloon statistics", Duration::from_secs(10), || {
        get("/balloon/device").1["stats_received_at_unix_s"].is_f64()
    });
    let stats_before = stats_at();

    // Every connection of the set-up above has ended (a connection thread frees its slot just
    // before it exits), so the silent clients below find all MAX_CONNECTIONS slots free.
    wait_until(
        "the set-up's connection threads to end",
        Duration::from_secs(20),
        || threads_named(pid, "api-conn").is_empty(),
    );
    let base_threads = threads();
    let base_fds = fd_count(pid);

    // A monitor samples the VMM's threads and descriptors all through the flood.
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut max_threads, mut max_conn, mut max_fds) = (0, 0, 0);
            while !done.load(Ordering::Acquire) {
                let n = proc_status_kib(pid, "Threads:").unwrap_or(0) as usize;
                max_threads = max_threads.max(n);
                max_conn = max_conn.max(threads_named(pid, "api-conn").len());
                max_fds = max_fds.max(fd_count(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            (max_threads, max_conn, max_fds)
        })
    };

    // (a) Silent clients, far more than the limit; every 50th sends half a request head.
    let t_flood = Instant::now();
    let mut silent: Vec<UnixStream> = (0..SILENT)
        .map(|i| {
            let mut s = UnixStream::connect(&sock).expect("connect a silent client");
            if i % 50 == 0 {
                // A client past the slots may already have its 503 and a closed peer: the
                // write then fails (EPIPE), and its answer is still there to read below.
                if let Err(e) = s.write_all(b"GET /vm HTTP/1.1\r\nHost") {
                    assert!(
                        i >= MAX_CONNECTIONS
                            && matches!(
                                e.kind(),
                                std::io::ErrorKind::BrokenPipe
                                    | std::io::ErrorKind::ConnectionReset
                            ),
                        "silent client {i}: {e}"
                    );
                }
            }
            s
        })
        .collect();
    wait_until("every slot to be taken", Duration::from_secs(30), || {
        threads_named(pid, "api-conn").len() == MAX_CONNECTIONS
    });

    // (b) Meanwhile a burst from several threads, until the silent clients are released and
    // then some (the API must answer normally again), paced so it spans the hold.
    let released = Arc::new(AtomicBool::new(false));
    let counts: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..BURST_THREADS)
        .map(|n| {
            let (sock, released, counts, sent) =
                (sock.clone(), released.clone(), counts.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut after = 0;
                let mut i = n;
                while after < 70 {
                    if released.load(Ordering::Acquire) {
                        after += 1;
                    }
                    if let Some(status) = burst_request(&sock, i) {
                        *counts.lock().unwrap().entry(status).or_default() += 1;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(4));
                }
            })
        })
        .collect();

    // The silent clients' answers: 408 for those holding a slot (after the 5 s read timeout),
    // 503 for the rest at once.
    let switches_hold_start = voluntary_switches(pid, vcpu0);
    let mut silent_counts: BTreeMap<u16, u64> = BTreeMap::new();
    for s in silent.iter_mut() {
        let status = http_status(&read_answer(s, Duration::from_secs(15))).unwrap_or(0);
        *silent_counts.entry(status).or_default() += 1;
    }
    let hold = t_flood.elapsed();
    let switches_hold_end = voluntary_switches(pid, vcpu0);
    assert!(
        vm.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the VMM survives the flood"
    );
    drop(silent);
    released.store(true, Ordering::Release);
    for b in burst {
        b.join().unwrap();
    }
    let burst_s = t_flood.elapsed();
    // The API answers normally again at once.
    let (status, v) = get("/vm");
    assert_eq!(status, 200, "{v}");
    let exits_after = v["vcpus"][0]["total_exits"].as_u64().unwrap();
    let stats_after = stats_at();
    // A wave of clients that ask for a costly answer (a scan of the page map) and hang up at
    // once: nobody would read those answers, so they must not keep threads and slots busy.
    let t_wave = Instant::now();
    for _ in 0..HANG_UPS {
        let mut s = UnixStream::connect(&sock).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
    }
    wait_until(
        "the connection threads to end",
        Duration::from_secs(5),
        || threads_named(pid, "api-conn").is_empty(),
    );
    let wave = t_wave.elapsed();
    wait_until(
        "the descriptors to return to the baseline",
        Duration::from_secs(5),
        || fd_count(pid) <= base_fds + 2,
    );
    done.store(true, Ordering::Release);
    let (max_threads, max_conn, max_fds) = monitor.join().unwrap();
    let counts = counts.lock().unwrap().clone();
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "{t}: {SILENT} silent clients answered {silent_counts:?} after {:.1} s; {sent} burst \
         requests in {:.1} s answered {counts:?} (0: no answer); threads {base_threads} -> max \
         {max_threads} ({max_conn} api-conn), fds {base_fds} -> max {max_fds} -> {}; vcpu0 \
         blocked {} times during the hold, {} exits over the flood, statistics {:.1} s \
         newer; {HANG_UPS} hang-ups drained in {:.2} s",
        hold.as_secs_f64(),
        burst_s.as_secs_f64(),
        fd_count(pid),
        switches_hold_end - switches_hold_start,
        exits_after - exits_before,
        stats_after - stats_before,
        wave.as_secs_f64(),
    );
    // Exactly the first MAX_CONNECTIONS silent clients got a slot (and a 408 when their time
    // ran out); every other one was refused at once with 503.
    assert_eq!(
        silent_counts,
        BTreeMap::from([
            (408, MAX_CONNECTIONS as u64),
            (503, (SILENT - MAX_CONNECTIONS) as u64)
        ])
    );
    assert!(
        counts.get(&503).copied().unwrap_or(0) > 0,
        "burst requests are refused while the slots are held: {counts:?}"
    );
    for (status, n) in &counts {
        assert!(
            matches!(status, 200 | 400 | 404 | 413 | 503),
            "{n} burst answer(s) with status {status}: {counts:?}"
        );
    }
    for status in [200, 400, 404, 413] {
        assert!(
            counts.contains_key(&status),
            "the burst got normal answers ({status}) after the hold: {counts:?}"
        );
    }
    // Bounded: one thread per held slot plus the VMM's own.
    assert_eq!(max_conn, MAX_CONNECTIONS);
    assert!(
        max_threads <= base_threads + MAX_CONNECTIONS + 4,
        "threads: {base_threads} -> {max_threads}"
    );
    // The guest kept running its driver loop (100 ms idle waits) through the hold.
    assert!(
        switches_hold_end - switches_hold_start >= 10,
        "vcpu0 blocked {} times in {hold:?}",
        switches_hold_end - switches_hold_start
    );
    assert!(
        exits_after > exits_before + 40,
        "{exits_before} -> {exits_after}"
    );
    // ... and kept answering the device's statistics requests.
    assert!(
        stats_after - stats_before >= hold.as_secs_f64() - 2.0,
        "statistics received at {stats_before} and {stats_after}, hold {hold:?}"
    );

    // The balloon still moves: 64 MiB of free, resident pages go back to the host.
    let before = rss_kib();
    let (status, body) =
        request(&sock, "PATCH", "/balloon", Some(r#"{"amount_mib": 64}"#)).unwrap();
    assert_eq!(status, 204, "{body}");
    wait_until("actual == 64 MiB", Duration::from_secs(10), || {
        get("/balloon/device").1["actual_mib"] == 64
    });
    wait_until("host RSS to drop", Duration::from_secs(10), || {
        before.saturating_sub(rss_kib()) >= 56 * 1024
    });
    let (status, st) = get("/balloon/statistics");
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["total_memory"].as_u64(), Some(512 << 20), "{st}");

    // A clean end: the balloon step is finished on request (the guest verifies all its data
    // once more) and memvisor exits with status 0.
    let (status, body) = request(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "FinishBalloonStep"}"#),
    )
    .unwrap();
    assert_eq!(status, 204, "{body}");
    let child = vm.child.as_mut().unwrap();
    wait_until("the guest to end", Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let op = report["vcpus"][0]["ops"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "balloon")
        .unwrap_or_else(|| panic!("no balloon step in {report}"));
    assert_eq!(
        op["results"],
        serde_json::json!([64u64 << 20, 0, 64 * 256]),
        "balloon results [data bytes, mismatched words, pages held]: {report}"
    );
    let driver = &report["vcpus"][0]["balloon_driver"];
    assert_eq!(driver["mismatches"], 0, "{driver}");
    assert!(
        driver["verified_bytes"].as_u64().unwrap() >= 64 << 20,
        "{driver}"
    );
    assert!(!sock.exists(), "the socket is removed when the VM stops");
}
