//! The built-in guest's virtio-balloon driver and the memory model it serves (`OP_BALLOON`,
//! `OP_GROW`; see `abi.rs`). Runs in ring 3 on vCPU 0 only.
//!
//! Memory model: the work area is a pool of 4 KiB pages, numbered from its first page. The data
//! set owns pages `[0, data)` and holds the pattern; the balloon holds the top `held` pages
//! `[pages - held, pages)`; everything between is free. Inflating takes pages just below the
//! balloon: free pages first, then (when the target needs more) the tail of the data set, which
//! the guest gives up. Deflating returns the lowest balloon pages, after which the data set
//! grows back toward what the step asked for and the regained pages are re-filled. No page is
//! ever in two places, so a bitmap is not needed.
//!
//! Driver: virtio-mmio v2 with features `VERSION_1`, and `STATS_VQ` and `DEFLATE_ON_OOM` when
//! offered. Queues live in the driver area (`abi::DRIVER_AREA_GPA`): inflate (0), deflate (1),
//! stats (2). Inflate/deflate buffers are arrays of up to 256 PFNs in queues of up to 1024
//! (1 GiB in flight; 1.25 MiB of the driver area each); they are posted half a queue (512
//! buffers, 512 MiB) at a time, each half announced with one `QueueNotify` (an
//! ioeventfd in the VMM: no exit), and while the device works on one half the driver posts the
//! next; it waits for returned buffers in the used ring (sleeping in `HC_WAIT`, never spinning
//! on registers) and writes `actual` as they come back.
//! Between events the driver sleeps in `HC_WAIT` (100 ms): about a dozen VM exits per idle
//! iteration (wait, interrupt ack, progress, at most one config read, and a zero-timeout wait
//! after each 8 MiB slice of the rolling verification, so a new target is seen within a slice).

use crate::abi::*;
use crate::virtio::{
    Mmio, Virtq, F_VERSION_1, INT_CONFIG, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK,
    STATUS_FAILED, STATUS_FEATURES_OK,
};
use crate::{words, Channel};

const PAGE: u64 = 4096;
const DEVICE_ID_BALLOON: u32 = 5;
/// `VIRTIO_BALLOON_F_STATS_VQ`.
const F_STATS_VQ: u64 = 1 << 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
const F_DEFLATE_ON_OOM: u64 = 1 << 2;
const CFG_NUM_PAGES: u64 = 0;
const CFG_ACTUAL: u64 = 4;
/// PFNs per inflate/deflate buffer (what Linux sends and the device accepts).
const PFNS_PER_BUFFER: u64 = 256;
const PFN_QUEUE_SIZE: u16 = 1024;
const STATS_QUEUE_SIZE: u16 = 1;
const STATS_BUFFER_BYTES: u64 = 64;
/// virtio stat tags the guest can know.
const STAT_FREE: u16 = 4;
const STAT_TOTAL: u16 = 5;
const STAT_AVAILABLE: u16 = 6;
/// How long the idle loop sleeps waiting for a device event.
const IDLE_WAIT_US: u64 = 100_000;
/// Sleep between checks while waiting for the device to return buffers, and how many checks
/// (5 s in all before the device counts as broken). The device's used-buffer interrupt ends
/// the sleep at once, so this only bounds a lost interrupt; a shorter sleep woke the vCPU into
/// the guest every 10 ms while the device thread was discarding, and `bench balloon` returned
/// 1 GiB at 0.51-0.74x raw with it against 0.73-0.87x with 100 ms (four interleaved runs each).
const USED_WAIT_US: u64 = 100_000;
const USED_WAIT_TRIES: u32 = 50;
/// Re-read the target at least every this many idle iterations even without a config interrupt.
const TARGET_REREAD_EVERY: u64 = 10;
/// Data verified per idle iteration, in slices: between slices the driver looks (one
/// zero-timeout `HC_WAIT`) whether the device raised an interrupt, so a new target is acted on
/// within one slice instead of a whole chunk.
const VERIFY_CHUNK_PAGES: u64 = (64 << 20) / PAGE;
const VERIFY_SLICE_PAGES: u64 = (8 << 20) / PAGE;

