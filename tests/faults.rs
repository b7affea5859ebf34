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
