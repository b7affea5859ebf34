//! `memvisor bench net`: what the virtio-net device (the `net` crate over a tap, as `--net`
//! uses it) costs per frame on the VMM side, both ways, beside the same frames written to or
//! read from the same tap raw, and beside a veth pair, in the same run.
//!
//! The benchmark makes its own network namespace (see [`super::netns`]) holding a tap (opened
//! through [`::net::Tap`], `IFF_VNET_HDR` with the 12-byte header, as the device uses it) and a
//! veth pair. A driver written here posts chains on split queues in guest memory, 256 per
//! notification, the way Linux's `virtio_net` lays them out with `VIRTIO_F_VERSION_1`:
//! - **tx** (guest → host): the 12-byte `virtio_net_hdr_v1` and the frame in one buffer; the
//!   device processes them as on a queue notification (walk and check each chain, one `writev`
//!   straight from guest memory to the tap, the used ring). Raw: one `writev` per frame of the
//!   same bytes from a host buffer to the same tap. veth: the same frames (without the header)
//!   sent with `sendto` on an `AF_PACKET` socket on one end of the veth pair. Frames are
//!   UDP/IPv4 to a destination MAC that is no interface's, so the namespace's kernel drops each
//!   as `PACKET_OTHERHOST` right after the link layer, on every path alike.
//! - **rx** (host → guest): one-buffer chains (header and 1518 bytes, as Linux posts them
//!   without mergeable buffers); a UDP socket in the namespace sends datagrams to an address
//!   whose static neighbour entry points out of the tap, and [`::net::Net::receive`] reads them
//!   and fills the chains. Raw: `read` of the same tap into a host buffer. veth: `recv` on an
//!   `AF_PACKET` socket on the far end of the veth pair. Only the reading side is timed.
//!
//! Per repetition the three paths rotate. After every run the tap's kernel counters and the
//! device's must have moved by exactly the frames sent, or the benchmark fails.

use super::netns::{ip, wait_readable, Netns, PacketSocket, UdpSender};
use super::split_queue::{guest_memory, SplitQueue, F_WRITE, QUEUE_SIZE, RINGS_BYTES};
use super::stats::{median_ratio, Summary, Target};
use super::table::{min_med_max, ratio_cell};
use super::{Align, BenchError, BenchReport, BenchRow, Machine, Table};
use ::net::{DeviceModel, Net, NetOptions, Tap, HDR_BYTES, TX_QUEUE};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::time::Instant;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Frame sizes measured (Ethernet header and payload, no FCS, no virtio header).
const FRAME_SIZES: [usize; 2] = [1514, 64];
/// Guest buffer stride: one buffer per descriptor, header and the largest frame.
const STRIDE: u64 = 2048;
const RX_RINGS: u64 = 0;
const TX_RINGS: u64 = RINGS_BYTES;
const TX_BUFFERS: u64 = 0x1_0000;
const RX_BUFFERS: u64 = TX_BUFFERS + QUEUE_SIZE as u64 * STRIDE;
/// A receive chain's one buffer: the header and a 1518-byte frame.
const RX_BUFFER_BYTES: u32 = HDR_BYTES as u32 + 1518;
/// The device's MAC (source of transmitted frames, destination of received ones).
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination of transmitted frames: locally administered unicast no interface has.
const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
const TAP: &str = "mvbench0";
const VETH_TX: &str = "mvveth0";
const VETH_RX: &str = "mvveth1";

/// Options of `memvisor bench net`.
#[derive(Clone, Debug)]
pub struct NetBenchOptions {
    /// Frames per repetition and frame size (rounded up to a multiple of 256).
    pub frames: u64,
    /// Repetitions.
    pub reps: usize,
}

impl Default for NetBenchOptions {
    fn default() -> Self {
        NetBenchOptions {
            frames: 65_536,
            reps: 3,
        }
    }
}

impl NetBenchOptions {
    /// The command line that gives these options.
    pub fn command(&self) -> String {
        format!(
            "memvisor bench net --frames {} --reps {}",
            self.frames, self.reps
        )
    }
}