const Q_INFLATE: u64 = 0;
const Q_DEFLATE: u64 = 1;
const Q_STATS: u64 = 2;
/// Bytes of the driver area each queue gets.
const QUEUE_AREA: u64 = 0x14_0000;
const _: () = assert!(
    (Q_STATS + 1) * QUEUE_AREA <= DRIVER_AREA_BYTES
        && Virtq::area_bytes(PFN_QUEUE_SIZE, PFNS_PER_BUFFER * 4) <= QUEUE_AREA
        && DRIVER_AREA_GPA + DRIVER_AREA_BYTES == WORK_AREA_GPA
);

struct Driver {
    mmio: Mmio,
    features: u64,
    inflate: Virtq,
    deflate: Virtq,
    stats: Option<Virtq>,
    /// The device stopped returning buffers; the balloon is left as it is.
    broken: bool,
    /// A config interrupt was acknowledged while waiting for buffers (re-read the target).
    config_seen: bool,
    /// Pages in each slot of the PFN queue being used (inflate or deflate, one at a time).
    slot_pages: [u16; PFN_QUEUE_SIZE as usize],
}

/// The work area as numbered pages.
struct Pool {
    /// `(first page index, gpa, pages)` of each work range.
    runs: [(u64, u64, u64); MAX_RANGES],
    nruns: usize,
    pages: u64,
    ram_bytes: u64,
}

impl Pool {
    const fn empty() -> Pool {
        Pool {
            runs: [(0, 0, 0); MAX_RANGES],
            nruns: 0,
            pages: 0,
            ram_bytes: 0,
        }
    }

    fn gpa(&self, index: u64) -> u64 {
        for &(first, gpa, pages) in &self.runs[..self.nruns] {
            if index >= first && index < first + pages {
                return gpa + (index - first) * PAGE;
            }
        }
        u64::MAX
    }

    /// Calls `f` with each guest-physical range of pages `[a, b)`.
    fn for_ranges(&self, a: u64, b: u64, mut f: impl FnMut(GpaRange)) {
        for &(first, gpa, pages) in &self.runs[..self.nruns] {
            let lo = a.max(first);
            let hi = b.min(first + pages);
            if lo < hi {
                f(GpaRange {
                    start: gpa + (lo - first) * PAGE,
                    end: gpa + (hi - first) * PAGE,
                });
            }
        }
    }
}

/// Driver and memory-model state, kept across workload steps.
struct State {
    ready: bool,
    pool: Pool,
    /// Pages of the data set: `[0, data)`.
    data: u64,
    /// Pages the data set grows back to when memory is available.
    want: u64,
    /// Pages in the balloon: `[pages - held, pages)`.
    held: u64,
    seed: u64,
    /// Next page to verify.
    cursor: u64,
    mismatches: u64,
    verified: u64,
    driver: Option<Driver>,
    driver_tried: bool,
}

static mut STATE: State = State {
    ready: false,
    pool: Pool::empty(),
    data: 0,
    want: 0,
    held: 0,
    seed: 1,
    cursor: 0,
    mismatches: 0,
    verified: 0,
    driver: None,
    driver_tried: false,
};

fn state(info: &BootInfo) -> &'static mut State {
    // SAFETY: only vCPU 0 runs balloon steps, one at a time, so this is the only reference.
    let st = unsafe { &mut *core::ptr::addr_of_mut!(STATE) };
    if !st.ready {
        let mut first = 0;
        for r in &info.work[..(info.num_work as usize).min(MAX_RANGES)] {
            let pages = (r.end - r.start) / PAGE;
            st.pool.runs[st.pool.nruns] = (first, r.start, pages);
            st.pool.nruns += 1;
            first += pages;
        }
        st.pool.pages = first;
        st.pool.ram_bytes = info.ram[..(info.num_ram as usize).min(MAX_RANGES)]
            .iter()
            .map(|r| r.end - r.start)
            .sum();
        st.ready = true;
    }
    st
}

