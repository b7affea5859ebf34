//! Fuzz target: the virtio-blk device model (the `block` crate) driven by a hostile driver.
//!
//! The input is a script of driver actions, decoded by a small byte format (see
//! `fuzz/make_seeds.py`, which writes the seed corpus): raw descriptors, available ring
//! entries and index moves, raw guest memory writes, requests built the way Linux lays them out
//! (header, data, status; any type, sector, lengths and split points), notifications, config
//! space accesses and resets. The disk is a 64 KiB `MemDisk` (read-only, 4 KiB-block,
//! failing-I/O and cannot-punch variants chosen by the header byte).
//!
//! Guest memory is two 64 KiB regions with a 64 KiB gap between them. Invariants, checked after
//! every notification:
//! - no panic; the `MemDisk` panics if the device asks it for a byte outside the disk or, with
//!   4 KiB blocks, for an unaligned range;
//! - every request taken from the ring ends in exactly one outcome: completed (one of the six
//!   request kinds), refused with `IOERR` or `UNSUPP`, or returned without a status;
//! - the used index the device writes moved by the number of chains taken (a driver may
//!   scribble on it in between; the device writes its own count over it);
//! - the device writes guest memory only inside the used ring and the device-writable buffers
//!   named by the descriptor table;
//! - the disk changes only when the device counted written, discarded or zeroed bytes, and a
//!   read-only disk never changes.

#![no_main]

