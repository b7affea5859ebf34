//! virtio-net interfaces (`--net`) with Linux guests, each test in a network namespace of its
//! own (`ip netns add`, deleted when the test ends, also on failure) holding the tap: memvisor
//! runs inside it (`ip netns exec`), and only addresses inside it are used. Root only (a
//! namespace and a tap need CAP_NET_ADMIN); the tests print `skip:` otherwise.
//!
//! - `linux_guest_net_is_a_pci_function_after_the_disks` (seconds): a tiny kernel reads the
//!   PCI IDs of slots 1-2: the disk, then the network interface (virtio-pci device 0x1041). A
//!   `--net` without `--kernel`, or naming an interface that is not a tap, stops memvisor
//!   before the guest starts, with the reason.
//! - `test_kernel_net_ping_and_tcp_echo` boots the test kernel with `--net tap=NAME`: the
//!   kernel's own `virtio_net` binds with the features memvisor offers (VERSION_1, MAC), `eth0`
//!   has the MAC memvisor gave, the guest configures 10.99.1.2/24 and pings (once) the tap's
//!   10.99.1.1 (busybox `ping`), then sends a line through a TCP connection (busybox `nc`) to
//!   a listener the test runs inside the namespace, which answers it; the device counted the
//!   frames both ways and refused none.
//!
//! Guest work is slow where KVM emulates guest ring 0 (each fork+exec takes seconds): the
//! commands are few. Here (2026-12-06, load ~1) the test-kernel test took 94 s: boot to
//! `/init` 79 s, the ping 2.8 s. Throughput figures are not measured here.