/// One frame size's transmit results; summaries are in frames per second.
#[derive(Clone, Debug, Serialize)]
pub struct NetRow {
    /// `tx` (guest to host).
    pub direction: &'static str,
    /// Ethernet frame bytes (no FCS, no virtio header).
    pub frame_bytes: usize,
    /// Frames per repetition and path.
    pub frames: u64,
    /// Through the device to the tap, frames/s.
    pub device: Option<Summary>,
    /// Raw `writev` to the same tap, frames/s.
    pub raw: Option<Summary>,
    /// `AF_PACKET` `sendto` on a veth pair, frames/s.
    pub veth: Option<Summary>,
    /// Median Gbit/s of Ethernet frame bytes: device, raw, veth.
    pub gbit_per_s: [Option<f64>; 3],
    /// Median microseconds per frame: device, raw, veth.
    pub us_per_frame: [Option<f64>; 3],
    /// Median device / median raw.
    pub device_vs_raw: Option<f64>,
    /// Median device / median veth.
    pub device_vs_veth: Option<f64>,
}

impl BenchRow for NetRow {
    fn table(rows: &[Self]) -> Table {
        let mut t = Table::new(&[
            ("frames", Align::Left),
            ("device kframes/s min/med/max", Align::Right),
            ("Gbit/s", Align::Right),
            ("us/frame", Align::Right),
            ("raw tap writev kframes/s", Align::Right),
            ("Gbit/s", Align::Right),
            ("us/frame", Align::Right),
            ("veth AF_PACKET kframes/s", Align::Right),
            ("Gbit/s", Align::Right),
            ("us/frame", Align::Right),
            ("device/raw", Align::Right),
            ("device/veth", Align::Right),
        ]);
        let f = |v: Option<f64>, d: usize| v.map_or_else(|| "-".into(), |v| format!("{v:.d$}"));
        let k = |s: &Option<Summary>| {
            s.as_ref().map(|s| Summary {
                min: s.min / 1e3,
                median: s.median / 1e3,
                max: s.max / 1e3,
                samples: Vec::new(),
            })
        };
        for r in rows {
            let mut cells = vec![format!("{} {} B", r.direction, r.frame_bytes)];
            for (i, s) in [&r.device, &r.raw, &r.veth].into_iter().enumerate() {
                cells.push(min_med_max(k(s).as_ref(), 0));
                cells.push(f(r.gbit_per_s[i], 2));
                cells.push(f(r.us_per_frame[i], 2));
            }
            cells.push(ratio_cell(r.device_vs_raw));
            cells.push(ratio_cell(r.device_vs_veth));
            t.row(cells);
        }
        t
    }
}

