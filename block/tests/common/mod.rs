//! Test harness: a real `GuestMemoryMmap` with a gap, a virtio-blk driver built on
//! `MockSplitQueue`, and devices over a `MemDisk` (which panics if the device ever asks for
//! bytes outside the disk).
#![allow(dead_code)]

use block::{Block, BlockOptions, DeviceModel, MemDisk};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

pub const MIB: u64 = 1 << 20;
/// Guest memory: [0, 16 MiB) and [32 MiB, 48 MiB); [16, 32) MiB is not guest memory.
pub const MEM_RANGES: [(u64, u64); 2] = [(0, 16 * MIB), (32 * MIB, 16 * MIB)];
pub const OUTSIDE_MEM: u64 = 20 * MIB;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
pub const UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
/// The disk the tests use: 1 MiB.
pub const DISK: u64 = MIB;

pub fn guest_mem() -> GuestMemoryMmap {
    let ranges: Vec<(GuestAddress, usize)> = MEM_RANGES
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

/// A disk whose byte `i` is `(i * 7 + i / 512) as u8`, so every sector differs.
pub fn patterned_disk() -> MemDisk {
    let mut d = MemDisk::new(DISK);
    for (i, b) in d.data.iter_mut().enumerate() {
        *b = (i * 7 + i / 512) as u8;
    }
    d
}

/// A request header.
pub fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// A discard/write-zeroes segment.
pub fn discard_seg(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut s = sector.to_le_bytes().to_vec();
    s.extend_from_slice(&sectors.to_le_bytes());
    s.extend_from_slice(&flags.to_le_bytes());
    s
}

/// The driver side of the request queue (at GPA 0, buffers from 1 MiB).
pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    pub vq: MockSplitQueue<'a, GuestMemoryMmap>,
    pub size: u16,
    next_desc: u16,
    next_buf: u64,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        Driver {
            mem,
            vq: MockSplitQueue::create(mem, GuestAddress(0), size),
            size,
            next_desc: 0,
            next_buf: MIB,
        }
    }

    pub fn queue(&self) -> Queue {
        self.vq.create_queue::<Queue>().unwrap()
    }

    /// A fresh guest buffer of `len` bytes (filled with 0xEE) and its address.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let addr = self.next_buf;
        self.next_buf = (addr + len as u64 + 15) & !15;
        assert!(self.next_buf <= 16 * MIB, "test buffers exhausted");
        self.mem
            .write_slice(&vec![0xee; len], GuestAddress(addr))
            .unwrap();
        addr
    }

    /// Copies `data` into a fresh guest buffer.
    pub fn buf(&mut self, data: &[u8]) -> u64 {
        let a = self.alloc(data.len());
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        a
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

    /// Stores descriptors exactly as given at the next free slots and makes the first one
    /// available. Returns the first slot.
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

    /// Puts `head` in the available ring as is.
    pub fn push_avail(&mut self, head: u16) {
        let idx = self.avail_idx();
        let slot = self
            .vq
            .avail_addr()
            .unchecked_add(4 + 2 * u64::from(idx % self.size));
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

    /// A request the way Linux lays it out: header, data descriptors, status.
    /// `out` is written (device-readable data), `in_len` bytes are read (device-writable).
    /// Returns (head, address of the device-writable data, address of the status byte).
    pub fn request(&mut self, kind: u32, sector: u64, out: &[u8], in_len: u32) -> Req {
        let h = self.buf(&header(kind, sector));
        let mut descs = vec![(h, 16, 0)];
        if !out.is_empty() {
            descs.push((self.buf(out), out.len() as u32, 0));
        }
        let data_in = if in_len > 0 {
            let a = self.alloc(in_len as usize);
            descs.push((a, in_len, WRITE));
            a
        } else {
            0
        };
        let status = self.alloc(1);
        descs.push((status, 1, WRITE));
        let head = self.add_chain(&descs);
        Req {
            head,
            data_in,
            status,
        }
    }

    pub fn status(&self, r: &Req) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
    }

    pub fn read_back(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// A request's head and buffers.
#[derive(Clone, Copy, Debug)]
pub struct Req {
    pub head: u16,
    pub data_in: u64,
    pub status: u64,
}

pub fn version_1() -> u64 {
    1 << VIRTIO_F_VERSION_1
}

/// A device over `disk`, its features acked and activated with a 256-entry queue.
pub fn activated(
    mem: &GuestMemoryMmap,
    disk: MemDisk,
    opts: BlockOptions,
) -> (Block<MemDisk>, Driver<'_>) {
    let mut dev = Block::new(disk, opts);
    dev.ack_features(dev.avail_features());
    let drv = Driver::new(mem, 256);
    dev.activate(vec![drv.queue()]).unwrap();
    (dev, drv)
}

pub fn rw() -> BlockOptions {
    BlockOptions {
        read_only: false,
        id: "memvisor-test-disk".into(),
    }
}

/// Prints (and logs to `$MEMVISOR_SKIP_LOG`, as the VMM's tests do) why part of a test did not
/// run here.
pub fn skip(test: &str, reason: impl std::fmt::Display) {
    println!("skip: {test}: {reason}");
    if let Ok(path) = std::env::var("MEMVISOR_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "skip: {test}: {reason}");
        }
    }
}

/// A scratch file removed on drop (also when the test fails).
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// A file named after the test in the temporary directory, holding `data`.
    pub fn new(test: &str, data: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("memvisor-block-{test}-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
