//! The device over a real tap, in a network namespace of the test's own (so nothing outside
//! it is addressed): the guest side sends an ARP request for the tap's address through the
//! transmit queue, and the host kernel's ARP reply arrives through the receive queue.
//! Needs root (CAP_NET_ADMIN) and `ip`; prints `skip:` otherwise.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use net::{Net, NetOptions, Tap, TapError, RX_QUEUE, TX_QUEUE};
use virtio_mock::skip;

/// A network namespace, deleted on drop (also when the test fails).
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Option<NetNs> {
        let name = format!("mvnet-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then_some(NetNs(name))
    }

    /// Runs `ip ARGS` inside the namespace; panics with its output on failure.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }

    /// Opens a tap inside the namespace (from a thread that enters it: the tap belongs to the
    /// namespace of whoever opens /dev/net/tun).
    fn tap(&self, name: Option<&str>) -> Result<Tap, TapError> {
        let path = format!("/run/netns/{}", self.0);
        let name = name.map(str::to_string);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(path).unwrap();
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            Tap::open(name.as_deref())
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn arp_request(mac: [u8; 6], from: [u8; 4], to: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; net::HDR_BYTES];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&from);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&to);
    f
}

#[test]
fn arp_round_trip_through_a_tap_in_a_namespace() {
    let test = "arp_round_trip_through_a_tap_in_a_namespace";
    if !nix::unistd::geteuid().is_root() {
        return skip(
            test,
            "needs root (CAP_NET_ADMIN) for a network namespace and a tap",
        );
    }
    let Some(ns) = NetNs::new("arp") else {
        return skip(
            test,
            "`ip netns add` failed (no iproute2, or namespaces not allowed)",
        );
    };
    // A tap the kernel names, and one named; the name is busy while the first is open.
    let tap = ns.tap(None).unwrap();
    assert!(tap.name().starts_with("tap"), "{}", tap.name());
    let named = ns.tap(Some("mvtest0")).unwrap();
    assert_eq!(named.name(), "mvtest0");
    let busy = ns.tap(Some("mvtest0")).unwrap_err();
    assert!(matches!(busy, TapError::Busy(_)), "{busy}");
    let not_tap = ns.tap(Some("lo")).unwrap_err();
    assert!(matches!(not_tap, TapError::NotATap(_)), "{not_tap}");
    drop(named);

    let name = tap.name().to_string();
    ns.ip(&["addr", "add", "10.99.7.1/24", "dev", &name]);
    ns.ip(&["link", "set", &name, "up"]);
    let mem = guest_mem();
    let mut dev = Net::new(tap, NetOptions { mac: MAC });
    dev.ack_features(dev.avail_features());
    let mut rx = Driver::new(&mem, 0, 256, MIB..8 * MIB);
    let mut tx = Driver::new(&mem, 0x10000, 256, 8 * MIB..16 * MIB);
    dev.activate(vec![rx.queue(), tx.queue()]).unwrap();
    let mut bufs = Vec::new();
    for _ in 0..64 {
        bufs.push(post_rx(&mut rx, &[1526]));
    }
    let req = arp_request(MAC, [10, 99, 7, 2], [10, 99, 7, 1]);
    post_tx(&mut tx, &req, &[12, 14]);
    assert!(dev.process_queue(TX_QUEUE, &mem, &()).unwrap());
    assert_eq!(dev.counters().tx_frames, 1, "{:?}", dev.counters());
    // The reply (and whatever else the kernel sends on a new link, e.g. IPv6 solicitations)
    // comes back through the receive queue; wait for it with a generous bound.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    let reply = loop {
        assert!(
            Instant::now() < deadline,
            "no ARP reply: {:?}",
            dev.counters()
        );
        dev.receive(&mem).unwrap();
        dev.process_queue(RX_QUEUE, &mem, &()).unwrap();
        let found = (seen..rx.used_idx()).find_map(|i| {
            let (id, len) = rx.used(i);
            let (_, addrs) = bufs.iter().find(|(h, _)| u32::from(*h) == id).unwrap();
            let f = rx.read_back(addrs[0], len as usize);
            // ARP (0x0806), operation 2 (reply), from 10.99.7.1 to our MAC.
            (f.len() >= 12 + 42 && f[24..26] == [0x08, 0x06] && f[32..34] == [0, 2]).then_some(f)
        });
        seen = rx.used_idx();
        if let Some(f) = found {
            break f;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(&reply[12..18], &MAC, "to our MAC");
    assert_eq!(
        &reply[12 + 28..12 + 32],
        &[10, 99, 7, 1],
        "from the tap's address"
    );
    assert_eq!(&reply[12 + 32..12 + 38], &MAC);
    assert_eq!(reply[0], 0, "no checksum flags (none negotiated)");
    assert_eq!(u16::from_le_bytes([reply[10], reply[11]]), 1, "num_buffers");
    let c = dev.counters();
    assert!(c.rx_frames >= 1 && c.rx_bytes >= 42, "{c:?}");
    assert_eq!(
        (c.tx_bad_frames, c.rx_bad_chains, c.rx_host_errors),
        (0, 0, 0)
    );
}
