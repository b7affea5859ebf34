//! Fuzz target: the virtio-net device model (the `net` crate) driven by a hostile driver and
//! a hostile network.
//!
//! The input is a script of actions, decoded by a small byte format (see `fuzz/make_seeds.py`,
//! which writes the seed corpus): raw descriptors, available ring entries and index moves on
//! either queue, raw guest memory writes, receive chains and transmit frames built the way
//! Linux lays them out (any lengths, split points, header bytes, directions), frames arriving
//! from the host (any length and header), queue notifications, "the tap is readable", config
//! space accesses, resets and host failures. The backend is a `MemBackend`.
//!
//! Guest memory is a 64 KiB region (the rings) and a 256 KiB one (the buffers) with a gap.
//! Invariants, checked after every call into the device:
//! - no panic;
//! - the device writes guest memory only inside the used rings and the device-writable
//!   buffers the receive queue's table names (never a transmit buffer);
//! - every frame read from the backend ends in exactly one outcome (delivered, or dropped for
//!   one counted reason), and every chain taken from a ring in one (sent or refused; delivered
//!   into or refused), and the used indexes moved by the chains taken;
//! - every frame sent is 26 to 65562 bytes with a header asking for no offload.

#![no_main]

use libfuzzer_sys::fuzz_target;
use net::{
    DeviceModel, MemBackend, Net, NetCounters, NetOptions, MAX_FRAME_BYTES, MIN_TX_FRAME_BYTES,
};
#[path = "reader.rs"]
#[allow(dead_code)] // not every target reads every field width
mod reader;
#[path = "ring.rs"]
mod ring;
use reader::Reader;
use ring::{assert_wrote_only, near, snapshot, BufArea, Ring, WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory: [0, 64K) and [128K, 384K).
const MEM: [(u64, u64); 2] = [(0, 0x1_0000), (0x2_0000, 0x4_0000)];
const MAX_ACTIONS: usize = 256;
/// Frames up to a little over the largest one accepted.
const FRAME_SPAN: u32 = MAX_FRAME_BYTES as u32 + 64;

fn rx_outcomes(c: &NetCounters) -> u64 {
    c.rx_frames
        + c.rx_dropped_no_buffers
        + c.rx_dropped_not_activated
        + c.rx_frames_too_big
        + c.rx_host_errors
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Net<MemBackend>,
    rings: [Ring; 2],
    bufs: BufArea,
}

impl Harness {
    fn activate(&mut self) {
        let qs = vec![self.rings[0].queue(), self.rings[1].queue()];
        self.dev.activate(qs).expect("the queues are ready");
    }

    /// A receive chain of 1-3 buffers of fuzzed lengths (sometimes device-readable).
    fn post_rx(&mut self, r: &mut Reader) {
        let n = 1 + usize::from(r.u8() % 3);
        let mut descs = Vec::new();
        for _ in 0..n {
            let (len, flags) = (u32::from(r.u16()) % 4096, r.u8());
            let a = self.bufs.buf(&self.mem, &vec![0xee; len as usize]);
            let dir = if flags & 0x80 != 0 { 0 } else { WRITE };
            descs.push((a, len, dir));
        }
        self.rings[0].add_chain(&self.mem, &descs);
    }

    /// A transmit frame of fuzzed length and header, cut in up to 3 pieces.
    fn post_tx(&mut self, r: &mut Reader) {
        let len = r.u32() % FRAME_SPAN;
        let (flags, gso) = (r.u8(), r.u8());
        let mut frame = vec![0x5au8; len as usize];
        if len >= 2 && flags & 0x80 != 0 {
            frame[0] = flags & 0x7f;
            frame[1] = gso;
        } else if len >= 2 {
            frame[0] = 0;
            frame[1] = 0;
        }
        let cuts = [r.u16() as u32 % (len + 1), r.u16() as u32 % (len + 1)];
        let (a, b) = (cuts[0].min(cuts[1]), cuts[0].max(cuts[1]));
        let mut descs = Vec::new();
        for (s, e) in [(0, a), (a, b), (b, len)] {
            if e > s || len == 0 {
                let at = self.bufs.buf(&self.mem, &frame[s as usize..e as usize]);
                descs.push((at, e - s, 0));
            }
            if len == 0 {
                break;
            }
        }
        self.rings[1].add_chain(&self.mem, &descs);
    }

    /// Calls the device (`what`: 0 receive notification, 1 transmit notification, 2 the tap
    /// is readable) and checks the invariants.
    fn call(&mut self, what: u8) {
        let before = snapshot(&self.mem, &MEM);
        let c0 = self.dev.counters();
        let (incoming0, sent0) = (
            self.dev.backend().incoming.len(),
            self.dev.backend().sent.len(),
        );
        // What the receive table names writable as the device starts (a buffer may overlap the
        // table itself, and the device's write then changes the entry that named it).
        let writable_before = self.rings[0].writable_ranges(&self.mem, true);
        let result = match what {
            0 | 1 => self.dev.process_queue(u16::from(what), &self.mem, &()),
            _ => self.dev.receive(&self.mem),
        };
        let c1 = self.dev.counters();
        let ok = result.is_ok();
        let mut writable = self.rings[0].writable_ranges(&self.mem, true);
        writable.extend(self.rings[1].writable_ranges(&self.mem, false));
        writable.extend(writable_before);
        assert_wrote_only(&self.mem, &MEM, &before, &writable);
        let consumed = (incoming0 - self.dev.backend().incoming.len()) as u64;
        if ok {
            assert_eq!(
                rx_outcomes(&c1) - rx_outcomes(&c0),
                consumed,
                "every frame read has one outcome: {c1:?}"
            );
        }
        let rx_taken = (c1.rx_frames + c1.rx_bad_chains) - (c0.rx_frames + c0.rx_bad_chains);
        self.rings[0].check_used(&self.mem, rx_taken, ok);
        let tx_taken = (c1.tx_frames + c1.tx_bad_frames + c1.tx_host_errors)
            - (c0.tx_frames + c0.tx_bad_frames + c0.tx_host_errors);
        self.rings[1].check_used(&self.mem, tx_taken, ok);
        let sent = &self.dev.backend().sent[sent0..];
        assert_eq!(sent.len() as u64, c1.tx_frames - c0.tx_frames);
        for f in sent {
            assert!(
                (MIN_TX_FRAME_BYTES..=MAX_FRAME_BYTES).contains(&f.len()) && f[0] == 0 && f[1] == 0,
                "a frame of {} bytes, header {:?}, reached the host",
                f.len(),
                &f[..2]
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let fail = r.u8() & 1 != 0;
    let rx_size = 1u16 << (r.u8() % 9);
    let tx_size = 1u16 << (r.u8() % 9);
    let ranges: Vec<(GuestAddress, usize)> = MEM
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    let mut dev = Net::new(
        MemBackend::default(),
        NetOptions {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        },
    );
    dev.backend_mut().fail = fail.then_some(std::io::ErrorKind::Other);
    dev.ack_features(u64::from(r.u32()) | (u64::from(r.u8()) << 32));
    let mut h = Harness {
        mem: GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"),
        dev,
        rings: [
            Ring::new(0, 0x1000, 0x2000, rx_size),
            Ring::new(0x4000, 0x5000, 0x6000, tx_size),
        ],
        bufs: BufArea::new(MEM[1].0, MEM[1].0 + MEM[1].1),
    };
    h.activate();
    for _ in 0..MAX_ACTIONS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 13 {
            0 => {
                let (at, n) = (near(&mut r, 0x6_0000), usize::from(r.u8()));
                let bytes = r.bytes(n);
                let _ = h.mem.write_slice(&bytes, GuestAddress(at));
            }
            1 => {
                let q = usize::from(r.u8() & 1);
                let (index, addr, len, flags, next) =
                    (r.u16(), near(&mut r, 0x6_0000), r.u32(), r.u16(), r.u16());
                h.rings[q].write_desc(&h.mem, index, addr, len, flags, next);
            }
            2 => {
                let (q, head) = (usize::from(r.u8() & 1), r.u16());
                h.rings[q].push_avail(&h.mem, head);
            }
            3 => h.post_rx(&mut r),
            4 => h.post_tx(&mut r),
            5 => {
                let (len, flags, gso) = (r.u32() % FRAME_SPAN, r.u8(), r.u8());
                let mut f = vec![0xa5u8; len as usize];
                if len >= 2 {
                    f[0] = flags;
                    f[1] = gso;
                }
                h.dev.backend_mut().incoming.push_back(f);
            }
            6 => h.call(0),
            7 => h.call(1),
            8 => h.call(2),
            9 => {
                let (q, idx) = (usize::from(r.u8() & 1), r.u16());
                h.rings[q].set_avail_idx(&h.mem, idx);
            }
            10 => {
                let (offset, len) = (u64::from(r.u8()), usize::from(r.u8() % 16));
                let mut buf = vec![0xffu8; len];
                h.dev.read_config(offset, &mut buf);
                if offset + len as u64 > net::features::CONFIG_SPACE_SIZE {
                    assert!(
                        buf.iter().all(|&b| b == 0),
                        "rejected reads are zero-filled"
                    );
                }
                let bytes = r.bytes(len);
                h.dev.write_config(offset, &bytes);
            }
            11 => {
                h.dev.reset();
                for ring in &mut h.rings {
                    ring.restart(&h.mem);
                }
                h.activate();
            }
            _ => {
                let b = h.dev.backend_mut();
                b.fail = match b.fail {
                    None => Some(std::io::ErrorKind::Other),
                    Some(_) => None,
                };
            }
        }
    }
    h.call(1);
    h.call(2);
});
