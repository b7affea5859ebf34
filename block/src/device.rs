//! The [`Block`] device: lifecycle, features, configuration space, queue processing and the
//! execution of checked requests.
//!
//! This module owns the device state a transport sees (features, configuration space,
//! activation, reset) and what a request does. Requests are parsed and checked by
//! [`crate::request::parse`] first; only a checked request reaches the backend, and every
//! request, good or bad, goes back to the used ring with a status when it has a status byte.
//! I/O is synchronous on the calling thread, through one bounce buffer of [`BOUNCE_BYTES`]
//! (aligned for `O_DIRECT`): a request moves through it in pieces, so its size never changes
//! what the device allocates.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_model::DeviceModel;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::backend::{AlignedBuf, DiskBackend};
use crate::counters::BlockCounters;
use crate::error::BlockError;
use crate::features::{
    avail_features, BlockConfig, CONFIG_SPACE_SIZE, DISCARD_SECTOR_ALIGNMENT, MAX_DISCARD_SECTORS,
    MAX_DISCARD_SEGMENTS,
};
use crate::request::{parse, DiskLimits, Refusal, Request, RequestType, ID_BYTES};
use virtio_chain::{copy_from_guest, copy_to_guest};

/// Size of the request queue the device offers.
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Size of the bounce buffer every request's data moves through.
pub const BOUNCE_BYTES: usize = 128 << 10;

/// How the disk is presented to the guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockOptions {
    /// The guest may not write (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// What `VIRTIO_BLK_T_GET_ID` returns (Linux: `/sys/block/vda/serial`); at most 20 bytes.
    pub id: String,
}

/// A virtio-blk device model (virtio 1.2 §5.2) over a [`DiskBackend`].
///
/// The transport drives it as the balloon: feature negotiation, configuration space accesses,
/// [`Block::activate`] with the driver's queue, [`Block::process_queue`] on every notification
/// (from any thread: the device is `Send` and holds no thread), [`Block::reset`].
#[derive(Debug)]
pub struct Block<B: DiskBackend> {
    opts: BlockOptions,
    backend: B,
    avail_features: u64,
    acked_features: u64,
    config: BlockConfig,
    limits: DiskLimits,
    queue: Option<Queue>,
    needs_reset: bool,
    counters: BlockCounters,
    /// Config reads are `&self`, so their rejections are counted atomically.
    config_bad_reads: AtomicU64,
    bounce: AlignedBuf,
}

impl<B: DiskBackend> Block<B> {
    /// A device presenting `backend` as `opts` says.
    pub fn new(backend: B, opts: BlockOptions) -> Self {
        let block_size = backend.block_size();
        let capacity_bytes = backend.size() / block_size * block_size;
        let config = BlockConfig {
            capacity: capacity_bytes / crate::SECTOR_SIZE,
            seg_max: u32::from(QUEUE_MAX_SIZE) - 2,
            blk_size: block_size as u32,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEGMENTS,
            discard_sector_alignment: DISCARD_SECTOR_ALIGNMENT,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: MAX_DISCARD_SEGMENTS,
            write_zeroes_may_unmap: true,
        };
        Block {
            avail_features: avail_features(opts.read_only),
            acked_features: 0,
            limits: DiskLimits {
                capacity_bytes,
                block_size,
                read_only: opts.read_only,
                max_discard_seg: MAX_DISCARD_SEGMENTS,
                max_discard_sectors: MAX_DISCARD_SECTORS,
            },
            config,
            queue: None,
            needs_reset: false,
            counters: BlockCounters::default(),
            config_bad_reads: AtomicU64::new(0),
            bounce: AlignedBuf::new(BOUNCE_BYTES),
            opts,
            backend,
        }
    }

