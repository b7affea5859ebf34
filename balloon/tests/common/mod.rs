//! Test harness: a real `GuestMemoryMmap`, a driver built on `MockSplitQueue`, and a recording
//! `MemoryBackend` fake that fails the test if the device calls it outside RAM.
#![allow(dead_code)]

use std::cell::RefCell;

use balloon::features::{feature_mask, VIRTIO_F_VERSION_1};
use balloon::{Balloon, BalloonOptions, DeviceModel, MemoryBackend};
#[allow(unused_imports)] // not every test file uses it
pub use virtio_mock::WRITE;
use vm_memory::GuestMemoryMmap;

pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;
/// Guest memory: [0, 16 MiB) and [32 MiB, 48 MiB); [16, 32) MiB is not guest memory.
pub const MEM_RANGES: [(u64, u64); 2] = [(0, 16 * MIB), (32 * MIB, 16 * MIB)];
/// RAM according to the backend: guest memory minus a hole at [8, 12) MiB.
pub const RAM_RANGES: [(u64, u64); 3] = [(0, 8 * MIB), (12 * MIB, 4 * MIB), (32 * MIB, 16 * MIB)];
pub const HOLE_START: u64 = 8 * MIB;
pub const OUTSIDE_MEM: u64 = 20 * MIB;

pub fn guest_mem() -> GuestMemoryMmap {
    virtio_mock::guest_mem(&MEM_RANGES)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Discard(u64, u64),
    Reclaim(u64, u64),
}

/// Records calls; panics if called on anything but 4K-aligned RAM.
pub struct FakeBackend {
    pub calls: RefCell<Vec<Call>>,
    /// `discard` reports this fraction (numerator over 2) of the range as freed.
    pub freed_halves: u64,
    pub fail: bool,
}

impl FakeBackend {
    pub fn new() -> Self {
        FakeBackend {
            calls: RefCell::new(Vec::new()),
            freed_halves: 2,
            fail: false,
        }
    }
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }
    fn check(&self, gpa: u64, len: u64) {
        assert!(
            len > 0 && gpa % PAGE == 0 && len % PAGE == 0,
            "unaligned {gpa:#x}+{len:#x}"
        );
        assert!(
            self.is_ram(gpa, len),
            "backend called outside RAM: {gpa:#x}+{len:#x}"
        );
    }
}

impl MemoryBackend for FakeBackend {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        RAM_RANGES.iter().any(|&(s, l)| gpa >= s && end <= s + l)
    }
    fn discard(&self, gpa: u64, len: u64) -> Result<u64, String> {
        self.check(gpa, len);
        self.calls.borrow_mut().push(Call::Discard(gpa, len));
        if self.fail {
            return Err("injected failure".into());
        }
        Ok(len * self.freed_halves / 2)
    }
    fn reclaim(&self, gpa: u64, len: u64) -> Result<(), String> {
        self.check(gpa, len);
        self.calls.borrow_mut().push(Call::Reclaim(gpa, len));
        if self.fail {
            return Err("injected failure".into());
        }
        Ok(())
    }
}

pub use virtio_mock::Driver;

/// The driver side of queue `qi`: its rings at `qi * 64 KiB`, its buffers in the MiB from
/// `2 MiB + qi * 1 MiB`.
pub fn driver(mem: &GuestMemoryMmap, qi: u64, size: u16) -> Driver<'_> {
    let bufs = 2 * MIB + qi * MIB;
    Driver::new(mem, qi * 0x10000, size, bufs..bufs + MIB)
}

/// Balloon buffers on top of the generic driver.
pub trait PfnBuf {
    /// A buffer holding little-endian PFNs: its address and length.
    fn pfn_buf(&mut self, pfns: &[u32]) -> (u64, u32);
}

impl PfnBuf for Driver<'_> {
    fn pfn_buf(&mut self, pfns: &[u32]) -> (u64, u32) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        (self.buf(&bytes), bytes.len() as u32)
    }
}

pub fn version_1() -> u64 {
    feature_mask(VIRTIO_F_VERSION_1)
}

/// A device with `opts`, acked `features` and activated with one driver queue per layout entry.
pub fn activated<'a>(
    mem: &'a GuestMemoryMmap,
    opts: BalloonOptions,
    features: u64,
    size: u16,
) -> (Balloon, Vec<Driver<'a>>) {
    let mut dev = Balloon::new(opts);
    dev.ack_features(features);
    assert_eq!(
        dev.acked_features(),
        features,
        "features must all be offered"
    );
    let n = dev.queue_layout().count();
    let drivers: Vec<Driver> = (0..n).map(|i| driver(mem, u64::from(i), size)).collect();
    dev.activate(drivers.iter().map(|d| d.queue()).collect())
        .unwrap();
    (dev, drivers)
}

pub fn pfn(gpa: u64) -> u32 {
    (gpa / PAGE) as u32
}
