//! Device counters.
//!
//! This module owns [`NetCounters`]: the frames and bytes moved each way, the frames dropped
//! and why, and every kind of malformed or hostile chain the device refused, by cause.
//! Counters are monotonic over the life of the device object: [`crate::Net::reset`] does not
//! clear them.

use serde::{Deserialize, Serialize};

/// A snapshot of the device counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetCounters {
    /// Frames delivered to the guest (received from the tap).
    pub rx_frames: u64,
    /// Bytes of those frames, without the 12-byte header.
    pub rx_bytes: u64,
    /// Frames the guest sent that reached the tap.
    pub tx_frames: u64,
    /// Bytes of those frames, without the 12-byte header.
    pub tx_bytes: u64,
    // --- receive drops ---
    /// Frames read from the tap and dropped because the driver had no receive buffer posted.
    pub rx_dropped_no_buffers: u64,
    /// Frames read from the tap and dropped because the driver had not started the device.
    pub rx_dropped_not_activated: u64,
    /// Frames dropped because they were larger than the receive chain the driver posted (the
    /// chain stays with the device for the next frame).
    pub rx_frames_too_big: u64,
    /// Reads from the tap that failed on the host (or returned less than a header).
    pub rx_host_errors: u64,
    // --- transmit refusals ---
    /// Transmit chains refused, whatever the cause (the sum of the causes below that apply to
    /// transmit chains).
    pub tx_bad_frames: u64,
    /// Transmit frames over 65562 bytes, header included.
    pub tx_oversized: u64,
    /// Transmit frames shorter than the header and an Ethernet header (26 bytes).
    pub tx_short: u64,
    /// Transmit headers asking for a checksum or segmentation offload (none is negotiated).
    pub tx_offload_not_negotiated: u64,
    /// Transmit frames the tap refused (the host error is logged).
    pub tx_host_errors: u64,
    // --- chains refused, either queue ---
    /// Receive chains refused, whatever the cause (returned to the driver with nothing
    /// written).
    pub rx_bad_chains: u64,
    /// Chains with buffers going the wrong way (a device-readable buffer in a receive chain,
    /// a device-writable one in a transmit chain).
    pub wrong_direction: u64,
    /// Chains with a buffer (partly) outside guest memory.
    pub buffers_outside_memory: u64,
    /// Chains with a descriptor flagged `VIRTQ_DESC_F_INDIRECT` (never offered).
    pub indirect_not_negotiated: u64,
    /// Chains whose `next` names a descriptor already in the chain.
    pub looping_chains: u64,
    /// Chains whose `next` names an index outside the descriptor table.
    pub next_out_of_range: u64,
    /// Chains with a descriptor table entry outside guest memory.
    pub unreadable_descriptors: u64,
    /// Chains whose buffers add up to more than 4 GiB.
    pub chains_over_4gib: u64,
    /// Chains with a device-readable descriptor after a device-writable one.
    pub readable_after_writable: u64,
    // --- queue protocol ---
    /// Available ring entries naming a descriptor index outside the queue.
    pub invalid_head_index: u64,
    /// Times the driver moved an available index more than the queue size ahead.
    pub avail_index_jumps: u64,
    /// Times an available ring could not be read.
    pub avail_ring_unreadable: u64,
    /// Chains that could not be returned because the used ring is not writable guest memory.
    pub used_ring_unwritable: u64,
    /// Rejected configuration space accesses (bad offset or length, any write).
    pub config_bad_accesses: u64,
    /// Feature bits the driver acknowledged that the device did not offer (dropped).
    pub unsupported_features_acked: u64,
}