    /// The options the device was created with.
    pub fn options(&self) -> &BlockOptions {
        &self.opts
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (tests inject failures).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The configuration space values.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// Features negotiated so far.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Whether [`Block::activate`] succeeded and no reset happened since.
    pub fn is_activated(&self) -> bool {
        self.queue.is_some()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> BlockCounters {
        let mut c = self.counters.clone();
        c.config_bad_accesses += self.config_bad_reads.load(Ordering::Relaxed);
        c
    }

    /// Parses and executes one chain, writes its status; returns the used length (bytes
    /// written into the chain's device-writable buffers).
    fn handle<M: GuestMemory>(&mut self, mem: &M, table: u64, size: u16, head: u16) -> u32 {
        let parsed = parse(mem, table, size, head, &self.limits);
        let Some(status_at) = parsed.status else {
            let why = parsed.request.expect_err("no status means refused");
            self.refused(why);
            self.counters.no_status += 1;
            return 0;
        };
        let result = parsed.request.and_then(|req| self.execute(mem, &req));
        let (status, written) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
            Err(why) => {
                self.refused(why);
                if why.status() == VIRTIO_BLK_S_UNSUPP as u8 {
                    self.counters.unsupp_status += 1;
                } else {
                    self.counters.ioerr_status += 1;
                }
                (why.status(), 0)
            }
        };
        if mem.write_obj(status, GuestAddress(status_at)).is_err() {
            // Checked by the parser; only a changed memory map could get here.
            self.counters.status_outside_memory += 1;
            return 0;
        }
        written.saturating_add(1)
    }

    /// Counts a refused request under its cause.
    fn refused(&mut self, why: Refusal) {
        let c = &mut self.counters;
        match why {
            Refusal::IndirectNotNegotiated => c.indirect_not_negotiated += 1,
            Refusal::LoopingChain => c.looping_chains += 1,
            Refusal::NextOutOfRange => c.next_out_of_range += 1,
            Refusal::DescriptorUnreadable => c.unreadable_descriptors += 1,
            Refusal::OverFourGib => c.chains_over_4gib += 1,
            Refusal::ReadableAfterWritable => c.readable_after_writable += 1,
            Refusal::MissingStatus => c.missing_status += 1,
            Refusal::StatusOutsideMemory => c.status_outside_memory += 1,
            Refusal::ShortHeader => c.short_headers += 1,
            Refusal::BufferOutsideMemory => c.buffers_outside_memory += 1,
            Refusal::WrongDirection => c.wrong_direction += 1,
            Refusal::BadLength => c.bad_lengths += 1,
            Refusal::OutOfRange => c.out_of_range += 1,
            Refusal::OverLimits => c.over_limits += 1,
            Refusal::WriteToReadOnly => c.write_to_read_only += 1,
            Refusal::UnsupportedType(_) => c.unsupported_types += 1,
            Refusal::UnsupportedFlags => c.unsupported_flags += 1,
            Refusal::HostIo => c.host_io_errors += 1,
        }
        log::debug!("block: request refused: {why:?}");
    }

    /// Executes a checked request; returns the bytes written into guest buffers.
    fn execute<M: GuestMemory>(&mut self, mem: &M, req: &Request) -> Result<u32, Refusal> {
        let host = |e: std::io::Error| {
            log::warn!("block: image I/O failed: {e}");
            Refusal::HostIo
        };
        let len = req.data_len();
        match req.kind {
            RequestType::In => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(BOUNCE_BYTES as u64) as usize;
                    let buf = &mut self.bounce.as_mut_slice()[..n];
                    self.backend.read_at(buf, req.offset + done).map_err(host)?;
                    copy_to_guest(mem, &req.data, done, buf)?;
                    done += n as u64;
                }
                self.counters.reads += 1;
                self.counters.read_bytes += len;
                // The parser bounds a chain to 4 GiB: `len` fits.
                Ok(len as u32)
            }
            RequestType::Out => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(BOUNCE_BYTES as u64) as usize;
                    let buf = &mut self.bounce.as_mut_slice()[..n];
                    copy_from_guest(mem, &req.data, done, buf)?;
                    self.backend
                        .write_at(buf, req.offset + done)
                        .map_err(host)?;
                    done += n as u64;
                }
                self.counters.writes += 1;
                self.counters.written_bytes += len;
                Ok(0)
            }
            RequestType::Flush => {
                self.backend.flush().map_err(host)?;
                self.counters.flushes += 1;
                Ok(0)
            }
            RequestType::GetId => {
                let mut id = [0u8; ID_BYTES];
                let given = self.opts.id.as_bytes();
                let n = given.len().min(ID_BYTES);
                id[..n].copy_from_slice(&given[..n]);
                let out = len.min(ID_BYTES as u64) as usize;
                copy_to_guest(mem, &req.data, 0, &id[..out])?;
                self.counters.get_ids += 1;
                Ok(out as u32)
            }
            RequestType::Discard => {
                for r in &req.ranges {
                    if !self.backend.discard(r.offset, r.len).map_err(host)? {
                        self.counters.discards_not_supported_by_host += 1;
                    }
                    self.counters.discarded_bytes += r.len;
                }
                self.counters.discards += 1;
                Ok(0)
            }
            RequestType::WriteZeroes => {
                for r in &req.ranges {
                    let unmap = r.unmap && self.config.write_zeroes_may_unmap;
                    self.backend
                        .write_zeroes(r.offset, r.len, unmap)
                        .map_err(host)?;
                    self.counters.zeroed_bytes += r.len;
                }
                self.counters.write_zeroes += 1;
                Ok(0)
            }
        }
    }
}

