//! The [`Net`] device: lifecycle, features, configuration space, transmit and receive.
//!
//! This module owns the device state a transport sees (features, configuration space,
//! activation, reset) and what happens to a frame each way:
//! - **transmit** ([`Net::process_queue`] on queue 1): each chain is walked and checked (only
//!   device-readable buffers, all in guest memory, 26 to [`MAX_FRAME_BYTES`] bytes, a header
//!   asking for no offload), then its buffers go to the backend as one frame, straight from
//!   guest memory (the tap writes them with one `writev`). Every chain goes back used, sent
//!   or refused.
//! - **receive** ([`Net::receive`] when the tap is readable, and on queue 0 notifications when
//!   the driver posts buffers): a frame is read from the backend into one bounce buffer of
//!   [`MAX_FRAME_BYTES`], then copied into the next receive chain if it fits (only
//!   device-writable buffers, all in guest memory). A frame larger than the chain is dropped
//!   and the chain kept; a frame with no chain posted is dropped; a malformed chain goes back
//!   with nothing written. All counted.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_chain::{copy_from_guest, copy_to_guest, in_memory, total_len, walk, ChainError};
use virtio_model::DeviceModel;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::backend::NetBackend;
use crate::counters::NetCounters;
use crate::error::NetError;
use crate::features::{avail_features, config_bytes, CONFIG_SPACE_SIZE};
use crate::{HDR_BYTES, MAX_FRAME_BYTES, MIN_TX_FRAME_BYTES};

/// Size of each queue the device offers.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Index of receiveq1.
pub const RX_QUEUE: u16 = 0;
/// Index of transmitq1.
pub const TX_QUEUE: u16 = 1;
/// Most frames one [`Net::receive`] call reads from the backend (the event loop calls again
/// while the tap stays readable, so transmit work is not starved).
const RX_BUDGET: u16 = QUEUE_MAX_SIZE;

/// How the device is presented to the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOptions {
    /// The MAC address in the configuration space (`VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
}

/// A virtio-net device model (virtio 1.2 §5.1) over a [`NetBackend`].
///
/// The transport drives it as the other models: feature negotiation, configuration space
/// accesses, [`Net::activate`] with the driver's two queues, [`Net::process_queue`] on every
/// notification, [`Net::receive`] when the backend has frames, [`Net::reset`].
#[derive(Debug)]
pub struct Net<B: NetBackend> {
    opts: NetOptions,
    backend: B,
    acked_features: u64,
    /// receiveq1 and transmitq1, once activated.
    queues: Option<[Queue; 2]>,
    needs_reset: bool,
    counters: NetCounters,
    /// Config reads are `&self`, so their rejections are counted atomically.
    config_bad_reads: AtomicU64,
    /// One received frame, header included.
    frame: Vec<u8>,
}

/// Where a refused chain is counted.
fn count_chain_error(c: &mut NetCounters, e: ChainError) {
    match e {
        ChainError::IndirectNotNegotiated => c.indirect_not_negotiated += 1,
        ChainError::Loop => c.looping_chains += 1,
        ChainError::NextOutOfRange => c.next_out_of_range += 1,
        ChainError::DescriptorUnreadable => c.unreadable_descriptors += 1,
        ChainError::OverFourGib => c.chains_over_4gib += 1,
        ChainError::ReadableAfterWritable => c.readable_after_writable += 1,
    }
}

impl<B: NetBackend> Net<B> {
    /// A device sending to and receiving from `backend`, presented as `opts` says.
    pub fn new(backend: B, opts: NetOptions) -> Self {
        Net {
            opts,
            backend,
            acked_features: 0,
            queues: None,
            needs_reset: false,
            counters: NetCounters::default(),
            config_bad_reads: AtomicU64::new(0),
            frame: vec![0; MAX_FRAME_BYTES],
        }
    }

    /// The options the device was created with.
    pub fn options(&self) -> &NetOptions {
        &self.opts
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (tests queue frames and inject failures).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Features negotiated so far.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether [`Net::activate`] succeeded and no reset happened since.
    pub fn is_activated(&self) -> bool {
        self.queues.is_some()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> NetCounters {
        let mut c = self.counters.clone();
        c.config_bad_accesses += self.config_bad_reads.load(Ordering::Relaxed);
        c
    }

    /// Reads the frames the backend has (at most a queue size of them) and delivers each to
    /// the next receive chain; returns whether the receive queue's used ring changed. Before
    /// activation (or after a protocol violation) frames are read and dropped, so a readable
    /// tap never keeps the caller spinning.
    pub fn receive<M: GuestMemory>(&mut self, mem: &M) -> Result<bool, NetError> {
        let mut used = false;
        for _ in 0..RX_BUDGET {
            let n = match self.backend.recv(&mut self.frame) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.counters.rx_host_errors += 1;
                    log::warn!("net: reading a frame from the host failed: {e}");
                    break;
                }
            };
            if n < HDR_BYTES {
                self.counters.rx_host_errors += 1;
                continue;
            }
            if self.queues.is_none() || self.needs_reset {
                self.counters.rx_dropped_not_activated += 1;
                continue;
            }
            // No checksum offload is negotiated: flags must be 0 (virtio 1.2 §5.1.6.4.1) and
            // the tap never segments for us (TUNSETOFFLOAD 0); one buffer per frame.
            self.frame[0] = 0;
            self.frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            used |= self.deliver(mem, n)?;
        }
        Ok(used)
    }