/// One Ethernet frame of `len` bytes: UDP/IPv4 from 10.0.0.1 to 10.0.0.2 port 9, to
/// [`OTHER_MAC`].
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&OTHER_MAC);
    f[6..12].copy_from_slice(&GUEST_MAC);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let h = &mut f[14..34];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&ip_len.to_be_bytes());
    h[8] = 64;
    h[9] = 17;
    h[12..16].copy_from_slice(&[10, 0, 0, 1]);
    h[16..20].copy_from_slice(&[10, 0, 0, 2]);
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let u = &mut f[34..42];
    u[0..2].copy_from_slice(&40000u16.to_be_bytes());
    u[2..4].copy_from_slice(&9u16.to_be_bytes());
    u[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// The driver side: buffers and queues in guest memory.
struct Driver {
    mem: GuestMemoryMmap,
    rx: SplitQueue,
    tx: SplitQueue,
}

impl Driver {
    fn new() -> Result<Self, BenchError> {
        let len = RX_BUFFERS + u64::from(QUEUE_SIZE) * STRIDE;
        let d = Driver {
            mem: guest_memory(len, "network")?,
            rx: SplitQueue::new(RX_RINGS),
            tx: SplitQueue::new(TX_RINGS),
        };
        // Receive chains as Linux's virtio_net posts them without mergeable buffers: one
        // device-writable buffer for the header and a 1518-byte frame.
        for i in 0..QUEUE_SIZE {
            let at = RX_BUFFERS + u64::from(i) * STRIDE;
            d.rx.desc(&d.mem, i, at, RX_BUFFER_BYTES, F_WRITE, 0);
        }
        Ok(d)
    }

    /// Fills every transmit buffer with the header and `f`; one descriptor each.
    fn set_up_tx(&self, f: &[u8]) {
        let mut buf = vec![0u8; HDR_BYTES + f.len()];
        buf[HDR_BYTES..].copy_from_slice(f);
        for i in 0..QUEUE_SIZE {
            let at = TX_BUFFERS + u64::from(i) * STRIDE;
            self.mem
                .write_slice(&buf, GuestAddress(at))
                .expect("inside guest memory");
            self.tx.desc(&self.mem, i, at, buf.len() as u32, 0, 0);
        }
    }

    /// Makes all of a queue's chains available.
    fn post_all(mem: &GuestMemoryMmap, q: &mut SplitQueue) {
        for head in 0..QUEUE_SIZE {
            q.post(mem, head);
        }
        q.publish(mem);
    }
}

/// What the frames of one direction and path meet on the host.
struct Host {
    ns: Netns,
    tap_name: String,
    /// Sends on the veth (transmit baseline).
    veth_tx: PacketSocket,
    /// Datagrams routed out of the tap (receive workload).
    to_tap: UdpSender,
    /// Datagrams routed out of one veth end (receive baseline).
    to_veth: UdpSender,
}

impl Host {
    /// The namespace, its tap (returned apart: the device owns it) and veth pair, addressed
    /// for the receive workload.
    fn set_up() -> Result<(Host, Tap), BenchError> {
        let ns = Netns::create()?;
        let (tap, veth_tx, to_tap, to_veth) = ns.within(|| {
            // No IPv6: nothing but the benchmark's frames goes out of the interfaces.
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
            let tap = Tap::open(Some(TAP)).map_err(|e| BenchError::Check {
                what: "opening the tap".into(),
                detail: e.to_string(),
            })?;
            ip(&[
                "link", "add", VETH_TX, "type", "veth", "peer", "name", VETH_RX,
            ])?;
            for dev in [TAP, VETH_TX, VETH_RX] {
                ip(&["link", "set", dev, "up"])?;
            }
            let guest = mac_text(GUEST_MAC);
            let other = mac_text(OTHER_MAC);
            ip(&["addr", "add", "10.0.1.1/24", "dev", TAP])?;
            ip(&[
                "neigh",
                "add",
                "10.0.1.2",
                "lladdr",
                &guest,
                "dev",
                TAP,
                "nud",
                "permanent",
            ])?;
            ip(&["addr", "add", "10.0.2.1/24", "dev", VETH_TX])?;
            ip(&[
                "neigh",
                "add",
                "10.0.2.2",
                "lladdr",
                &other,
                "dev",
                VETH_TX,
                "nud",
                "permanent",
            ])?;
            Ok((
                tap,
                PacketSocket::open(VETH_TX, OTHER_MAC, false)?,
                UdpSender::open([10, 0, 1, 2])?,
                UdpSender::open([10, 0, 2, 2])?,
            ))
        })?;
        let tap_name = tap.name().to_string();
        let host = Host {
            ns,
            tap_name,
            veth_tx,
            to_tap,
            to_veth,
        };
        Ok((host, tap))
    }
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Seconds to send `frames` frames (a multiple of the queue size) through the device.
fn tx_device(dev: &mut Net<Tap>, drv: &mut Driver, frames: u64) -> Result<f64, BenchError> {
    let fail = |detail: String| BenchError::Check {
        what: "transmitting through the device".into(),
        detail,
    };
    let t = Instant::now();
    for _ in 0..frames / u64::from(QUEUE_SIZE) {
        Driver::post_all(&drv.mem, &mut drv.tx);
        dev.process_queue(TX_QUEUE, &drv.mem, &())
            .map_err(|e| fail(e.to_string()))?;
        if !drv.tx.all_used(&drv.mem) {
            return Err(fail(format!("chains not returned: {:?}", dev.counters())));
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to write `frames` copies of `buf` (header and frame) to the tap, one `writev` each.
fn tx_raw(tap: &Tap, buf: &[u8], frames: u64) -> Result<f64, BenchError> {
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let t = Instant::now();
    for _ in 0..frames {
        // SAFETY: one iovec over `buf`, alive and unchanged for the call; writev only reads.
        let n = unsafe { libc::writev(tap.as_raw_fd(), &iov, 1) };
        if n != buf.len() as isize {
            return Err(BenchError::last_os("writev to the tap", "see the error"));
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds the device takes to receive `frames` frames of `len` bytes from the tap into
/// posted chains; the datagrams are sent (untimed) one queue's worth at a time.
fn rx_device(
    dev: &mut Net<Tap>,
    drv: &mut Driver,
    to_tap: &UdpSender,
    len: usize,
    frames: u64,
) -> Result<f64, BenchError> {
    let payload = vec![0x5a; len - 42];
    let mut secs = 0.0;
    let fail = |detail: String| BenchError::Check {
        what: format!("receiving {len}-byte frames through the device"),
        detail,
    };
    for _ in 0..frames / u64::from(QUEUE_SIZE) {
        Driver::post_all(&drv.mem, &mut drv.rx);
        to_tap.send(&payload, u64::from(QUEUE_SIZE))?;
        let t = Instant::now();
        loop {
            dev.receive(&drv.mem).map_err(|e| fail(e.to_string()))?;
            if drv.rx.all_used(&drv.mem) {
                break;
            }
            wait_readable(dev.backend().as_raw_fd(), "receiving from the tap")?;
        }
        secs += t.elapsed().as_secs_f64();
        for n in 0..QUEUE_SIZE {
            let got = drv.rx.used_len(&drv.mem, n);
            if got as usize != HDR_BYTES + len {
                return Err(fail(format!(
                    "a chain came back with {got} bytes, expected {}",
                    HDR_BYTES + len
                )));
            }
        }
    }
    Ok(secs)
}

/// Seconds to `read` `frames` frames of `len` bytes from the tap into a host buffer as large
/// as the device's; the datagrams are sent (untimed) one queue's worth at a time.
fn rx_raw(tap: &Tap, to_tap: &UdpSender, len: usize, frames: u64) -> Result<f64, BenchError> {
    let payload = vec![0x5a; len - 42];
    let mut buf = vec![0u8; ::net::MAX_FRAME_BYTES];
    let mut secs = 0.0;
    for _ in 0..frames / u64::from(QUEUE_SIZE) {
        to_tap.send(&payload, u64::from(QUEUE_SIZE))?;
        let t = Instant::now();
        let mut got = 0;
        while got < QUEUE_SIZE {
            // SAFETY: `buf` is writable for its length and alive for the call.
            let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                wait_readable(tap.as_raw_fd(), "reading the tap")?;
                continue;
            }
            if n != (HDR_BYTES + len) as isize {
                return Err(BenchError::Check {
                    what: "reading the tap".into(),
                    detail: format!(
                        "read gave {n}, expected {}: {}",
                        HDR_BYTES + len,
                        std::io::Error::last_os_error()
                    ),
                });
            }
            got += 1;
        }
        secs += t.elapsed().as_secs_f64();
    }
    Ok(secs)
}

/// Seconds to `recv` `frames` frames of `len` bytes on an `AF_PACKET` socket on the far veth
/// end; the datagrams are sent (untimed) one queue's worth at a time.
fn rx_veth(
    sock: &PacketSocket,
    to_veth: &UdpSender,
    len: usize,
    frames: u64,
) -> Result<f64, BenchError> {
    let payload = vec![0x5a; len - 42];
    let mut secs = 0.0;
    for _ in 0..frames / u64::from(QUEUE_SIZE) {
        to_veth.send(&payload, u64::from(QUEUE_SIZE))?;
        secs += sock.recv(u64::from(QUEUE_SIZE), len)?;
    }
    Ok(secs)
}

/// Runs `memvisor bench net`.
pub fn run(
    opts: &NetBenchOptions,
    progress: &dyn Fn(&str),
) -> Result<BenchReport<NetRow>, BenchError> {
    BenchError::check_reps(opts.reps)?;
    if opts.frames == 0 {
        return Err(BenchError::Option {
            option: "--frames",
            reason: "must be at least 1; e.g. 65536".into(),
        });
    }
    let per_batch = u64::from(QUEUE_SIZE);
    let frames = opts.frames.div_ceil(per_batch) * per_batch;
    let load_before = super::machine::load_average();
    let (host, tap) = Host::set_up()?;
    let mut dev = Net::new(tap, NetOptions { mac: GUEST_MAC });
    dev.ack_features(dev.avail_features());
    let mut drv = Driver::new()?;
    dev.activate(vec![drv.rx.device_queue(), drv.tx.device_queue()])
        .map_err(|e| BenchError::Check {
            what: "activating the device".into(),
            detail: e.to_string(),
        })?;
    let mut rows = Vec::new();
    let mut veth_rx: Option<PacketSocket> = None;
    for direction in ["tx", "rx"] {
        if direction == "rx" {
            // Opened after the transmit runs, so those frames have no listener on the veth.
            veth_rx = Some(
                host.ns
                    .within(|| PacketSocket::open(VETH_RX, OTHER_MAC, true))?,
            );
        }
        for len in FRAME_SIZES {
            progress(&format!("net: {direction} {len}-byte frames"));
            let f = frame(len);
            let mut buf = vec![0u8; HDR_BYTES];
            buf.extend_from_slice(&f);
            drv.set_up_tx(&f);
            let mut samples: [Vec<f64>; 3] = Default::default();
            for rep in 0..opts.reps {
                // Device, raw, veth; rotated per repetition.
                for k in 0..3 {
                    let path = (k + rep) % 3;
                    let before = host.ns.packets(&host.tap_name)?;
                    let c0 = dev.counters();
                    let secs = match (direction, path) {
                        ("tx", 0) => tx_device(&mut dev, &mut drv, frames)?,
                        ("tx", 1) => tx_raw(dev.backend(), &buf, frames)?,
                        ("tx", _) => host.veth_tx.send(&f, frames)?,
                        (_, 0) => rx_device(&mut dev, &mut drv, &host.to_tap, len, frames)?,
                        (_, 1) => rx_raw(dev.backend(), &host.to_tap, len, frames)?,
                        _ => rx_veth(
                            veth_rx.as_ref().expect("opened"),
                            &host.to_veth,
                            len,
                            frames,
                        )?,
                    };
                    let after = host.ns.packets(&host.tap_name)?;
                    let c1 = dev.counters();
                    // The tap's kernel counters: frames written to it are its rx, frames
                    // routed out of it (read by us) its tx.
                    let on_tap = if path == 2 { 0 } else { frames };
                    let (want_rx, want_tx) = if direction == "tx" {
                        (on_tap, 0)
                    } else {
                        (0, on_tap)
                    };
                    let device_ok = path != 0
                        || if direction == "tx" {
                            c1.tx_frames - c0.tx_frames == frames
                        } else {
                            c1.rx_frames - c0.rx_frames == frames
                        };
                    if after.0 - before.0 != want_rx || after.1 - before.1 != want_tx || !device_ok
                    {
                        return Err(BenchError::Check {
                            what: format!("tap {} after {direction} {len}-byte frames", host.tap_name),
                            detail: format!(
                                "the kernel counted {} frames received and {} sent, expected {want_rx} and {want_tx} (device counters {c1:?})",
                                after.0 - before.0, after.1 - before.1
                            ),
                        });
                    }
                    samples[path].push(frames as f64 / secs);
                }
            }
            let [d, r, v] = samples.map(|s| Summary::of(&s));
            let gbit = |s: &Option<Summary>| s.as_ref().map(|s| s.median * (len * 8) as f64 / 1e9);
            let us = |s: &Option<Summary>| s.as_ref().map(|s| 1e6 / s.median);
            rows.push(NetRow {
                direction,
                frame_bytes: len,
                frames,
                gbit_per_s: [gbit(&d), gbit(&r), gbit(&v)],
                us_per_frame: [us(&d), us(&r), us(&v)],
                device_vs_raw: median_ratio(d.as_ref(), r.as_ref()),
                device_vs_veth: median_ratio(d.as_ref(), v.as_ref()),
                device: d,
                raw: r,
                veth: v,
            });
        }
    }
    let c = dev.counters();
    let dropped = c.rx_dropped_no_buffers + c.rx_dropped_not_activated + c.rx_frames_too_big;
    if c.tx_bad_frames + c.tx_host_errors + c.rx_bad_chains + c.rx_host_errors + dropped > 0 {
        return Err(BenchError::Check {
            what: "the device".into(),
            detail: format!("refused or dropped frames: {c:?}"),
        });
    }
    let ratios: Vec<(String, Option<f64>)> = rows
        .iter()
        .map(|r| {
            (
                format!("{} {} B", r.direction, r.frame_bytes),
                r.device_vs_raw,
            )
        })
        .collect();
    let targets = vec![Target::judge(
        "device / raw tap I/O (median frames/s)",
        0.5,
        &ratios,
    )];
    let machine = Machine::describe();
    let mut notes = vec![
        format!("{frames} frames per repetition, path and row, {QUEUE_SIZE} per notification; Gbit/s counts Ethernet frame bytes (no virtio header, no FCS)"),
        "tx frames go to a destination MAC no interface has: the namespace's kernel drops them as PACKET_OTHERHOST after the link layer, on all three paths".into(),
        "rx frames are UDP datagrams to port 9 of an address whose static neighbour entry points out of the tap (or the veth); only the reading side is timed, the sending is not".into(),
    ];
    notes.extend(super::machine::load_note(
        load_before,
        super::machine::load_average(),
        machine.cpus,
    ));
    drop(dev);
    drop(veth_rx);
    drop(host);
    Ok(BenchReport {
        benchmark: "net".into(),
        command: opts.command(),
        machine,
        method: vec![
            "tx device: chains laid out as Linux's virtio_net does (virtio_net_hdr_v1 and the frame in one buffer), 256 per notification, processed by the net crate's device (walk and check each chain, one writev from guest memory to the tap, the used ring)".into(),
            "tx raw: the same header and frame written to the same tap fd from a host buffer, one writev each; tx veth: the same frame sent with sendto on an AF_PACKET socket on one end of a veth pair".into(),
            "rx device: 256 one-buffer chains posted (header and 1518 bytes, as Linux's virtio_net without mergeable buffers), Net::receive reading the tap into its bounce buffer and copying into the chains; rx raw: read of the same tap fd into a host buffer; rx veth: recv on an AF_PACKET socket on the far end of the veth pair".into(),
            "after every run the tap's kernel counters and the device's must have moved by exactly the frames sent; the guest's side (its driver, notifications, interrupts) is not included".into(),
        ],
        rows,
        targets,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_udp_to_a_foreign_mac_with_a_valid_ip_checksum() {
        for len in FRAME_SIZES {
            let f = frame(len);
            assert_eq!(f.len(), len);
            assert_eq!(&f[0..6], &OTHER_MAC);
            assert_eq!(u16::from_be_bytes([f[16], f[17]]) as usize, len - 14);
            let mut sum: u32 = f[14..34]
                .chunks(2)
                .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
                .sum();
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            assert_eq!(sum, 0xffff, "header checksum of the {len}-byte frame");
        }
    }

    #[test]
    fn zero_frames_or_reps_are_refused_before_any_host_change() {
        for (frames, reps) in [(0, 1), (256, 0)] {
            let e = run(&NetBenchOptions { frames, reps }, &|_| {}).unwrap_err();
            assert!(matches!(e, BenchError::Option { .. }), "{e}");
        }
    }
}