impl<B: DiskBackend> DeviceModel for Block<B> {
    type Error = BlockError;
    /// The image is the device's own: queue processing needs nothing else.
    type Backend = ();

    /// virtio device type (2, block).
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    /// Features the device offers.
    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    /// Records the features the driver accepts (the whole current set, as with the balloon):
    /// bits not offered are dropped and counted. Ignored once activated.
    fn ack_features(&mut self, acked: u64) {
        if self.queue.is_some() {
            log::debug!("block: driver acked features {acked:#x} after activation");
            return;
        }
        let unsupported = acked & !self.avail_features;
        self.counters.unsupported_features_acked += u64::from(unsupported.count_ones());
        self.acked_features = acked & self.avail_features;
    }

    /// Maximum size of each queue (one request queue).
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_MAX_SIZE]
    }

    /// Size of the configuration space.
    fn config_len(&self) -> u64 {
        CONFIG_SPACE_SIZE
    }

    /// Reads the configuration space; an access past its end zero-fills `data` and is counted.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        if !virtio_chain::read_config(&self.config.bytes(), offset, data) {
            self.config_bad_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes the configuration space: nothing in it is writable (`VIRTIO_BLK_F_CONFIG_WCE` is
    /// not offered), so every write is ignored and counted.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.counters.config_bad_accesses += 1;
        log::debug!(
            "block: config write at offset {offset} length {} ignored",
            data.len()
        );
    }

    /// Starts the device with the queues the driver set up (queue 0 is the request queue;
    /// further ones are ignored).
    fn activate(&mut self, queues: Vec<Queue>) -> Result<(), BlockError> {
        if self.queue.is_some() {
            return Err(BlockError::AlreadyActivated);
        }
        let q = queues
            .into_iter()
            .next()
            .filter(|q| q.ready())
            .ok_or(BlockError::QueueNotReady)?;
        self.queue = Some(q);
        Ok(())
    }

    /// Driver reset: forgets negotiated features and the queue; counters are kept.
    fn reset(&mut self) {
        self.acked_features = 0;
        self.queue = None;
        self.needs_reset = false;
    }

    /// Whether the device stopped after a driver protocol violation (the transport sets
    /// `DEVICE_NEEDS_RESET`).
    fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Processes the available requests of queue `index` (only 0 exists); returns whether the
    /// used ring changed (the transport then interrupts the driver). At most one queue size of
    /// requests per call, so a driver that keeps adding cannot hold the caller; its next
    /// notification resumes.
    fn process_queue<M: GuestMemory>(
        &mut self,
        index: u16,
        mem: &M,
        _backend: &(),
    ) -> Result<bool, BlockError> {
        if index != 0 {
            return Err(BlockError::InvalidQueueIndex(index));
        }
        if self.needs_reset {
            return Err(BlockError::NeedsReset);
        }
        let Some(q) = self.queue.as_ref() else {
            return Err(BlockError::NotActivated);
        };
        let (size, table) = (q.size(), q.desc_table());
        let mut used = false;
        for _ in 0..size {
            let q = self.queue.as_mut().expect("activated");
            let next = match q.iter(mem) {
                Ok(mut it) => it.next().map(|c| c.head_index()),
                Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                    self.counters.avail_index_jumps += 1;
                    self.needs_reset = true;
                    return Err(BlockError::AvailIndexJump);
                }
                Err(e) => {
                    self.counters.avail_ring_unreadable += 1;
                    return Err(BlockError::Queue(e));
                }
            };
            let Some(head) = next else { break };
            if head >= size {
                self.counters.invalid_head_index += 1;
                log::debug!("block: available ring names descriptor {head} >= {size}");
                continue;
            }
            self.counters.requests += 1;
            let len = self.handle(mem, table, size, head);
            let q = self.queue.as_mut().expect("activated");
            q.add_used(mem, head, len).map_err(|e| {
                self.counters.used_ring_unwritable += 1;
                BlockError::Queue(e)
            })?;
            used = true;
        }
        Ok(used)
    }
}
