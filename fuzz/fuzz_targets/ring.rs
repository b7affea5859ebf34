//! The driver side of split virtqueues written by hand, for the device fuzz targets
//! (`block_requests`, `net_frames`; included with `#[path = "ring.rs"] mod ring;` after
//! `reader`): descriptors and available entries stored exactly as the input says, chains laid
//! out the way Linux does, buffers handed out from an area of guest memory, and the check that
//! a device wrote guest memory only where it may.

use super::reader::Reader;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// `VRING_DESC_F_NEXT`.
pub const NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const WRITE: u16 = 2;

/// An address: mostly inside or near guest memory (below 256 KiB, or `span` when larger),
/// sometimes at the top of the 64-bit space.
pub fn near(r: &mut Reader, span: u64) -> u64 {
    let a = r.addr();
    if a > u64::from(u32::MAX) {
        a
    } else {
        a % span.max(0x4_0000)
    }
}

/// One split-ring descriptor as it lies in the table.
pub fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    d
}

fn read_u16(mem: &GuestMemoryMmap, at: u64) -> u16 {
    mem.read_obj(GuestAddress(at)).unwrap_or(0)
}

/// One queue's rings (in the first 4 GiB) and where the driver puts its next chain.
pub struct Ring {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    pub next_desc: u16,
    /// The used index as the device last wrote it.
    pub used_by_device: u16,
}

impl Ring {
    pub fn new(desc: u64, avail: u64, used: u64, size: u16) -> Ring {
        Ring {
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            used_by_device: 0,
        }
    }

    /// The device side, ready, as a transport hands it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(256).expect("valid max size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(index % self.size);
        let _ = mem.write_slice(&raw_desc(addr, len, flags, next), GuestAddress(at));
    }

    /// Puts `head` in the available ring as is.
    pub fn push_avail(&self, mem: &GuestMemoryMmap, head: u16) {
        let idx = read_u16(mem, self.avail + 2);
        let slot = self.avail + 4 + 2 * u64::from(idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(slot));
        let _ = mem.write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2));
    }

    /// Scribbles on the available index.
    pub fn set_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        let _ = mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    /// Links `(addr, len, flags)` descriptors from the next free slot and makes the chain
    /// available.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) {
        let head = self.next_desc % self.size;
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let slot = (head + i) % self.size;
            let (flags, next) = if i + 1 < n {
                (flags | NEXT, (slot + 1) % self.size)
            } else {
                (flags, 0)
            };
            self.write_desc(mem, slot, addr, len, flags, next);
        }
        self.next_desc = (head + n) % self.size;
        self.push_avail(mem, head);
    }

    /// The used index now.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        read_u16(mem, self.used + 2)
    }

    /// Checks, after a call that took `taken` chains and succeeded (`ok`), that the used index
    /// moved by that many: it is the device's (a driver may scribble on it in between, and the
    /// device writes its own count over it when it returns a chain).
    pub fn check_used(&mut self, mem: &GuestMemoryMmap, taken: u64, ok: bool) {
        if taken > 0 {
            let now = self.used_idx(mem);
            if ok {
                assert_eq!(
                    now.wrapping_sub(self.used_by_device),
                    taken as u16,
                    "the used ring moved by the chains taken"
                );
            }
            self.used_by_device = now;
        }
    }

    /// The used ring, and (with `buffers`) the device-writable buffers the table names, as
    /// `(start, length)`: where the device may write.
    pub fn writable_ranges(&self, mem: &GuestMemoryMmap, buffers: bool) -> Vec<(u64, u64)> {
        let mut out = vec![(self.used, 6 + 8 * u64::from(self.size))];
        for i in 0..self.size.min(if buffers { u16::MAX } else { 0 }) {
            let mut d = [0u8; 16];
            if mem
                .read_slice(&mut d, GuestAddress(self.desc + 16 * u64::from(i)))
                .is_err()
            {
                continue;
            }
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
            let len = u64::from(u32::from_le_bytes(d[8..12].try_into().unwrap()));
            let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
            if flags & WRITE != 0 {
                out.push((addr, len));
            }
        }
        out
    }

    /// After a device reset: the driver starts the rings over.
    pub fn restart(&mut self, mem: &GuestMemoryMmap) {
        let _ = mem.write_obj(0u16, GuestAddress(self.used + 2));
        let _ = mem.write_obj(0u16, GuestAddress(self.avail + 2));
        self.next_desc = 0;
        self.used_by_device = 0;
    }
}

/// Buffers handed out from `[start, end)`, wrapping around.
pub struct BufArea {
    pub start: u64,
    pub end: u64,
    pub next: u64,
}

impl BufArea {
    pub fn new(start: u64, end: u64) -> BufArea {
        BufArea {
            start,
            end,
            next: start,
        }
    }

    /// Copies `data` into the next buffer; its address.
    pub fn buf(&mut self, mem: &GuestMemoryMmap, data: &[u8]) -> u64 {
        let len = data.len() as u64;
        if self.next + len > self.end {
            self.next = self.start;
        }
        let addr = self.next;
        let _ = mem.write_slice(data, GuestAddress(addr));
        self.next = (addr + len + 15) & !15;
        addr
    }
}

/// The bytes of every region.
pub fn snapshot(mem: &GuestMemoryMmap, regions: &[(u64, u64)]) -> Vec<Vec<u8>> {
    regions
        .iter()
        .map(|&(s, l)| {
            let mut v = vec![0u8; l as usize];
            mem.read_slice(&mut v, GuestAddress(s))
                .expect("region readable");
            v
        })
        .collect()
}

/// Panics if a byte changed since `before` outside `writable`.
pub fn assert_wrote_only(
    mem: &GuestMemoryMmap,
    regions: &[(u64, u64)],
    before: &[Vec<u8>],
    writable: &[(u64, u64)],
) {
    let after = snapshot(mem, regions);
    for (r, (b, a)) in before.iter().zip(&after).enumerate() {
        if b == a {
            continue;
        }
        for (i, (x, y)) in b.iter().zip(a).enumerate() {
            if x != y {
                let gpa = regions[r].0 + i as u64;
                assert!(
                    writable.iter().any(|&(s, l)| gpa >= s && gpa - s < l),
                    "the device wrote guest byte {gpa:#x}"
                );
            }
        }
    }
}
