//! Test harness: a real `GuestMemoryMmap`, a driver built on `MockSplitQueue`, and a recording
//! `MemoryBackend` fake that fails the test if the device calls it outside RAM.
#![allow(dead_code)]

use std::cell::RefCell;

use balloon::features::{feature_mask, VIRTIO_F_VERSION_1};
use balloon::{Balloon, BalloonOptions, DeviceModel, MemoryBackend};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub const MIB: u64 = 1 << 20;
pub const PAGE: u64 = 4096;
/// Guest memory: [0, 16 MiB) and [32 MiB, 48 MiB); [16, 32) MiB is not guest memory.
pub const MEM_RANGES: [(u64, u64); 2] = [(0, 16 * MIB), (32 * MIB, 16 * MIB)];
/// RAM according to the backend: guest memory minus a hole at [8, 12) MiB.
pub const RAM_RANGES: [(u64, u64); 3] = [(0, 8 * MIB), (12 * MIB, 4 * MIB), (32 * MIB, 16 * MIB)];
pub const HOLE_START: u64 = 8 * MIB;
pub const OUTSIDE_MEM: u64 = 20 * MIB;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;

pub fn guest_mem() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = MEM_RANGES
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
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

/// The driver side of one queue.
pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub size: u16,
    next_desc: u16,
    next_buf: u64,
    buf_end: u64,
}

impl<'a> Driver<'a> {
    /// Queue `qi` lives at `qi * 64 KiB`; its buffers at `2 MiB + qi * 1 MiB`.
    pub fn new(mem: &'a GuestMemoryMmap, qi: u64, size: u16) -> Self {
        let vq = MockSplitQueue::create(mem, GuestAddress(qi * 0x10000), size);
        let next_buf = 2 * MIB + qi * MIB;
        Driver {
            mem,
            vq,
            size,
            next_desc: 0,
            next_buf,
            buf_end: next_buf + MIB,
        }
    }

    pub fn queue(&self) -> Queue {
        self.vq.create_queue::<Queue>().unwrap()
    }

    /// Copies `data` into a fresh guest buffer and returns its address.
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + data.len() as u64 + 15) & !15;
        assert!(self.next_buf <= self.buf_end);
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
        addr
    }

    /// A buffer holding little-endian PFNs.
    pub fn pfn_buf(&mut self, pfns: &[u32]) -> (u64, u32) {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        (self.buf(&bytes), bytes.len() as u32)
    }

    /// Adds one chain of `(addr, len, flags)` descriptors, linked in order; returns its head.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let n = descs.len() as u16;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let i = i as u16;
                let (flags, next) = if i + 1 < n {
                    (flags | VRING_DESC_F_NEXT as u16, head + i + 1)
                } else {
                    (flags & !(VRING_DESC_F_NEXT as u16), 0)
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&raw, head).unwrap();
        self.next_desc += n;
        head
    }

    /// Adds descriptors exactly as given (flags and `next` untouched) at the next free table
    /// slots; the first one is made available. Returns the first slot index.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            self.vq.desc_table().store(head + i as u16, d).unwrap();
        }
        self.next_desc += descs.len() as u16;
        self.push_avail(head);
        head
    }

    /// Puts `head` in the available ring as is (it may be out of range).
    pub fn push_avail(&mut self, head: u16) {
        let idx = self.avail_idx();
        let size = self.size;
        let slot = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % size));
        self.mem.write_obj(head.to_le(), slot).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
    }

    pub fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(self.vq.avail_addr().unchecked_add(2))
            .unwrap()
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.vq.avail_addr().unchecked_add(2))
            .unwrap();
    }

    pub fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// Used ring entry `i` as (descriptor id, len).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self.vq.used().ring().ref_at(usize::from(i)).unwrap().load();
        (e.id(), e.len())
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
    let drivers: Vec<Driver> = (0..n)
        .map(|i| Driver::new(mem, u64::from(i), size))
        .collect();
    dev.activate(drivers.iter().map(|d| d.queue()).collect())
        .unwrap();
    (dev, drivers)
}

pub fn pfn(gpa: u64) -> u32 {
    (gpa / PAGE) as u32
}