    /// Puts the `n`-byte frame in `self.frame` into the next usable receive chain.
    fn deliver<M: GuestMemory>(&mut self, mem: &M, n: usize) -> Result<bool, NetError> {
        let (size, table) = self.queue_geometry(RX_QUEUE);
        let mut used = false;
        for _ in 0..size {
            let Some(head) = self.next_head(RX_QUEUE, mem)? else {
                break;
            };
            let c = &mut self.counters;
            let w = match walk(mem, table, size, head) {
                Ok(w) => w,
                Err(e) => {
                    count_chain_error(c, e);
                    c.rx_bad_chains += 1;
                    self.add_used(RX_QUEUE, mem, head, 0)?;
                    used = true;
                    continue;
                }
            };
            let bad = if !w.readable.is_empty() {
                Some(&mut c.wrong_direction)
            } else if !in_memory(mem, &w.writable, Permissions::Write) {
                Some(&mut c.buffers_outside_memory)
            } else {
                None
            };
            if let Some(counter) = bad {
                *counter += 1;
                c.rx_bad_chains += 1;
                self.add_used(RX_QUEUE, mem, head, 0)?;
                used = true;
                continue;
            }
            if total_len(&w.writable) < n as u64 {
                c.rx_frames_too_big += 1;
                // The chain stays with the device for the next frame.
                self.queue_mut(RX_QUEUE).go_to_previous_position();
                return Ok(used);
            }
            if copy_to_guest(mem, &w.writable, 0, &self.frame[..n]).is_err() {
                // Checked above; only a changed memory map could get here.
                c.buffers_outside_memory += 1;
                c.rx_bad_chains += 1;
                self.add_used(RX_QUEUE, mem, head, 0)?;
                return Ok(true);
            }
            c.rx_frames += 1;
            c.rx_bytes += (n - HDR_BYTES) as u64;
            self.add_used(RX_QUEUE, mem, head, n as u32)?;
            return Ok(true);
        }
        self.counters.rx_dropped_no_buffers += 1;
        Ok(used)
    }

    /// Sends the transmit chains the driver made available.
    fn transmit<M: GuestMemory>(&mut self, mem: &M) -> Result<bool, NetError> {
        let (size, table) = self.queue_geometry(TX_QUEUE);
        let mut used = false;
        for _ in 0..size {
            let Some(head) = self.next_head(TX_QUEUE, mem)? else {
                break;
            };
            if let Err(counter) = self.send_chain(mem, table, size, head) {
                counter(&mut self.counters);
                self.counters.tx_bad_frames += 1;
            }
            self.add_used(TX_QUEUE, mem, head, 0)?;
            used = true;
        }
        Ok(used)
    }

    /// Checks one transmit chain and sends it; on refusal, returns what to count.
    fn send_chain<M: GuestMemory>(
        &mut self,
        mem: &M,
        table: u64,
        size: u16,
        head: u16,
    ) -> Result<(), fn(&mut NetCounters)> {
        let w = match walk(mem, table, size, head) {
            Ok(w) => w,
            Err(e) => {
                count_chain_error(&mut self.counters, e);
                return Err(|_| {});
            }
        };
        if !w.writable.is_empty() {
            return Err(|c| c.wrong_direction += 1);
        }
        let len = total_len(&w.readable);
        if len > MAX_FRAME_BYTES as u64 {
            return Err(|c| c.tx_oversized += 1);
        }
        if len < MIN_TX_FRAME_BYTES as u64 {
            return Err(|c| c.tx_short += 1);
        }
        if !in_memory(mem, &w.readable, Permissions::Read) {
            return Err(|c| c.buffers_outside_memory += 1);
        }
        let mut hdr = [0u8; HDR_BYTES];
        copy_from_guest(mem, &w.readable, 0, &mut hdr).map_err(|_| {
            let f: fn(&mut NetCounters) = |c| c.buffers_outside_memory += 1;
            f
        })?;
        // flags and gso_type: no offload is negotiated, so both must be 0.
        if hdr[0] != 0 || hdr[1] != 0 {
            return Err(|c| c.tx_offload_not_negotiated += 1);
        }
        let mut parts = Vec::with_capacity(w.readable.len());
        for s in &w.readable {
            let slices = mem
                .get_slices(GuestAddress(s.addr), s.len as usize, Permissions::Read)
                .map_err(|_| {
                    let f: fn(&mut NetCounters) = |c| c.buffers_outside_memory += 1;
                    f
                })?;
            for part in slices {
                match part {
                    Ok(p) => parts.push(p),
                    Err(_) => return Err(|c| c.buffers_outside_memory += 1),
                }
            }
        }
        match self.backend.send(&parts) {
            Ok(_) => {
                self.counters.tx_frames += 1;
                self.counters.tx_bytes += len - HDR_BYTES as u64;
            }
            Err(e) => {
                self.counters.tx_host_errors += 1;
                log::debug!("net: the host refused a {len}-byte frame: {e}");
            }
        }
        Ok(())
    }

