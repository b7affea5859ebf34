//! The driver side of a split virtqueue in guest memory, for the device benchmarks
//! ([`super::disk`], [`super::net`]): they lay out descriptor chains the way a Linux driver
//! does, make them available, and hand the device model a [`Queue`] describing the same rings.
//!
//! This module owns the ring layout (descriptor table, available and used rings of a 256-entry
//! queue at a base address) and the writes a driver makes to them; the buffers themselves are
//! the benchmark's business.

use super::BenchError;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Entries of every benchmark queue (the size the devices offer).
pub(crate) const QUEUE_SIZE: u16 = 256;
/// Guest memory taken by one queue's rings (descriptor table, available ring, used ring).
pub(crate) const RINGS_BYTES: u64 = 0x3000;
/// `VIRTQ_DESC_F_NEXT`.
pub(crate) const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub(crate) const F_WRITE: u16 = 2;

/// Guest memory of `len` bytes at guest address 0, for the benchmark named `what`.
pub(crate) fn guest_memory(len: u64, what: &str) -> Result<GuestMemoryMmap, BenchError> {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), len as usize)]).map_err(|e| {
        BenchError::Check {
            what: format!("guest memory for the {what} benchmark"),
            detail: e.to_string(),
        }
    })
}

/// One split queue's rings at `base` (descriptor table, then the available ring at +0x1000,
/// the used ring at +0x2000) and the driver's available index.
pub(crate) struct SplitQueue {
    base: u64,
    avail_idx: u16,
}

impl SplitQueue {
    /// A queue whose rings start at `base` (which leaves [`RINGS_BYTES`] free).
    pub(crate) fn new(base: u64) -> Self {
        SplitQueue { base, avail_idx: 0 }
    }

    fn desc_table(&self) -> u64 {
        self.base
    }

    fn avail(&self) -> u64 {
        self.base + 0x1000
    }

    fn used(&self) -> u64 {
        self.base + 0x2000
    }

    /// The device's view of this queue: ready, [`QUEUE_SIZE`] entries.
    pub(crate) fn device_queue(&self) -> Queue {
        let mut q = Queue::new(QUEUE_SIZE).expect("valid size");
        q.set_size(QUEUE_SIZE);
        q.set_desc_table_address(Some(self.desc_table() as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail() as u32), Some(0));
        q.set_used_ring_address(Some(self.used() as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `i`.
    pub(crate) fn desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(self.desc_table() + 16 * u64::from(i)))
            .expect("inside guest memory");
    }

    /// Puts the chain starting at descriptor `head` in the next available ring slot (seen by
    /// the device after [`SplitQueue::publish`]).
    pub(crate) fn post(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(head, GuestAddress(slot)).expect("inside");
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the chains posted so far (writes the available index).
    pub(crate) fn publish(&self, mem: &GuestMemoryMmap) {
        mem.write_obj(self.avail_idx, GuestAddress(self.avail() + 2))
            .expect("inside");
    }

    /// Whether the device has returned every chain made available.
    pub(crate) fn all_used(&self, mem: &GuestMemoryMmap) -> bool {
        let used: u16 = mem.read_obj(GuestAddress(self.used() + 2)).unwrap_or(0);
        used == self.avail_idx
    }

    /// The length the device wrote into used ring slot `n`.
    pub(crate) fn used_len(&self, mem: &GuestMemoryMmap, n: u16) -> u32 {
        let at = self.used() + 4 + 8 * u64::from(n % QUEUE_SIZE) + 4;
        mem.read_obj(GuestAddress(at)).unwrap_or(0)
    }
}
