//! Host-side network setup for `memvisor bench net` ([`super::net`]): a network namespace of
//! the benchmark's own, deleted on drop ([`Netns`]), `ip` commands in it, the interfaces'
//! kernel packet counters, and the plain sockets the baselines and the receive workload use
//! ([`PacketSocket`] on a veth end, [`UdpSender`] to feed frames to a tap or a veth).
//!
//! This module owns everything the benchmark changes on the host: the namespace and what is in
//! it (a tap, a veth pair, addresses, static neighbour entries). Nothing outside the namespace
//! is touched, and deleting the namespace removes all of it.

use super::BenchError;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::Instant;

/// `ETH_P_ALL` in network byte order, as `socket(AF_PACKET, ..)` and `bind` take it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// Socket buffers of the sockets here: a few batches of full-size frames, so that nothing is
/// dropped between a batch being sent and read.
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// Runs `ip` with `args`; its stdout.
pub(crate) fn ip(args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(BenchError::io(
            "running ip",
            "install iproute2 (the benchmark configures its namespace with `ip`)",
        ))?;
    if !out.status.success() {
        return Err(BenchError::Check {
            what: format!("ip {}", args.join(" ")),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names of the benchmark's namespaces: this and the process id.
const PREFIX: &str = "memvisor-bench-net-";

/// Deletes the namespaces left by benchmark processes that no longer run (killed before their
/// drop ran).
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// A network namespace of this benchmark, deleted on drop (and, should the process be killed
/// first, by the next run).
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    pub(crate) fn create() -> Result<Netns, BenchError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(BenchError::Option {
                option: "memvisor bench net",
                reason: "needs root (it creates a network namespace, a tap and a veth pair); run it as root".into(),
            });
        }
        remove_stale();
        let name = format!("{PREFIX}{}", std::process::id());
        ip(&["netns", "add", &name])?;
        Ok(Netns { name })
    }

    /// `ip -n <ns> args`.
    pub(crate) fn ip(&self, args: &[&str]) -> Result<String, BenchError> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Runs `f` with this thread in the namespace (sockets and taps opened there stay there).
    pub(crate) fn within<T>(
        &self,
        f: impl FnOnce() -> Result<T, BenchError>,
    ) -> Result<T, BenchError> {
        let home = File::open("/proc/thread-self/ns/net").map_err(BenchError::io(
            "opening this thread's network namespace",
            "is /proc mounted?",
        ))?;
        let ns = File::open(format!("/run/netns/{}", self.name)).map_err(BenchError::io(
            "opening the benchmark's network namespace",
            "check /run/netns (ip netns add made it)",
        ))?;
        // SAFETY: setns on open namespace descriptors changes only this thread's network
        // namespace; the guard below moves it back.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(BenchError::last_os(
                "entering the benchmark's network namespace (setns)",
                "run as root",
            ));
        }
        struct Back(File);
        impl Drop for Back {
            fn drop(&mut self) {
                // SAFETY: as above, back to the namespace this thread came from.
                let r = unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "returning to the original network namespace");
            }
        }
        let _back = Back(home);
        f()
    }

    /// `(rx_packets, tx_packets)` of interface `dev` in the namespace.
    pub(crate) fn packets(&self, dev: &str) -> Result<(u64, u64), BenchError> {
        let out = self.ip(&["-j", "-s", "link", "show", "dev", dev])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| BenchError::Check {
            what: format!("ip -j -s link show dev {dev}"),
            detail: e.to_string(),
        })?;
        let s = &v[0]["stats64"];
        match (s["rx"]["packets"].as_u64(), s["tx"]["packets"].as_u64()) {
            (Some(rx), Some(tx)) => Ok((rx, tx)),
            _ => Err(BenchError::Check {
                what: format!("counters of {dev}"),
                detail: format!("no stats64 in {out}"),
            }),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Sets an integer socket option.
fn set_opt(fd: RawFd, level: i32, name: i32, value: libc::c_int) -> Result<(), BenchError> {
    // SAFETY: setsockopt reads one c_int through the pointer, which `value` provides.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if r != 0 {
        return Err(BenchError::last_os("setsockopt", "run as root"));
    }
    Ok(())
}

/// Waits (at most 10 s) until `fd` is readable.
pub(crate) fn wait_readable(fd: RawFd, what: &'static str) -> Result<(), BenchError> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, alive for the call.
    let r = unsafe { libc::poll(&mut p, 1, 10_000) };
    if r == 1 {
        return Ok(());
    }
    Err(BenchError::Check {
        what: what.into(),
        detail: "frames sent did not arrive within 10 s".into(),
    })
}

