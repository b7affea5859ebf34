//! Hand-over to an external page-fault handler (Firecracker's handshake), played by a thread.

mod common;

use common::*;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};
use uffd::RegionSpec;
use userfaultfd::{Event, Uffd};

const PAGE: usize = 4096;

/// Contents the test handler installs at a page: every byte is `(addr / 4096) as u8 ^ 0xa5`.
fn handler_byte(addr: usize) -> u8 {
    (addr / PAGE) as u8 ^ 0xa5
}

/// The external handler: accepts one connection, receives the JSON body and the userfaultfd,
/// reports the body, serves `pages` missing faults with UFFDIO_COPY, then exits (closing the
/// descriptor and the socket).
fn external_handler(listener: UnixListener, pages: usize, body_tx: mpsc::Sender<String>) {
    let (stream, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let (len, fd) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                fd = fds.first().copied();
            }
        }
        (msg.bytes, fd.expect("no descriptor attached"))
    };
    body_tx
        .send(String::from_utf8(buf[..len].to_vec()).unwrap())
        .unwrap();
    // SAFETY: the descriptor was just received via SCM_RIGHTS and is owned by nobody else.
    let uffd = unsafe { Uffd::from_raw_fd(fd) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while served < pages && Instant::now() < deadline {
        let mut fds = [PollFd::new(uffd.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u8)).unwrap() == 0 {
            continue;
        }
        // The descriptor is non-blocking (O_NONBLOCK, as Firecracker creates it).
        while let Some(event) = uffd.read_event().unwrap() {
            if let Event::Pagefault { addr, .. } = event {
                let page = addr as usize & !(PAGE - 1);
                let data = vec![handler_byte(page); PAGE];
                // SAFETY: `data` holds one page; `page` lies in a region registered with `uffd`.
                match unsafe { uffd.copy(data.as_ptr().cast(), page as *mut _, PAGE, true) } {
                    Ok(_) => {}
                    // Already present (userfaultfd's own nix version carries the errno).
                    Err(userfaultfd::Error::CopyFailed(e)) if e as i32 == libc::EEXIST => {}
                    Err(e) => panic!("UFFDIO_COPY at {page:#x}: {e}"),
                }
                served += 1;
            }
        }
    }
    assert_eq!(served, pages, "the test handler did not see every fault");
}

#[test]
fn hand_over_follows_firecracker_handshake() {
    skip_unless_uffd!();
    let dir = TempDir::new("ext");
    let sock = dir.path().join("uffd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let a = Mapping::anon(64 * KIB);
    let b = Mapping::anon(32 * KIB);
    let regions = vec![
        RegionSpec {
            host_addr: a.addr,
            len: a.len,
            page_size: PAGE,
            source_offset: 0,
        },
        RegionSpec {
            host_addr: b.addr,
            len: b.len,
            page_size: PAGE,
            source_offset: 64 * KIB as u64,
        },
    ];
    let pages = (a.len + b.len) / PAGE;
    let (body_tx, body_rx) = mpsc::channel();
    let handler = thread::spawn(move || external_handler(listener, pages, body_tx));

    let ext = uffd::hand_over(regions.clone(), &sock, Duration::from_secs(10)).unwrap();
    let body = body_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entries = json.as_array().expect("body must be a JSON array");
    assert_eq!(entries.len(), 2);
    for (entry, r) in entries.iter().zip(&regions) {
        assert_eq!(entry["base_host_virt_addr"], r.host_addr as u64, "{body}");
        assert_eq!(entry["size"], r.len as u64, "{body}");
        assert_eq!(entry["offset"], r.source_offset, "{body}");
        assert_eq!(entry["page_size"], r.page_size as u64, "{body}");
    }
    let parsed: Vec<uffd::GuestRegionUffdMapping> = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed[1].offset, 64 * KIB as u64);
    assert!(ext.peer_alive(), "handler is running");

    for m in [&a, &b] {
        let (addr, len) = (m.addr, m.len);
        let got = with_timeout(10, move || read_at(addr, len));
        for (i, chunk) in got.chunks(PAGE).enumerate() {
            let want = handler_byte(m.addr + i * PAGE);
            assert!(
                chunk.iter().all(|&x| x == want),
                "page {i} lacks the handler's bytes"
            );
        }
    }
    handler.join().expect("the test handler failed");
    // The handler exited and closed its socket and descriptor.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ext.peer_alive() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !ext.peer_alive(),
        "peer_alive() still true after the handler exited"
    );
    // The VMM's copy of the descriptor is still open until it closes it.
    assert!(ext.uffd().as_raw_fd() >= 0);
    ext.close();
}