use super::{pci_ids_code, run_tiny_with, test_kernel_or_skip, vm_device, TestGuest};
use crate::common::{self, kvm_or_skip, root_or_skip, NetNs, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The namespace, or a skip line saying why there is none.
fn netns_or_skip(test: &str, tag: &str) -> Option<NetNs> {
    if !kvm_or_skip(test) || !root_or_skip(test) {
        return None;
    }
    match NetNs::new(tag) {
        Ok(ns) => Some(ns),
        Err(e) => {
            common::skip(test, e);
            None
        }
    }
}

#[test]
fn linux_guest_net_is_a_pci_function_after_the_disks() {
    let test = "linux_guest_net_is_a_pci_function_after_the_disks";
    let Some(ns) = netns_or_skip(test, "pci") else {
        return;
    };
    let tmp = TempDir::new("linux-net-pci");
    let img = tmp.path().join("a.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    // For slots 1, 2: read the ID dword through conf1 and write its 4 bytes to COM1.
    let code = pci_ids_code(1..=2);
    let disk = format!("path={}", img.display());
    let bin = env!("CARGO_BIN_EXE_memvisor");
    let (out, console) = run_tiny_with(
        ns.command(bin),
        &code,
        &["--disk", &disk, "--net", "tap=mvpci0"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", common::text(&out));
    assert_eq!(
        console,
        [0xf4, 0x1a, 0x42, 0x10, 0xf4, 0x1a, 0x41, 0x10],
        "a virtio-pci block device (0x1042), then a network device (0x1041)"
    );

    // Refused before the guest starts, with the reason.
    let run = |args: &[&str]| {
        ns.command(bin)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["-m", "64M", "--net", "tap"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::text(&out).contains("--net needs a Linux guest (--kernel)"),
        "{}",
        common::text(&out)
    );
    let kernel = tmp.path().join("tiny.elf");
    std::fs::write(&kernel, common::tiny_kernel(&[0xf4, 0xeb, 0xfd])).unwrap();
    let k = kernel.to_str().unwrap();
    let out = run(&["--kernel", k, "-m", "64M", "--net", "tap=lo"]);
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("--net net0") && text.contains("`lo` is an interface that is not a tap"),
        "{text}"
    );
}

/// A TCP listener inside the namespace (on a thread that entered it) answering each line
/// with `echo: LINE`; its accepted connections are counted.
fn echo_server(ns: &NetNs, addr: &'static str) -> std::sync::mpsc::Receiver<String> {
    let path = format!("/run/netns/{}", ns.name());
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut line = String::new();
            if BufReader::new(&c).read_line(&mut line).is_ok() {
                let _ = writeln!(c, "echo: {}", line.trim());
                let _ = tx.send(line.trim().to_string());
            }
        }
    });
    ready.recv_timeout(Duration::from_secs(10)).unwrap();
    rx
}

/// The interface with id `id` in `GET /vm`.
fn net(sock: &std::path::Path, id: &str) -> serde_json::Value {
    vm_device(sock, id, "net")
}

#[test]
fn test_kernel_net_ping_and_tcp_echo() {
    let test = "test_kernel_net_ping_and_tcp_echo";
    let Some(ns) = netns_or_skip(test, "e2e") else {
        return;
    };
    let Some((vmlinux, initramfs)) = test_kernel_or_skip(test) else {
        return;
    };
    ns.ip(&["tuntap", "add", "mvnet0", "mode", "tap"]);
    ns.ip(&["addr", "add", "10.99.1.1/24", "dev", "mvnet0"]);
    ns.ip(&["link", "set", "mvnet0", "up"]);
    let echoes = echo_server(&ns, "10.99.1.1:7777");
    let tmp = TempDir::new("linux-net");
    let sock = tmp.path().join("api.sock");
    let t0 = Instant::now();
    let bin = env!("CARGO_BIN_EXE_memvisor");
    let mut g = TestGuest::start_with(
        ns.command(bin),
        &vmlinux,
        &initramfs,
        &tmp,
        &["-m", "128M", "--net", "tap=mvnet0"],
    );
    g.expect("ready", Duration::from_secs(1800));
    println!(
        "{test}: booted to /init in {:.0} s",
        t0.elapsed().as_secs_f64()
    );

    // The kernel's virtio_net drives it, with the features offered.
    let line = g
        .lines()
        .into_iter()
        .find(|l| l.starts_with("virtio ") && l.contains("device 0x0001"))
        .unwrap_or_else(|| panic!("a virtio network device: {:#?}", g.lines()));
    assert!(line.contains("driver virtio_net"), "{line}");
    let f = line.rsplit(' ').next().unwrap().as_bytes();
    let bit = |b: usize| f.get(b) == Some(&b'1');
    assert!(bit(32) && bit(5), "VERSION_1, MAC: {line}");
    assert!(
        !bit(0) && !bit(1) && !bit(15),
        "no CSUM, GUEST_CSUM, MRG_RXBUF: {line}"
    );
    let n = net(&sock, "net0");
    assert_eq!(
        (n["activated"].as_bool(), n["tap"].as_str()),
        (Some(true), Some("mvnet0"))
    );

    // The console echoes what is sent: the guest's prefix is built in the guest, so only the
    // answer carries it.
    g.send(r#"run p=memvisor-guest; echo "$p: mac $(cat /sys/class/net/eth0/address)""#);
    assert_eq!(
        g.expect("mac ", Duration::from_secs(120)),
        "mac 52:54:00:12:34:56"
    );
    assert_eq!(g.expect("ran ", Duration::from_secs(60)), "ran 0");

    // Ping the host side of the tap: one echo (ping's pause between echoes is a guest timer,
    // which can stall for minutes where KVM emulates guest ring 0; the reply needs none).
    let t = Instant::now();
    g.send("run ip addr add 10.99.1.2/24 dev eth0 && ip link set eth0 up && ping -c 1 -W 60 10.99.1.1 >/dev/null");
    assert_eq!(g.expect("ran ", Duration::from_secs(600)), "ran 0", "ping");
    println!("{test}: ping in {:.1} s", t.elapsed().as_secs_f64());

    // A line through TCP to the listener in the namespace, and its answer back.
    g.send(
        r#"run p=memvisor-guest; echo "$p: tcp $(echo hello-from-the-guest | nc 10.99.1.1 7777)""#,
    );
    assert_eq!(
        g.expect("tcp ", Duration::from_secs(600)),
        "tcp echo: hello-from-the-guest"
    );
    assert_eq!(
        echoes.recv_timeout(Duration::from_secs(10)).unwrap(),
        "hello-from-the-guest"
    );

    let c = net(&sock, "net0")["counters"].clone();
    let get = |k: &str| c[k].as_u64().unwrap();
    // ARP, the echo, the TCP handshake, data and close: more than 6 each way.
    assert!(get("tx_frames") >= 6 && get("rx_frames") >= 6, "{c}");
    assert!(get("tx_bytes") > 0 && get("rx_bytes") > 0, "{c}");
    assert_eq!(
        (
            get("tx_bad_frames"),
            get("rx_bad_chains"),
            get("tx_host_errors")
        ),
        (0, 0, 0),
        "{c}"
    );
    println!("{test}: counters {c}");
    println!("{test}: whole test {:.0} s", t0.elapsed().as_secs_f64());
    let out = g.vm.interrupt(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", common::text(&out));
}
