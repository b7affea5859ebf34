//! Fuzz target: the virtio-balloon device model (the `balloon` crate) driven by a hostile driver.
//!
//! The input is a script of driver and host actions, decoded by a small byte format (see
//! `fuzz/make_seeds.py`, which writes the seed corpus): feature negotiation, queue setup the way
//! the virtio-mmio transport does it (`src/devices/virtio_mmio.rs`), descriptor tables, available
//! ring entries, raw guest memory writes, PFN/report/stats buffers, chains using indirect
//! descriptors (never offered), config space accesses, notifications, stats requests, target
//! and polling-interval changes, resets.
//!
//! Guest memory is two 64 KiB regions with a 64 KiB gap between them; the backend's RAM map
//! leaves a 16 KiB hole in the first region. Invariants, checked after every action:
//! - no panic;
//! - the backend is asked to discard or reclaim only non-empty, 4 KiB aligned ranges that lie
//!   entirely inside guest RAM (the recording backend asserts it);
//! - the device writes guest memory only inside the used rings of its active queues;
//! - the device counters agree with the backend calls;
//! - a chain with `VIRTQ_DESC_F_INDIRECT` (posted alone and processed at once) is refused under
//!   `indirect_not_negotiated`, and the device neither follows its table nor calls the backend;
//! - config space reads agree with the target and `actual` the device reports, and rejected
//!   reads are zero-filled.

#![no_main]

use std::cell::RefCell;

use balloon::features::{
    feature_mask, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ, VIRTIO_F_VERSION_1,
};
use balloon::stats::encode_stats;
use balloon::{Balloon, BalloonOptions, DeviceModel, MemoryBackend};
use libfuzzer_sys::fuzz_target;
#[path = "reader.rs"]
mod reader;
use memvisor::devices::virtio_transport::copy_queue;
use reader::Reader;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PAGE: u64 = 4096;
/// Guest memory: [0, 64K) and [128K, 192K).
const MEM: [(u64, u64); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];
/// RAM according to the backend: guest memory less the hole [32K, 48K).
const RAM: [(u64, u64); 3] = [(0, 0x8000), (0xc000, 0x4000), (0x2_0000, 0x1_0000)];
/// Where the PFN/report/stats buffers the harness builds go (region 2).
const BUF_AREA: (u64, u64) = (0x2_0000, 0x1_0000);
/// Most actions decoded from one input.
const MAX_ACTIONS: usize = 256;

/// Whether `[gpa, gpa + len)` lies inside one of `ranges`.
fn inside(ranges: &[(u64, u64)], gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    ranges.iter().any(|&(s, l)| gpa >= s && end <= s + l)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Discard,
    Reclaim,
}

/// Records every call and asserts that it is on guest RAM; fails the calls that `fail_mask`
/// selects (call number modulo 8). A `lax` backend calls everything below 1 MiB RAM, also the
/// gap and what lies past guest memory, so the device's own guest-memory checks are what keeps
/// its calls inside guest memory.
struct Recorder {
    calls: RefCell<Vec<(Kind, u64, u64, Result<u64, ()>)>>,
    fail_mask: u8,
    lax: bool,
}

impl Recorder {
    fn record(&self, kind: Kind, gpa: u64, len: u64) -> Result<u64, ()> {
        assert!(
            len > 0 && gpa % PAGE == 0 && len % PAGE == 0,
            "{kind:?} of an unaligned or empty range {gpa:#x}+{len:#x}"
        );
        assert!(
            inside(&MEM, gpa, len) && self.is_ram(gpa, len),
            "{kind:?} outside guest RAM: {gpa:#x}+{len:#x}"
        );
        let mut calls = self.calls.borrow_mut();
        let fail = self.fail_mask & (1 << (calls.len() % 8)) != 0;
        // Report a varying share as really freed, as huge-page backed memory would.
        let result = if fail {
            Err(())
        } else {
            Ok(len >> (calls.len() % 3))
        };
        calls.push((kind, gpa, len, result));
        result
    }
}

impl MemoryBackend for Recorder {
    fn is_ram(&self, gpa: u64, len: u64) -> bool {
        if self.lax {
            inside(&[(0, 1 << 20)], gpa, len)
        } else {
            inside(&RAM, gpa, len)
        }
    }
    fn discard(&self, gpa: u64, len: u64) -> Result<u64, String> {
        self.record(Kind::Discard, gpa, len)
            .map_err(|()| "injected failure".into())
    }
    fn reclaim(&self, gpa: u64, len: u64) -> Result<(), String> {
        self.record(Kind::Reclaim, gpa, len)
            .map(|_| ())
            .map_err(|()| "injected failure".into())
    }
}