fn one_region(m: &Mapping) -> Vec<RegionSpec> {
    vec![RegionSpec {
        host_addr: m.addr,
        len: m.len,
        page_size: PAGE,
        source_offset: 0,
    }]
}

#[test]
fn hand_over_reports_a_missing_socket() {
    let dir = TempDir::new("nosock");
    let a = Mapping::anon(64 * KIB);
    let sock = dir.path().join("absent.sock");
    let err = uffd::hand_over(one_region(&a), &sock, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(err, uffd::UffdError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("start the handler first"), "{err}");
}

#[test]
fn hand_over_names_a_socket_nobody_listens_on() {
    let dir = TempDir::new("stale");
    let sock = dir.path().join("stale.sock");
    // A handler that exited and left its socket file behind.
    drop(UnixListener::bind(&sock).unwrap());
    let err = uffd::HandlerConnection::connect(&sock).unwrap_err();
    assert!(matches!(err, uffd::UffdError::NotListening { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&sock.display().to_string()), "{text}");
    assert!(text.contains("start the page-fault handler"), "{text}");
}

/// A handler that accepts and, after `delay`, reads the message (returning when it did, then
/// holding the connection a little longer) or, with `read == false`, closes it unread.
fn slow_handler(
    listener: UnixListener,
    delay: Duration,
    read: bool,
) -> thread::JoinHandle<Option<Instant>> {
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        thread::sleep(delay);
        if !read {
            return None;
        }
        let mut buf = vec![0u8; 4096];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        assert!(msg.bytes > 0);
        let took = Instant::now();
        // Keep the connection (and the descriptor) until the VMM side checked it.
        thread::sleep(Duration::from_millis(200));
        Some(took)
    })
}

#[test]
fn hand_over_returns_once_the_handler_has_read_the_message() {
    skip_unless_uffd!();
    let dir = TempDir::new("slow");
    let sock = dir.path().join("uffd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handler = slow_handler(listener, Duration::from_millis(300), true);
    let a = Mapping::anon(64 * KIB);
    let t0 = Instant::now();
    let ext = uffd::hand_over(one_region(&a), &sock, Duration::from_secs(10)).unwrap();
    let returned = Instant::now();
    assert!(ext.peer_alive());
    let took = handler
        .join()
        .unwrap()
        .expect("the handler read the message");
    assert!(
        took <= returned,
        "hand_over returned {:?} before the handler read the message",
        took - returned
    );
    assert!(returned - t0 >= Duration::from_millis(300));
}

#[test]
fn hand_over_times_out_when_the_handler_does_not_read() {
    skip_unless_uffd!();
    let dir = TempDir::new("silent");
    let sock = dir.path().join("uffd.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handler = slow_handler(listener, Duration::from_secs(2), false);
    let a = Mapping::anon(64 * KIB);
    let t0 = Instant::now();
    let err = uffd::hand_over(one_region(&a), &sock, Duration::from_millis(300)).unwrap_err();
    let waited = t0.elapsed();
    assert!(
        matches!(err, uffd::UffdError::HandshakeTimeout { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&sock.display().to_string()),
        "{err}"
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    handler.join().unwrap();
}

#[test]
fn hand_over_reports_a_handler_that_hangs_up_unread() {
    skip_unless_uffd!();
    for _ in 0..20 {
        let dir = TempDir::new("hangup");
        let sock = dir.path().join("uffd.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let handler = slow_handler(listener, Duration::ZERO, false);
        let a = Mapping::anon(64 * KIB);
        let err = uffd::hand_over(one_region(&a), &sock, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(err, uffd::UffdError::HandlerHungUp { .. }),
            "{err}"
        );
        handler.join().unwrap();
    }
}