/// A log line with numbers, without an allocator.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }

    fn s(&mut self, t: &str) -> &mut Line {
        for &b in t.as_bytes() {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        self
    }

    fn n(&mut self, mut v: u64) -> &mut Line {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in &digits[i..] {
            if self.len < self.buf.len() {
                self.buf[self.len] = d;
                self.len += 1;
            }
        }
        self
    }

    fn send(&self, ch: &mut Channel) {
        ch.log(core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?"));
    }
}

impl Driver {
    fn init(base: u64) -> Result<Driver, &'static str> {
        let mmio = Mmio::probe(base, DEVICE_ID_BALLOON)?;
        // virtio 1.2 §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queues,
        // DRIVER_OK.
        mmio.set_status(0);
        mmio.set_status(STATUS_ACKNOWLEDGE);
        mmio.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = mmio.device_features();
        let features = offered & (F_VERSION_1 | F_STATS_VQ | F_DEFLATE_ON_OOM);
        let fail = |why| {
            mmio.set_status(STATUS_FAILED);
            Err(why)
        };
        if features & F_VERSION_1 == 0 {
            return fail("balloon: device does not offer VIRTIO_F_VERSION_1");
        }
        mmio.set_driver_features(features);
        let negotiating = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        mmio.set_status(negotiating);
        if mmio.status() & STATUS_FEATURES_OK == 0 {
            return fail("balloon: device refused the features (FEATURES_OK not kept)");
        }
        let area = |q: u64| DRIVER_AREA_GPA + q * QUEUE_AREA;
        let pfn_bytes = PFNS_PER_BUFFER * 4;
        let (Some(inflate), Some(deflate)) = (
            Virtq::setup(&mmio, 0, PFN_QUEUE_SIZE, area(Q_INFLATE), pfn_bytes),
            Virtq::setup(&mmio, 1, PFN_QUEUE_SIZE, area(Q_DEFLATE), pfn_bytes),
        ) else {
            return fail("balloon: device has no inflate/deflate queues");
        };
        let stats = if features & F_STATS_VQ != 0 {
            match Virtq::setup(
                &mmio,
                2,
                STATS_QUEUE_SIZE,
                area(Q_STATS),
                STATS_BUFFER_BYTES,
            ) {
                Some(q) => Some(q),
                None => return fail("balloon: STATS_VQ negotiated but no stats queue"),
            }
        } else {
            None
        };
        mmio.set_status(negotiating | STATUS_DRIVER_OK);
        if mmio.status() & STATUS_DRIVER_OK == 0 {
            return fail("balloon: device did not accept DRIVER_OK");
        }
        Ok(Driver {
            mmio,
            features,
            inflate,
            deflate,
            stats,
            broken: false,
            config_seen: false,
            slot_pages: [0; PFN_QUEUE_SIZE as usize],
        })
    }

    fn target(&mut self) -> u64 {
        self.config_seen = false;
        self.mmio.config_read(CFG_NUM_PAGES) as u64
    }
}

/// Sleeps in the VMM until the device raised an interrupt or `us` passed; acknowledges what was
/// pending and returns it.
fn wait_event(ch: &mut Channel, d: &mut Driver, us: u64) -> u32 {
    let bits = ch.call(HC_WAIT, [us, 0, 0, 0, 0, 0])[1] as u32;
    if bits != 0 {
        d.mmio.ack_interrupt(bits);
        if bits & INT_CONFIG != 0 {
            d.config_seen = true;
        }
    }
    bits
}