    /// (size, descriptor table address) of queue `qi` (activated).
    fn queue_geometry(&self, qi: u16) -> (u16, u64) {
        let q = &self.queues.as_ref().expect("activated")[usize::from(qi)];
        (q.size(), q.desc_table())
    }

    fn queue_mut(&mut self, qi: u16) -> &mut Queue {
        &mut self.queues.as_mut().expect("activated")[usize::from(qi)]
    }

    /// Takes the next available chain head of queue `qi` (skipping, and counting, entries
    /// naming a descriptor outside the queue).
    fn next_head<M: GuestMemory>(&mut self, qi: u16, mem: &M) -> Result<Option<u16>, NetError> {
        let (size, _) = self.queue_geometry(qi);
        for _ in 0..size {
            let next = match self.queue_mut(qi).iter(mem) {
                Ok(mut it) => it.next().map(|c| c.head_index()),
                Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                    self.counters.avail_index_jumps += 1;
                    self.needs_reset = true;
                    return Err(NetError::AvailIndexJump(qi));
                }
                Err(e) => {
                    self.counters.avail_ring_unreadable += 1;
                    return Err(NetError::Queue(qi, e));
                }
            };
            match next {
                Some(head) if head >= size => {
                    self.counters.invalid_head_index += 1;
                    log::debug!(
                        "net: queue {qi}: available ring names descriptor {head} >= {size}"
                    );
                }
                other => return Ok(other),
            }
        }
        Ok(None)
    }

    fn add_used<M: GuestMemory>(
        &mut self,
        qi: u16,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), NetError> {
        self.queue_mut(qi).add_used(mem, head, len).map_err(|e| {
            self.counters.used_ring_unwritable += 1;
            NetError::Queue(qi, e)
        })
    }
}

impl<B: NetBackend> DeviceModel for Net<B> {
    type Error = NetError;
    /// The backend is the device's own: queue processing needs nothing else.
    type Backend = ();

    /// virtio device type (1, network card).
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    /// Features the device offers.
    fn avail_features(&self) -> u64 {
        avail_features()
    }

    /// Records the features the driver accepts (the whole current set): bits not offered are
    /// dropped and counted. Ignored once activated.
    fn ack_features(&mut self, acked: u64) {
        if self.queues.is_some() {
            log::debug!("net: driver acked features {acked:#x} after activation");
            return;
        }
        let unsupported = acked & !avail_features();
        self.counters.unsupported_features_acked += u64::from(unsupported.count_ones());
        self.acked_features = acked & avail_features();
    }

    /// Maximum size of each queue (receiveq1, transmitq1).
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_MAX_SIZE, QUEUE_MAX_SIZE]
    }

    /// Size of the configuration space.
    fn config_len(&self) -> u64 {
        CONFIG_SPACE_SIZE
    }

    /// Reads the configuration space; an access past its end zero-fills `data` and is counted.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if !virtio_chain::read_config(&config_bytes(self.opts.mac), offset, data) {
            self.config_bad_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the configuration space: nothing in it is writable (`VIRTIO_NET_F_CTRL_MAC_ADDR`
    /// and the legacy writable MAC are not offered), so every write is ignored and counted.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.counters.config_bad_accesses += 1;
        log::debug!(
            "net: config write at offset {offset} length {} ignored",
            data.len()
        );
    }

    /// Starts the device with the queues the driver set up: receiveq1 and transmitq1, both
    /// ready (further ones are ignored).
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), NetError> {
        if self.queues.is_some() {
            return Err(NetError::AlreadyActivated);
        }
        let mut it = queues.into_iter();
        match (it.next(), it.next()) {
            (Some(rx), Some(tx)) if rx.ready() && tx.ready() => {
                self.queues = Some([rx, tx]);
                Ok(())
            }
            _ => Err(NetError::QueuesNotReady),
        }
    }

    /// Driver reset: forgets negotiated features and the queues; counters are kept.
    fn reset(&mut self) {
        self.acked_features = 0;
        self.queues = None;
        self.needs_reset = false;
    }

    /// Whether the device stopped after a driver protocol violation (the transport sets
    /// `DEVICE_NEEDS_RESET`).
    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// The driver notified queue `index`: transmits the chains of queue 1, or (queue 0: new
    /// receive buffers) delivers frames waiting in the backend. Returns whether that queue's
    /// used ring changed (the transport then interrupts the driver). At most one queue size
    /// of chains per call.
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        mem: &M,
        _backend: &(),
    ) -> Result<bool, NetError> {
        if index > TX_QUEUE {
            return Err(NetError::InvalidQueueIndex(index));
        }
        if self.needs_reset {
            return Err(NetError::NeedsReset);
        }
        if self.queues.is_none() {
            return Err(NetError::NotActivated);
        }
        if index == RX_QUEUE {
            self.receive(mem)
        } else {
            self.transmit(mem)
        }
    }
}