use block::{Block, BlockCounters, BlockOptions, DeviceModel, MemDisk};
use libfuzzer_sys::fuzz_target;
#[path = "reader.rs"]
mod reader;
#[path = "ring.rs"]
mod ring;
use reader::Reader;
use ring::{assert_wrote_only, near, snapshot, BufArea, Ring, WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: [0, 64K) and [128K, 192K).
const MEM: [(u64, u64); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
const DESC: u64 = 0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Where the requests the harness builds put their buffers (region 2).
const BUF_AREA: (u64, u64) = (0x2_0000, 0x1_0000);
const DISK: u64 = 64 << 10;
const MAX_ACTIONS: usize = 256;

fn outcomes(c: &BlockCounters) -> u64 {
    c.reads
        + c.writes
        + c.flushes
        + c.get_ids
        + c.discards
        + c.write_zeroes
        + c.ioerr_status
        + c.unsupp_status
        + c.no_status
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Block<MemDisk>,
    ring: Ring,
    bufs: BufArea,
    read_only: bool,
}

impl Harness {
    fn buf(&mut self, data: &[u8]) -> u64 {
        self.bufs.buf(&self.mem, data)
    }

    /// A request laid out as Linux does, with fuzzed type, sector, lengths and flags; `split`
    /// cuts the header in two descriptors when non-zero.
    fn request(&mut self, r: &mut Reader) {
        let (kind, sector) = (r.u32() % 16, r.u64() % 256);
        let sector = if r.u8() & 0x80 != 0 { r.u64() } else { sector };
        let (out_len, in_len) = (usize::from(r.u16() % 4200), r.u16() % 4200);
        let (split, status_len) = (r.u8() % 16, r.u8() % 3);
        let mut header = kind.to_le_bytes().to_vec();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&sector.to_le_bytes());
        let mut descs = Vec::new();
        if split > 0 {
            let a = self.buf(&header[..usize::from(split)]);
            let b = self.buf(&header[usize::from(split)..]);
            descs.push((a, u32::from(split), 0));
            descs.push((b, 16 - u32::from(split), 0));
        } else {
            let h = self.buf(&header);
            descs.push((h, 16, 0));
        }
        if out_len > 0 {
            // Discard/write-zeroes segments or write data: whatever the input says.
            let data = r.bytes(out_len);
            let mut data = data.clone();
            data.resize(out_len, 0x5a);
            let d = self.buf(&data);
            descs.push((d, out_len as u32, 0));
        }
        if in_len > 0 {
            let d = self.buf(&vec![0xee; usize::from(in_len)]);
            descs.push((d, u32::from(in_len), WRITE));
        }
        if status_len > 0 {
            let s = self.buf(&[0xee; 2]);
            descs.push((s, u32::from(status_len), WRITE));
        }
        self.ring.add_chain(&self.mem, &descs);
    }

    fn notify(&mut self) {
        let before_mem = snapshot(&self.mem, &MEM);
        // What the table names writable as the device starts: a writable buffer may overlap the
        // descriptor table itself, and the device's write then changes the entry that named it.
        let writable_before = self.ring.writable_ranges(&self.mem, true);
        let before_disk = self.dev.backend().data.clone();
        let c0 = self.dev.counters();
        let result = self.dev.process_queue(0, &self.mem, &());
        let c1 = self.dev.counters();
        let taken = c1.requests - c0.requests;
        assert_eq!(
            outcomes(&c1) - outcomes(&c0),
            taken,
            "every request has exactly one outcome: {c1:?}"
        );
        self.ring.check_used(&self.mem, taken, result.is_ok());
        let mut writable = self.ring.writable_ranges(&self.mem, true);
        writable.extend(writable_before);
        assert_wrote_only(&self.mem, &MEM, &before_mem, &writable);
        let changed_disk = self.dev.backend().data != before_disk;
        let disk_work = c1.written_bytes != c0.written_bytes
            || c1.discarded_bytes != c0.discarded_bytes
            || c1.zeroed_bytes != c0.zeroed_bytes
            // A write that failed half-way (host I/O error) still counts as a refusal.
            || c1.host_io_errors != c0.host_io_errors;
        assert!(
            !changed_disk || disk_work,
            "the disk changed without a write"
        );
        assert!(
            !(self.read_only && changed_disk),
            "a read-only disk changed"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let flags = r.u8();
    let size = 1u16 << (r.u8() % 9);
    let read_only = flags & 1 != 0;
    let mut disk = MemDisk::new(DISK);
    for (i, b) in disk.data.iter_mut().enumerate() {
        *b = (i * 7 + i / 512) as u8;
    }
    if flags & 2 != 0 {
        disk.block = 4096;
    }
    disk.fail_io = flags & 4 != 0;
    disk.no_punch = flags & 8 != 0;
    let ranges: Vec<(GuestAddress, usize)> = MEM
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mut dev = Block::new(
        disk,
        BlockOptions {
            read_only,
            id: "fuzz-disk".into(),
        },
    );
    dev.ack_features(u64::from(r.u32()) | (u64::from(r.u8()) << 32));
    let ring = Ring::new(DESC, AVAIL, USED, size);
    dev.activate(vec![ring.queue()])
        .expect("the queue is ready");
    let mut h = Harness {
        mem: GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"),
        dev,
        ring,
        bufs: BufArea::new(BUF_AREA.0, BUF_AREA.0 + BUF_AREA.1),
        read_only,
    };
    for _ in 0..MAX_ACTIONS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 8 {
            0 => {
                let (at, n) = (near(&mut r, 0), usize::from(r.u8()));
                let bytes = r.bytes(n);
                let _ = h.mem.write_slice(&bytes, GuestAddress(at));
            }
            1 => {
                let (index, addr, len, flags, next) =
                    (r.u16(), near(&mut r, 0), r.u32(), r.u16(), r.u16());
                h.ring.write_desc(&h.mem, index, addr, len, flags, next);
            }
            2 => {
                let head = r.u16();
                h.ring.push_avail(&h.mem, head);
            }
            3 => h.request(&mut r),
            4 => h.notify(),
            5 => {
                let idx = r.u16();
                h.ring.set_avail_idx(&h.mem, idx);
            }
            6 => {
                let (offset, len) = (u64::from(r.u8()), usize::from(r.u8() % 16));
                let mut buf = vec![0xffu8; len];
                h.dev.read_config(offset, &mut buf);
                if offset + len as u64 > block::features::CONFIG_SPACE_SIZE {
                    assert!(
                        buf.iter().all(|&b| b == 0),
                        "rejected reads are zero-filled"
                    );
                }
                let bytes = r.bytes(len);
                h.dev.write_config(offset, &bytes);
            }
            _ => {
                h.dev.reset();
                h.ring.restart(&h.mem);
                h.dev
                    .activate(vec![h.ring.queue()])
                    .expect("the queue is ready");
            }
        }
    }
    h.notify();
});