/// A PFN: a u16 below 0x8000 is taken modulo 128 (pages 0..128 cover both regions, the gap
/// and what lies past them); otherwise a raw u32 follows.
fn pfn(r: &mut Reader) -> u32 {
    let v = r.u16();
    if v & 0x8000 == 0 {
        u32::from(v & 0x7f)
    } else {
        r.u32()
    }
}

/// The transport's view: the queues as the driver configured them, as in `virtio_mmio.rs`.
struct Harness {
    mem: GuestMemoryMmap,
    dev: Balloon,
    backend: Recorder,
    transport_queues: Vec<Queue>,
    activated: bool,
    next_desc: [u16; 4],
    next_buf: u64,
}

impl Harness {
    fn new(opts: BalloonOptions, fail_mask: u8, lax: bool) -> Self {
        let ranges: Vec<(GuestAddress, usize)> = MEM
            .iter()
            .map(|&(s, l)| (GuestAddress(s), l as usize))
            .collect();
        let dev = Balloon::new(opts);
        let transport_queues = dev
            .queue_max_sizes()
            .iter()
            .map(|&m| Queue::new(m).expect("the device offers valid queue sizes"))
            .collect();
        Harness {
            mem: GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"),
            dev,
            backend: Recorder {
                calls: RefCell::new(Vec::new()),
                fail_mask,
                lax,
            },
            transport_queues,
            activated: false,
            next_desc: [0; 4],
            next_buf: BUF_AREA.0,
        }
    }

    fn queue(&self, q: u8) -> Option<&Queue> {
        self.transport_queues.get(usize::from(q))
    }

    /// Copies `data` into the buffer area and returns its address.
    fn buf(&mut self, data: &[u8]) -> u64 {
        let len = data.len() as u64;
        if self.next_buf + len > BUF_AREA.0 + BUF_AREA.1 {
            self.next_buf = BUF_AREA.0;
        }
        let addr = self.next_buf;
        let _ = self.mem.write_slice(data, GuestAddress(addr));
        self.next_buf = (addr + len + 15) & !15;
        addr
    }

    /// Writes descriptor `index` of queue `q` (the driver may write anywhere).
    fn write_desc(&self, q: u8, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let Some(queue) = self.queue(q) else { return };
        if let Some(at) = queue.desc_table().checked_add(16 * u64::from(index)) {
            let raw = raw_desc(addr, len, flags, next);
            let _ = self.mem.write_slice(&raw, GuestAddress(at));
        }
    }

    /// Posts a chain whose head has `VIRTQ_DESC_F_INDIRECT` (never offered) pointing at an
    /// indirect table of `n` one-PFN buffers, `len_extra` bytes added to the table length (0:
    /// a well-formed table) and `more_flags` (NEXT, WRITE) on the head. When it is the only
    /// chain pending on an active queue, processes it at once and checks that it was refused
    /// under `indirect_not_negotiated` without a backend call (the table is not followed).
    fn indirect_chain(&mut self, r: &mut Reader) {
        let (q, more_flags, n, len_extra) = (r.u8() % 4, r.u16() & 3, r.u8() % 6, r.u8() % 17);
        let Some(size) = self.queue(q).map(|q| q.size()) else {
            return;
        };
        let mut table = Vec::new();
        for i in 0..n {
            let pfn = pfn(r);
            let at = self.buf(&pfn.to_le_bytes());
            let flags = if i + 1 < n { 1 } else { 0 };
            table.extend(raw_desc(at, 4, flags, u16::from(i) + 1));
        }
        let table_at = self.buf(&table);
        let qi = usize::from(q);
        let head = self.next_desc[qi] % size;
        let len = 16 * u32::from(n) + u32::from(len_extra);
        self.write_desc(q, head, table_at, len, 4 | more_flags, (head + 1) % size);
        self.next_desc[qi] = (head + 1) % size;
        self.push_avail(q, head);
        if !self.activated || self.dev.needs_reset() || !self.only_pending(q, head) {
            return;
        }
        let before = self.dev.counters().indirect_not_negotiated;
        let calls = self.backend.calls.borrow().len();
        let snapshot = self.snapshot();
        let result = self
            .dev
            .process_queue(u16::from(q), &self.mem, &self.backend);
        self.check_writes(snapshot);
        if result.is_ok() {
            assert_eq!(
                self.dev.counters().indirect_not_negotiated,
                before + 1,
                "an indirect chain was not refused as such"
            );
            assert_eq!(
                self.backend.calls.borrow().len(),
                calls,
                "the device acted on an indirect chain"
            );
        }
    }

