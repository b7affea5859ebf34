//! Test harness: a real `GuestMemoryMmap` with a gap, the driver side of the receive and
//! transmit queues (`virtio-mock`), and a device over a `MemBackend`.
#![allow(dead_code)]

pub use net::DeviceModel;
use net::{MemBackend, Net, NetOptions};
#[allow(unused_imports)] // not every test file uses NEXT
pub use virtio_mock::{Driver, NEXT, WRITE};
use vm_memory::GuestMemoryMmap;

pub const MIB: u64 = 1 << 20;
/// Guest memory: [0, 16 MiB) and [32 MiB, 48 MiB); [16, 32) MiB is not guest memory.
pub const MEM_RANGES: [(u64, u64); 2] = [(0, 16 * MIB), (32 * MIB, 16 * MIB)];
pub const OUTSIDE_MEM: u64 = 20 * MIB;
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];

pub fn guest_mem() -> GuestMemoryMmap {
    virtio_mock::guest_mem(&MEM_RANGES)
}

/// A frame as the tap carries it: a header (with `flags`) and `len` bytes of payload whose
/// byte `i` is `seed + i`.
pub fn frame(flags: u8, len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; net::HDR_BYTES];
    f[0] = flags;
    f.extend((0..len).map(|i| seed.wrapping_add(i as u8)));
    f
}

/// A device with its features acked and both queues activated; the receive queue's rings at
/// 0 with buffers in [1, 8) MiB, the transmit queue's at 64 KiB with buffers in [8, 16) MiB.
pub fn activated(mem: &GuestMemoryMmap) -> (Net<MemBackend>, Driver<'_>, Driver<'_>) {
    let mut dev = Net::new(MemBackend::default(), NetOptions { mac: MAC });
    dev.ack_features(dev.avail_features());
    let rx = Driver::new(mem, 0, 256, MIB..8 * MIB);
    let tx = Driver::new(mem, 0x10000, 256, 8 * MIB..16 * MIB);
    dev.activate(vec![rx.queue(), tx.queue()]).unwrap();
    (dev, rx, tx)
}

/// Posts a receive chain of writable buffers of these lengths; returns (head, addresses).
pub fn post_rx(rx: &mut Driver, lens: &[u32]) -> (u16, Vec<u64>) {
    let addrs: Vec<u64> = lens.iter().map(|&l| rx.alloc(l as usize + 16)).collect();
    let descs: Vec<(u64, u32, u16)> = addrs
        .iter()
        .zip(lens)
        .map(|(&a, &l)| (a, l, WRITE))
        .collect();
    (rx.add_chain(&descs), addrs)
}

/// Queues `frame` for transmission split into pieces of these lengths (the rest in a last
/// piece); returns the head.
pub fn post_tx(tx: &mut Driver, frame: &[u8], cuts: &[usize]) -> u16 {
    let mut descs = Vec::new();
    let mut at = 0;
    for &c in cuts {
        descs.push((tx.buf(&frame[at..at + c]), c as u32, 0));
        at += c;
    }
    if at < frame.len() {
        descs.push((tx.buf(&frame[at..]), (frame.len() - at) as u32, 0));
    }
    tx.add_chain(&descs)
}