/// A new socket of `domain`, `kind`, `protocol`.
fn socket(domain: i32, kind: i32, protocol: i32) -> Result<OwnedFd, BenchError> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(BenchError::last_os("opening a socket", "run as root"));
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An `AF_PACKET` socket on one veth end: sends frames out of it, or receives every frame
/// arriving on it.
pub(crate) struct PacketSocket {
    fd: OwnedFd,
    to: libc::sockaddr_ll,
}

impl PacketSocket {
    /// Opens it on `dev` (call inside the namespace), sending to `dst`; with `receive`, bound
    /// to `dev` for every protocol, with a large receive buffer.
    pub(crate) fn open(dev: &str, dst: [u8; 6], receive: bool) -> Result<Self, BenchError> {
        let protocol = if receive { i32::from(ETH_P_ALL_BE) } else { 0 };
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, protocol)?;
        let name = std::ffi::CString::new(dev).expect("no NUL");
        // SAFETY: `name` is a NUL-terminated string alive for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(BenchError::last_os(
                "finding the veth's index",
                "see the error",
            ));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst);
        if receive {
            let raw = fd.as_raw_fd();
            set_opt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                SOCKET_BUFFER_BYTES,
            )?;
            let mut at = to;
            at.sll_protocol = ETH_P_ALL_BE;
            // SAFETY: bind reads a sockaddr_ll of the given size from `at`, alive for the call.
            let r = unsafe {
                libc::bind(
                    raw,
                    (&at as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r != 0 {
                return Err(BenchError::last_os(
                    "binding an AF_PACKET socket",
                    "see the error",
                ));
            }
        }
        Ok(PacketSocket { fd, to })
    }

    /// Seconds to send `frames` copies of `f`, one `sendto` each.
    pub(crate) fn send(&self, f: &[u8], frames: u64) -> Result<f64, BenchError> {
        let t = Instant::now();
        for _ in 0..frames {
            // SAFETY: `f` and `self.to` are alive for the call; sendto only reads them.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&self.to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n != f.len() as isize {
                return Err(BenchError::last_os("sendto on the veth", "see the error"));
            }
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// Seconds to receive `frames` frames of `len` bytes, one `recv` each (waiting when none
    /// is queued yet).
    pub(crate) fn recv(&self, frames: u64, len: usize) -> Result<f64, BenchError> {
        let mut buf = vec![0u8; 2048];
        let fd = self.fd.as_raw_fd();
        let t = Instant::now();
        let mut got = 0;
        while got < frames {
            // SAFETY: `buf` is writable for its length and alive for the call.
            let n =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                wait_readable(fd, "receiving on the veth")?;
                continue;
            }
            if n != len as isize {
                return Err(BenchError::Check {
                    what: "receiving on the veth".into(),
                    detail: format!(
                        "a frame of {n} bytes, expected {len}: {}",
                        std::io::Error::last_os_error()
                    ),
                });
            }
            got += 1;
        }
        Ok(t.elapsed().as_secs_f64())
    }
}

/// A UDP socket in the namespace sending datagrams to one address (whose static neighbour
/// entry names the interface the frames go out of).
pub(crate) struct UdpSender {
    fd: OwnedFd,
}

impl UdpSender {
    /// Connects it to `to` port 9 (call inside the namespace).
    pub(crate) fn open(to: [u8; 4]) -> Result<Self, BenchError> {
        let fd = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        set_opt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SOCKET_BUFFER_BYTES,
        )?;
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        a.sin_family = libc::AF_INET as u16;
        a.sin_port = 9u16.to_be();
        a.sin_addr.s_addr = u32::from_ne_bytes(to);
        // SAFETY: connect reads a sockaddr_in of the given size from `a`, alive for the call.
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r != 0 {
            return Err(BenchError::last_os(
                "connecting a UDP socket",
                "see the error",
            ));
        }
        Ok(UdpSender { fd })
    }

    /// Sends `n` datagrams of `payload`.
    pub(crate) fn send(&self, payload: &[u8], n: u64) -> Result<(), BenchError> {
        for _ in 0..n {
            // SAFETY: `payload` is alive for the call; send only reads it.
            let r = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                )
            };
            if r != payload.len() as isize {
                return Err(BenchError::last_os(
                    "sending UDP datagrams",
                    "see the error",
                ));
            }
        }
        Ok(())
    }
}