/// Waits until at most `limit` buffers of the PFN queue `which` are still with the device;
/// returns the pages of the buffers that came back (their counts are in `slot_pages`).
fn wait_used(ch: &mut Channel, d: &mut Driver, which: u64, limit: u16) -> Option<u64> {
    let mut returned = 0;
    for _ in 0..USED_WAIT_TRIES {
        let q = if which == Q_INFLATE {
            &mut d.inflate
        } else {
            &mut d.deflate
        };
        while let Some(slot) = q.take_used() {
            returned += u64::from(d.slot_pages[usize::from(slot) % d.slot_pages.len()]);
        }
        if q.in_flight() <= limit {
            return Some(returned);
        }
        wait_event(ch, d, USED_WAIT_US);
    }
    d.broken = true;
    ch.log(
        "balloon: the device did not return inflate/deflate buffers; leaving the balloon as it is",
    );
    None
}

impl State {
    fn free(&self) -> u64 {
        self.pool.pages - self.data - self.held
    }

    fn deflate_on_oom(&self) -> bool {
        self.driver
            .as_ref()
            .is_some_and(|d| !d.broken && d.features & F_DEFLATE_ON_OOM != 0)
    }

    /// Moves `n` pages into (`inflate`) or out of the balloon, telling the device in batches
    /// of half a queue: while the device works on one half (its discards run on the VMM's
    /// device thread, not on this vCPU), the driver fills and posts the next, so the device
    /// always has work queued. `actual` follows what the device has returned.
    fn move_pages(&mut self, ch: &mut Channel, mut n: u64, inflate: bool) {
        let which = if inflate { Q_INFLATE } else { Q_DEFLATE };
        // Pages posted and not yet returned.
        let mut in_flight_pages = 0u64;
        loop {
            let Some(d) = self.driver.as_mut() else {
                return;
            };
            if d.broken {
                return;
            }
            let q = if inflate {
                &mut d.inflate
            } else {
                &mut d.deflate
            };
            let half = (q.size() / 2).max(1);
            let mut posted = 0;
            while n > 0 && posted < half && q.in_flight() < q.size() {
                let k = n.min(PFNS_PER_BUFFER);
                let bottom = self.pool.pages - self.held;
                let first = if inflate { bottom - k } else { bottom };
                if inflate && self.data > first {
                    // The data set gives up its tail.
                    self.data = first;
                }
                let slot = q.next_slot();
                let buf = q.buffer(slot) as *mut u32;
                for i in 0..k {
                    let pfn = (self.pool.gpa(first + i) / PAGE) as u32;
                    // SAFETY: buffer `slot` of this queue holds PFNS_PER_BUFFER u32s.
                    unsafe { core::ptr::write_volatile(buf.add(i as usize), pfn) };
                }
                q.post(slot, (4 * k) as u32);
                d.slot_pages[usize::from(slot) % d.slot_pages.len()] = k as u16;
                if inflate {
                    self.held += k;
                } else {
                    self.held -= k;
                }
                in_flight_pages += k;
                n -= k;
                posted += 1;
            }
            if posted > 0 {
                d.mmio.notify(q.index);
            }
            let (size, in_flight) = (q.size(), q.in_flight());
            if n > 0 && in_flight < size {
                // Room for the next half right away.
                continue;
            }
            // Wait for a half to come back (all of it at the end; returns at once when the
            // device was quicker), then tell the device what it has.
            let limit = if n > 0 { size - half } else { 0 };
            let Some(back) = wait_used(ch, d, which, limit) else {
                return;
            };
            in_flight_pages -= back.min(in_flight_pages);
            let actual = if inflate {
                self.held - in_flight_pages
            } else {
                self.held + in_flight_pages
            };
            d.mmio.config_write(CFG_ACTUAL, actual as u32);
            if n == 0 && in_flight_pages == 0 {
                break;
            }
        }
        if self.cursor >= self.data {
            self.cursor = 0;
        }
    }

