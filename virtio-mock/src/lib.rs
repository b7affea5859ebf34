//! The driver side of one split virtqueue, for device-model tests (`balloon`, `block`, `net`
//! and the fuzz targets): a queue laid out by `virtio-queue`'s `MockSplitQueue` in a real
//! `GuestMemoryMmap`, guest buffers handed out from a range of it, well-formed chains
//! ([`Driver::add_chain`]) and descriptors stored exactly as given, however hostile
//! ([`Driver::add_raw`], [`Driver::push_avail`], [`Driver::set_avail_idx`]).
//!
//! Also the `skip:` line of the device crates' tests ([`skip`]), as the VMM's own tests print it.
//!
//! This crate owns nothing of the devices: it only plays the driver. It is a dev-dependency.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::ops::Range;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// The `skip:` line of memvisor's tests, for the device-model tests that use this mock.
pub use test_support::skip;

/// `VRING_DESC_F_WRITE`: a device-writable descriptor.
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
/// `VRING_DESC_F_NEXT`: the chain goes on.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// Guest memory made of `(start, length)` ranges (gaps between them are not guest memory).
pub fn guest_mem(ranges: &[(u64, u64)]) -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = ranges
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).expect("test guest memory")
}

/// The driver side of one queue.
pub struct Driver<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The rings.
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    /// Queue size.
    pub size: u16,
    next_desc: u16,
    next_buf: u64,
    buf_end: u64,
}

impl<'a> Driver<'a> {
    /// A queue of `size` entries whose rings start at `rings`; buffers come from `bufs`.
    pub fn new(mem: &'a GuestMemoryMmap, rings: u64, size: u16, bufs: Range<u64>) -> Self {
        Driver {
            mem,
            vq: MockSplitQueue::create(mem, GuestAddress(rings), size),
            size,
            next_desc: 0,
            next_buf: bufs.start,
            buf_end: bufs.end,
        }
    }

    /// The device side of the queue, as a transport hands it over at DRIVER_OK.
    pub fn queue(&self) -> Queue {
        self.vq.create_queue::<Queue>().expect("mock queue")
    }

    /// A fresh guest buffer of `len` bytes (filled with 0xEE) and its address.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + len as u64 + 15) & !15;
        assert!(self.next_buf <= self.buf_end, "test buffers exhausted");
        self.mem
            .write_slice(&vec![0xee; len], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// Copies `data` into a fresh guest buffer and returns its address.
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        let a = self.alloc(data.len());
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        a
    }

    /// Adds one chain of `(addr, len, flags)` descriptors, linked in order, to the available
    /// ring; returns its head.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        let n = descs.len() as u16;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let i = i as u16;
                let (flags, next) = if i + 1 < n {
                    (flags | NEXT, head + i + 1)
                } else {
                    (flags & !NEXT, 0)
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
            })
            .collect();
        self.vq.add_desc_chains(&raw, head).unwrap();
        self.next_desc += n;
        head
    }

    /// Stores descriptors exactly as given (flags and `next` untouched) at the next free table
    /// slots and makes the first one available. Returns the first slot index.
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
        let slot = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % self.size));
        self.mem.write_obj(head.to_le(), slot).unwrap();
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// The available index.
    pub fn avail_idx(&self) -> u16 {
        self.mem
            .read_obj(self.vq.avail_addr().unchecked_add(2))
            .unwrap()
    }

    /// Sets the available index (a hostile driver may jump it).
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, self.vq.avail_addr().unchecked_add(2))
            .unwrap();
    }

    /// The used index.
    pub fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// Used ring entry `i` as (descriptor id, len).
    pub fn used(&self, i: u16) -> (u32, u32) {
        let e = self.vq.used().ring().ref_at(usize::from(i)).unwrap().load();
        (e.id(), e.len())
    }

    /// `len` bytes of guest memory at `addr`.
    pub fn read_back(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_land_in_the_rings() {
        let mem = guest_mem(&[(0, 1 << 20)]);
        let mut d = Driver::new(&mem, 0, 16, 0x10000..0x20000);
        let a = d.buf(b"abc");
        let b = d.alloc(4);
        assert_eq!(d.add_chain(&[(a, 3, 0), (b, 4, WRITE)]), 0);
        assert_eq!(d.add_chain(&[(a, 3, 0)]), 2);
        assert_eq!(d.avail_idx(), 2);
        assert_eq!(d.read_back(a, 3), b"abc");
        assert_eq!(d.read_back(b, 4), [0xee; 4]);
        assert_eq!(d.used_idx(), 0);
        assert!(b > a && b % 16 == 0);
    }
}
