//! Device counters.
//!
//! This module owns [`BlockCounters`]: the requests the device completed and the bytes they
//! moved, and every kind of malformed or hostile request it refused, by cause. Counters are
//! monotonic over the life of the device object: [`crate::Block::reset`] does not clear them.

use serde::{Deserialize, Serialize};

/// A snapshot of the device counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCounters {
    /// Chains taken from the available ring (every request, good or bad).
    pub requests: u64,
    /// `VIRTIO_BLK_T_IN` requests completed with `VIRTIO_BLK_S_OK`.
    pub reads: u64,
    /// `VIRTIO_BLK_T_OUT` requests completed with `VIRTIO_BLK_S_OK`.
    pub writes: u64,
    /// `VIRTIO_BLK_T_FLUSH` requests completed with `VIRTIO_BLK_S_OK`.
    pub flushes: u64,
    /// `VIRTIO_BLK_T_GET_ID` requests completed with `VIRTIO_BLK_S_OK`.
    pub get_ids: u64,
    /// `VIRTIO_BLK_T_DISCARD` requests completed with `VIRTIO_BLK_S_OK`.
    pub discards: u64,
    /// `VIRTIO_BLK_T_WRITE_ZEROES` requests completed with `VIRTIO_BLK_S_OK`.
    pub write_zeroes: u64,
    /// Bytes read from the image into guest buffers.
    pub read_bytes: u64,
    /// Bytes written from guest buffers into the image.
    pub written_bytes: u64,
    /// Bytes of discard ranges handed to the image (holes punched).
    pub discarded_bytes: u64,
    /// Bytes of write-zeroes ranges handed to the image.
    pub zeroed_bytes: u64,
    /// Requests answered `VIRTIO_BLK_S_IOERR`.
    pub ioerr_status: u64,
    /// Requests answered `VIRTIO_BLK_S_UNSUPP`.
    pub unsupp_status: u64,
    /// Chains returned without any status (no writable status byte to write one to).
    pub no_status: u64,
    // --- why requests were refused ---
    /// Request types the device does not implement (answered `UNSUPP`).
    pub unsupported_types: u64,
    /// Discard or write-zeroes segments with flags the command does not allow (`UNSUPP`).
    pub unsupported_flags: u64,
    /// Chains with a descriptor flagged `VIRTQ_DESC_F_INDIRECT` (never offered).
    pub indirect_not_negotiated: u64,
    /// Chains whose `next` names a descriptor already in the chain (the only way a chain can be
    /// longer than the queue).
    pub looping_chains: u64,
    /// Chains whose `next` names an index outside the descriptor table.
    pub next_out_of_range: u64,
    /// Chains with a descriptor table entry outside guest memory.
    pub unreadable_descriptors: u64,
    /// Chains whose buffers add up to more than 4 GiB.
    pub chains_over_4gib: u64,
    /// Chains with a device-readable descriptor after a device-writable one.
    pub readable_after_writable: u64,
    /// Chains without a device-writable byte for the status.
    pub missing_status: u64,
    /// Chains whose status byte lies outside guest memory.
    pub status_outside_memory: u64,
    /// Chains whose device-readable part is shorter than the 16-byte request header.
    pub short_headers: u64,
    /// Requests with a data buffer (partly) outside guest memory.
    pub buffers_outside_memory: u64,
    /// Requests whose data buffers go the wrong way for their type (e.g. a read with
    /// device-readable data, a write with device-writable data besides the status).
    pub wrong_direction: u64,
    /// Reads and writes whose length is not a multiple of the sector size (or of the block
    /// size with `O_DIRECT`), get-id requests without room for the id, discard and
    /// write-zeroes payloads that are not whole 16-byte segments.
    pub bad_lengths: u64,
    /// Requests reaching past the end of the image (or a sector number that overflows).
    pub out_of_range: u64,
    /// Discard and write-zeroes requests with more segments, or segments with more sectors,
    /// than the configuration space allows.
    pub over_limits: u64,
    /// Writes, discards and write-zeroes to a read-only disk.
    pub write_to_read_only: u64,
    /// Image I/O that failed on the host (the guest got `IOERR`).
    pub host_io_errors: u64,
    /// Discards the host file system could not punch (the request still succeeds: discard is
    /// a hint).
    pub discards_not_supported_by_host: u64,
    /// Available ring entries naming a descriptor index outside the queue.
    pub invalid_head_index: u64,
    /// Times the driver moved the available index more than the queue size ahead.
    pub avail_index_jumps: u64,
    /// Notifications whose available ring could not be read.
    pub avail_ring_unreadable: u64,
    /// Requests that could not be returned because the used ring is not writable guest memory.
    pub used_ring_unwritable: u64,
    /// Rejected configuration space accesses (bad offset or length, any write).
    pub config_bad_accesses: u64,
    /// Feature bits the driver acknowledged that the device did not offer (dropped).
    pub unsupported_features_acked: u64,
}