    /// Grows the data set toward `want` as far as free pages allow, filling the new pages.
    fn grow_data(&mut self) {
        let to = self.want.min(self.pool.pages - self.held);
        if to <= self.data {
            return;
        }
        let seed = self.seed;
        self.pool.for_ranges(self.data, to, |r| {
            for (i, w) in words(&r).iter_mut().enumerate() {
                *w = pattern_word(r.start + 8 * i as u64, seed);
            }
        });
        self.data = to;
    }

    /// Inflates or deflates to `target` pages, then lets the data set regrow.
    fn adjust(&mut self, ch: &mut Channel, target: u64) {
        let target = target.min(self.pool.pages);
        if target > self.held {
            self.move_pages(ch, target - self.held, true);
        } else if target < self.held {
            self.move_pages(ch, self.held - target, false);
        }
        self.grow_data();
    }

    /// Verifies data pages `[a, b)`.
    fn verify(&mut self, a: u64, b: u64) {
        let seed = self.seed;
        let (mut bad, mut bytes) = (0, 0);
        self.pool.for_ranges(a, b, |r| {
            for (i, w) in words(&r).iter().enumerate() {
                bad += (*w != pattern_word(r.start + 8 * i as u64, seed)) as u64;
            }
            bytes += r.end - r.start;
        });
        self.mismatches += bad;
        self.verified += bytes;
    }

    /// Verifies the next chunk of the data set, slice by slice; stops early when the device
    /// raised an interrupt meanwhile (returns true then).
    fn verify_chunk(&mut self, ch: &mut Channel) -> bool {
        if self.cursor >= self.data {
            self.cursor = 0;
        }
        let stop = self.data.min(self.cursor + VERIFY_CHUNK_PAGES);
        while self.cursor < stop {
            let end = stop.min(self.cursor + VERIFY_SLICE_PAGES);
            self.verify(self.cursor, end);
            self.cursor = end;
            if let Some(d) = self.driver.as_mut() {
                if wait_event(ch, d, 0) != 0 {
                    return true;
                }
            }
        }
        false
    }

    /// Answers a statistics request: refills and re-posts the buffer the device returned.
    fn serve_stats(&mut self) {
        let free = self.free() * PAGE;
        let total = self.pool.ram_bytes;
        let Some(d) = self.driver.as_mut() else {
            return;
        };
        let Some(q) = d.stats.as_mut() else { return };
        while q.take_used().is_some() {}
        // The device returns the buffer when it wants fresh values; until then it holds it.
        if q.in_flight() == 0 {
            write_stats(q, free, total);
            d.mmio.notify(q.index);
        }
    }

    fn results(&self, mismatches_before: u64) -> [u64; 3] {
        [
            self.data * PAGE,
            self.mismatches - mismatches_before,
            self.held,
        ]
    }

    /// Reports progress; returns `(host clock ms, finish requested)`.
    fn progress(&self, ch: &mut Channel) -> (u64, bool) {
        let features = self.driver.as_ref().map(|d| d.features).unwrap_or(0);
        let r = ch.call(
            HC_PROGRESS,
            [
                self.data * PAGE,
                self.held,
                self.mismatches,
                self.verified,
                features,
                0,
            ],
        );
        (r[4], r[5] != 0)
    }

    /// Initialises the driver once; false (after logging why) if there is no usable device.
    fn driver_ready(&mut self, ch: &mut Channel, info: &BootInfo) -> bool {
        if !self.driver_tried {
            self.driver_tried = true;
            if info.balloon_mmio == 0 {
                ch.log("balloon: no balloon device (run with --balloon)");
                return false;
            }
            match Driver::init(info.balloon_mmio) {
                Ok(d) => self.driver = Some(d),
                Err(why) => {
                    ch.log(why);
                    return false;
                }
            }
            self.serve_stats();
        }
        self.driver.as_ref().is_some_and(|d| !d.broken)
    }
}