    /// Whether the device's queue `q` has exactly one chain pending, headed by descriptor
    /// `head` whose flags (as the device will read them) include `VIRTQ_DESC_F_INDIRECT`.
    fn only_pending(&self, q: u8, head: u16) -> bool {
        let Some(dq) = self.dev.queues().get(usize::from(q)) else {
            return false;
        };
        let read_u16 =
            |at: Option<u64>| at.and_then(|a| self.mem.read_obj::<u16>(GuestAddress(a)).ok());
        let avail = dq.avail_ring();
        let idx = read_u16(avail.checked_add(2));
        let slot = avail.checked_add(4 + 2 * u64::from(dq.next_avail() % dq.size()));
        let flags = dq.desc_table().checked_add(16 * u64::from(head) + 12);
        idx.is_some_and(|i| i.wrapping_sub(dq.next_avail()) == 1)
            && read_u16(slot) == Some(head)
            && read_u16(flags).is_some_and(|f| f & 4 != 0)
    }

    /// Adds a chain of `(addr, len, flags)` descriptors at the next free slots of queue `q` and
    /// makes it available.
    fn add_chain(&mut self, q: u8, descs: &[(u64, u32, u16)]) {
        let Some(size) = self.queue(q).map(|q| q.size()) else {
            return;
        };
        let qi = usize::from(q);
        let head = self.next_desc[qi] % size;
        let n = descs.len() as u16;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = i as u16;
            let slot = (head + i) % size;
            let (flags, next) = if i + 1 < n {
                (flags | 1, (slot + 1) % size)
            } else {
                (flags & !1, 0)
            };
            self.write_desc(q, slot, addr, len, flags, next);
        }
        self.next_desc[qi] = (head + n) % size;
        self.push_avail(q, head);
    }

    fn push_avail(&self, q: u8, head: u16) {
        let Some(queue) = self.queue(q) else { return };
        let (avail, size) = (queue.avail_ring(), queue.size());
        let Some(idx_at) = avail.checked_add(2) else {
            return;
        };
        let idx: u16 = self.mem.read_obj(GuestAddress(idx_at)).unwrap_or(0);
        if let Some(slot) = avail.checked_add(4 + 2 * u64::from(idx % size)) {
            let _ = self.mem.write_obj(head, GuestAddress(slot));
        }
        let _ = self
            .mem
            .write_obj(idx.wrapping_add(1), GuestAddress(idx_at));
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        MEM.iter()
            .map(|&(s, l)| {
                let mut v = vec![0u8; l as usize];
                self.mem
                    .read_slice(&mut v, GuestAddress(s))
                    .expect("region readable");
                v
            })
            .collect()
    }

    /// Every byte that changed since `before` lies in the used ring of an active queue.
    fn check_writes(&self, mut before: Vec<Vec<u8>>) {
        let after = self.snapshot();
        let used: Vec<(u64, u64)> = self
            .dev
            .queues()
            .iter()
            .map(|q| (q.used_ring(), 4 + 8 * u64::from(q.size())))
            .collect();
        for (r, &(start, len)) in MEM.iter().enumerate() {
            // Let the used rings change, then the rest must be the same (memcmp: a byte loop
            // is slow under instrumentation and only runs to report a failure).
            for &(u, l) in &used {
                let (from, to) = (u.max(start), u.saturating_add(l).min(start + len));
                if from < to {
                    let range = (from - start) as usize..(to - start) as usize;
                    before[r][range.clone()].copy_from_slice(&after[r][range]);
                }
            }
            if before[r] != after[r] {
                let i = before[r]
                    .iter()
                    .zip(&after[r])
                    .position(|(a, b)| a != b)
                    .unwrap();
                panic!(
                    "the device wrote guest memory at {:#x}, outside its used rings {used:x?}",
                    start + i as u64
                );
            }
        }
    }

    fn check_counters(&self) {
        let c = self.dev.counters();
        let calls = self.backend.calls.borrow();
        let sum = |f: &dyn Fn(&(Kind, u64, u64, Result<u64, ()>)) -> Option<u64>| -> u64 {
            calls.iter().filter_map(f).sum()
        };
        let discarded_ok = sum(&|&(k, _, l, r)| (k == Kind::Discard && r.is_ok()).then_some(l));
        let freed = sum(&|&(k, _, _, r)| if k == Kind::Discard { r.ok() } else { None });
        let reclaimed = sum(&|&(k, _, l, _)| (k == Kind::Reclaim).then_some(l));
        let failures = calls.iter().filter(|c| c.3.is_err()).count() as u64;
        assert_eq!(
            c.discarded_bytes, discarded_ok,
            "discarded_bytes vs backend calls"
        );
        assert_eq!(c.freed_bytes, freed, "freed_bytes vs backend calls");
        assert_eq!(
            c.deflated_pages * PAGE,
            reclaimed,
            "deflated_pages vs backend calls"
        );
        assert_eq!(c.backend_errors, failures, "backend_errors vs failed calls");
        if failures == 0 {
            assert_eq!(
                c.discarded_bytes,
                c.inflated_pages * PAGE + c.reported_bytes,
                "discarded bytes are inflated pages plus reported ranges"
            );
        }
    }

    fn check_config(&self) {
        let mut b = [0u8; 8];
        self.dev.read_config(0, &mut b);
        let num_pages = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let actual = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        assert_eq!(num_pages, self.dev.target_pages());
        assert_eq!(actual, self.dev.actual_pages());
    }

    fn activate(&mut self) {
        if self.activated {
            return;
        }
        let queues = self.transport_queues.iter().map(copy_queue).collect();
        if self.dev.activate(queues).is_ok() {
            self.activated = true;
            assert!(self.dev.is_activated());
            assert_eq!(
                self.dev.queues().len(),
                usize::from(self.dev.queue_layout().count())
            );
        }
    }

    fn reset(&mut self) {
        for q in &mut self.transport_queues {
            q.reset();
        }
        self.dev.reset();
        self.activated = false;
        self.next_desc = [0; 4];
        assert!(self.dev.queues().is_empty() && !self.dev.holds_stats_buffer());
    }

    fn step(&mut self, r: &mut Reader) {
        match r.u8() % 20 {
            0 => {
                let f = r.u64();
                if !self.activated {
                    self.dev.ack_features(f);
                }
            }
            1 => {
                let bits = r.u8();
                let mut f = feature_mask(VIRTIO_F_VERSION_1);
                for (bit, feature) in [
                    (1, VIRTIO_BALLOON_F_STATS_VQ),
                    (2, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
                    (4, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING),
                ] {
                    if bits & bit != 0 {
                        f |= feature_mask(feature);
                    }
                }
                if !self.activated {
                    self.dev.ack_features(f);
                }
            }
            2 => {
                let (q, size, desc, avail, used, ready) =
                    (r.u8(), r.u16(), r.addr(), r.addr(), r.addr(), r.u8());
                if self.activated {
                    return; // the transport refuses queue setup after DRIVER_OK
                }
                let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
                if let Some(queue) = self.transport_queues.get_mut(usize::from(q)) {
                    queue.set_size(size);
                    let (lo, hi) = split(desc);
                    queue.set_desc_table_address(lo, hi);
                    let (lo, hi) = split(avail);
                    queue.set_avail_ring_address(lo, hi);
                    let (lo, hi) = split(used);
                    queue.set_used_ring_address(lo, hi);
                    queue.set_ready(ready & 1 == 1);
                }
            }
            3 => {
                // Every queue at its usual place in region 1, all of one size.
                let size = 1u16 << (r.u8() % 9);
                if self.activated {
                    return;
                }
                for (i, q) in self.transport_queues.iter_mut().enumerate() {
                    let base = i as u64 * 0x3000;
                    q.set_size(size);
                    q.set_desc_table_address(Some(base as u32), Some(0));
                    q.set_avail_ring_address(Some(base as u32 + 0x1000), Some(0));
                    q.set_used_ring_address(Some(base as u32 + 0x2000), Some(0));
                    q.set_ready(true);
                }
            }
            4 => self.activate(),
            5 => self.reset(),
            6 => {
                let addr = r.addr();
                let n = r.u8();
                let data = r.bytes(usize::from(n));
                let _ = self.mem.write_slice(&data, GuestAddress(addr));
            }
            7 => {
                let (q, index, addr, len, flags, next) =
                    (r.u8(), r.u16(), r.addr(), r.u32(), r.u16(), r.u16());
                self.write_desc(q, index, addr, len, flags, next);
            }
            8 => {
                let (q, shape, n) = (r.u8(), r.u8(), r.u16() % 1100);
                let pfns: Vec<u8> = (0..n).flat_map(|_| pfn(r).to_le_bytes()).collect();
                let addr = self.buf(&pfns);
                let pieces = u64::from(shape % 3) + 1;
                let flags = if shape & 0x4 != 0 { 2 } else { 0 }; // VRING_DESC_F_WRITE
                let total = pfns.len() as u64;
                let per = (total / pieces).div_ceil(4) * 4;
                let descs: Vec<(u64, u32, u16)> = (0..pieces)
                    .map(|i| {
                        let start = (i * per).min(total);
                        let end = if i + 1 == pieces {
                            total
                        } else {
                            ((i + 1) * per).min(total)
                        };
                        (addr + start, (end - start) as u32, flags)
                    })
                    .collect();
                self.add_chain(q, &descs);
            }
            9 => {
                let q = self.dev.queue_layout().reporting.unwrap_or(3) as u8;
                let n = r.u8() % 80;
                let descs: Vec<(u64, u32, u16)> = (0..n)
                    .map(|_| (r.addr(), r.u32(), u16::from(r.u8() & 2)))
                    .collect();
                self.add_chain(q, &descs);
            }
            10 => {
                let q = self.dev.queue_layout().stats.unwrap_or(2) as u8;
                let n = r.u8() % 40;
                let entries: Vec<(u16, u64)> = (0..n).map(|_| (r.u16(), r.u64())).collect();
                let mut data = encode_stats(&entries);
                let extra = usize::from(r.u8() % 10);
                data.extend(r.bytes(extra));
                let addr = self.buf(&data);
                self.add_chain(q, &[(addr, data.len() as u32, 0)]);
            }
            11 => {
                let (q, head) = (r.u8(), r.u16());
                self.push_avail(q, head);
            }
            12 => {
                let (q, idx) = (r.u8(), r.u16());
                if let Some(at) = self.queue(q).and_then(|q| q.avail_ring().checked_add(2)) {
                    let _ = self.mem.write_obj(idx, GuestAddress(at));
                }
            }
            13 => {
                let q = r.u16() % 6;
                if !self.activated {
                    return; // the transport drops notifications before activation
                }
                let before = self.snapshot();
                let result = self.dev.process_queue(q, &self.mem, &self.backend);
                self.check_writes(before);
                if result.is_err() && self.dev.needs_reset() {
                    // The transport sets DEVICE_NEEDS_RESET; further notifications fail typed.
                    assert!(self.dev.process_queue(q, &self.mem, &self.backend).is_err());
                }
            }
            14 => {
                let before = self.snapshot();
                let _ = self.dev.trigger_stats_update(&self.mem);
                self.check_writes(before);
            }
            15 => {
                let offset = r.addr();
                let n = r.u8() % 24;
                let data = r.bytes(usize::from(n));
                self.dev.write_config(offset, &data);
            }
            16 => {
                let offset = r.addr();
                let n = usize::from(r.u8() % 24);
                let mut data = vec![0xa5u8; n];
                self.dev.read_config(offset, &mut data);
                let inside = n > 0 && offset.checked_add(n as u64).is_some_and(|e| e <= 16);
                if !inside {
                    assert!(
                        data.iter().all(|&b| b == 0),
                        "rejected read not zero-filled"
                    );
                }
            }
            17 => {
                let mib = r.u32();
                let generation = self.dev.config_generation();
                let changed = self.dev.set_target_mib(mib);
                assert_eq!(changed, self.dev.config_generation() != generation);
            }
            18 => {
                let _ = self.dev.set_stats_polling_interval(r.u16());
            }
            _ => self.indirect_chain(r),
        }
    }
}

/// One split-ring descriptor as the driver lays it out in memory.
fn raw_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    raw
}

/// `BALLOON_FUZZ_DEBUG=1`: print what each input did (for reading a finding or a seed).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("BALLOON_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let (amount_mib, flags, interval, fail_mask) = (r.u32(), r.u8(), r.u8(), r.u8());
    let opts = BalloonOptions {
        amount_mib,
        deflate_on_oom: flags & 1 != 0,
        free_page_reporting: flags & 2 != 0,
        stats_polling_interval_s: u16::from(interval),
    };
    let mut h = Harness::new(opts, fail_mask, flags & 4 != 0);
    for _ in 0..MAX_ACTIONS {
        if r.is_empty() {
            break;
        }
        h.step(&mut r);
        h.check_counters();
        h.check_config();
    }
    if debug() {
        eprintln!(
            "activated {} layout {:?}\n{:#?}\nbackend calls {:x?}",
            h.activated,
            h.dev.queue_layout(),
            h.dev.counters(),
            h.backend.calls.borrow()
        );
    }
});
