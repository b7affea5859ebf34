//! Test harness: a real `GuestMemoryMmap` with a gap, a virtio-blk driver built on
//! `MockSplitQueue`, and devices over a `MemDisk` (which panics if the device ever asks for
//! bytes outside the disk).
#![allow(dead_code)]

use block::{Block, BlockOptions, DeviceModel, MemDisk};
use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
#[allow(unused_imports)] // not every test file uses both
pub use virtio_mock::{skip, NEXT, WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MIB: u64 = 1 << 20;
/// Guest memory: [0, 16 MiB) and [32 MiB, 48 MiB); [16, 32) MiB is not guest memory.
pub const MEM_RANGES: [(u64, u64); 2] = [(0, 16 * MIB), (32 * MIB, 16 * MIB)];
pub const OUTSIDE_MEM: u64 = 20 * MIB;
pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
pub const IOERR: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
pub const UNSUPP: u8 = virtio_bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;
/// The disk the tests use: 1 MiB.
pub const DISK: u64 = MIB;

pub fn guest_mem() -> GuestMemoryMmap {
    virtio_mock::guest_mem(&MEM_RANGES)
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

pub use virtio_mock::Driver;

/// The driver side of the request queue (at GPA 0, buffers from 1 MiB to 16 MiB).
pub fn driver(mem: &GuestMemoryMmap, size: u16) -> Driver<'_> {
    Driver::new(mem, 0, size, MIB..16 * MIB)
}

/// virtio-blk requests on top of the generic driver.
pub trait BlkDriver {
    /// A request the way Linux lays it out: header, data descriptors, status.
    /// `out` is written (device-readable data), `in_len` bytes are read (device-writable).
    fn request(&mut self, kind: u32, sector: u64, out: &[u8], in_len: u32) -> Req;
    /// The status byte of `r`.
    fn status(&self, r: &Req) -> u8;
}

impl BlkDriver for Driver<'_> {
    fn request(&mut self, kind: u32, sector: u64, out: &[u8], in_len: u32) -> Req {
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

    fn status(&self, r: &Req) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
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
    let drv = driver(mem, 256);
    dev.activate(vec![drv.queue()]).unwrap();
    (dev, drv)
}

pub fn rw() -> BlockOptions {
    BlockOptions {
        read_only: false,
        id: "memvisor-test-disk".into(),
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