fn write_stats(q: &mut Virtq, free: u64, total: u64) {
    let buf = q.buffer(0);
    let entries = [
        (STAT_FREE, free),
        (STAT_TOTAL, total),
        // The guest has no caches it could drop: what is available is what is free.
        (STAT_AVAILABLE, free),
    ];
    for (i, (tag, val)) in entries.iter().enumerate() {
        let e = buf + 10 * i as u64;
        // SAFETY: the stats buffer (STATS_BUFFER_BYTES) holds these packed 10-byte entries.
        unsafe {
            core::ptr::write_unaligned(e as *mut u16, *tag);
            core::ptr::write_unaligned((e + 2) as *mut u64, *val);
        }
    }
    q.post(0, (10 * entries.len()) as u32);
}

/// Pages for `bytes` (rounded up), at most the whole pool.
fn pages_for(bytes: u64, pool: &Pool) -> u64 {
    if bytes == 0 {
        pool.pages
    } else {
        bytes.div_ceil(PAGE).min(pool.pages)
    }
}

/// `OP_BALLOON`: returns the results and the workload status (0 = ok).
pub fn run_balloon(ch: &mut Channel, info: &BootInfo, args: [u64; 4]) -> ([u64; 3], u64) {
    let st = state(info);
    let before = st.mismatches;
    st.seed = args[2];
    st.want = pages_for(args[0], &st.pool);
    if !st.driver_ready(ch, info) {
        return (st.results(before), STATUS_BALLOON_FAILED);
    }
    let seconds = args[1];
    let target = st.driver.as_mut().map(|d| d.target()).unwrap_or(0);
    st.adjust(ch, target);
    let (started, mut finish) = st.progress(ch);
    let mut iteration = 0u64;
    // The verification saw (and acknowledged) an interrupt: act on it without waiting.
    let mut interrupted = false;
    while !finish {
        iteration += 1;
        let Some(d) = st.driver.as_mut() else { break };
        if !interrupted {
            wait_event(ch, d, IDLE_WAIT_US);
        }
        if !d.broken && (d.config_seen || iteration % TARGET_REREAD_EVERY == 0) {
            let target = d.target();
            st.adjust(ch, target);
        }
        st.serve_stats();
        interrupted = st.verify_chunk(ch);
        let (now, f) = st.progress(ch);
        finish = f || (seconds != 0 && now.saturating_sub(started) >= seconds * 1000);
    }
    // At the end every byte the guest still owns is checked once more, whatever the rolling
    // verification had reached.
    st.verify(0, st.data);
    st.progress(ch);
    (st.results(before), 0)
}

/// `OP_GROW`: returns the results and the workload status (0 = ok).
pub fn run_grow(ch: &mut Channel, info: &BootInfo, args: [u64; 4]) -> ([u64; 3], u64) {
    let st = state(info);
    let before = st.mismatches;
    st.seed = args[1];
    // Without a device there is nothing to deflate; the driver is only needed if it exists.
    if info.balloon_mmio != 0 {
        st.driver_ready(ch, info);
    }
    let to = args[0].div_ceil(PAGE);
    st.want = to.min(st.pool.pages);
    let missing = to.saturating_sub(st.data + st.free());
    if missing > 0 && st.held > 0 {
        let mut l = Line::new();
        if st.deflate_on_oom() {
            let n = missing.min(st.held);
            l.s("grow: ")
                .n(missing)
                .s(" pages short; deflate-on-oom: deflating ")
                .n(n)
                .s(" pages")
                .send(ch);
            st.move_pages(ch, n, false);
        } else {
            l.s("grow: ")
                .n(missing)
                .s(" pages short and deflate-on-oom was not negotiated; ballooned pages stay with the host")
                .send(ch);
        }
    }
    st.grow_data();
    st.verify(0, st.data);
    st.progress(ch);
    let status = if st.data < to {
        let mut l = Line::new();
        l.s("grow: reached ")
            .n(st.data * PAGE)
            .s(" of ")
            .n(to * PAGE)
            .s(" bytes")
            .send(ch);
        STATUS_GROW_FAILED
    } else {
        0
    };
    (st.results(before), status)
}
