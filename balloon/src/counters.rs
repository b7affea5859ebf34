//! Device counters.
//!
//! This module owns [`BalloonCounters`]: what the device did (pages inflated/deflated, bytes
//! discarded/freed/reported) and every kind of malformed or hostile guest input it rejected.
//! Counters are monotonic over the life of the device object: [`crate::Balloon::reset`] does not
//! clear them.

use serde::{Deserialize, Serialize};

/// A snapshot of the device counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonCounters {
    /// Valid RAM pages the guest put in the balloon (inflateq), after dedup and RAM filtering.
    pub inflated_pages: u64,
    /// Valid RAM pages the guest took back (deflateq).
    pub deflated_pages: u64,
    /// Bytes the device asked the backend to discard and the backend accepted (inflate and free
    /// page reporting).
    pub discarded_bytes: u64,
    /// Bytes the backend says the host really freed.
    pub freed_bytes: u64,
    /// Bytes of free page ranges the guest reported and the device accepted.
    pub reported_bytes: u64,
    /// Stats buffers received from the driver.
    pub stats_updates: u64,
    /// Stats buffers handed back to the driver to request fresh statistics.
    pub stats_requests: u64,
    /// PFNs whose page is not backed by guest memory at all.
    pub invalid_pfns: u64,
    /// PFNs inside guest memory that are not RAM (holes, device memory).
    pub pfns_outside_ram: u64,
    /// PFNs sent more than once in the same chain.
    pub duplicate_pfns: u64,
    /// Chains with more descriptors than the per-queue cap.
    pub chains_too_long: u64,
    /// Chains in which a descriptor's `next` names a descriptor already in the chain.
    pub looping_chains: u64,
    /// Chains in which a descriptor's `next` names an index outside the descriptor table.
    pub next_out_of_range: u64,
    /// Chains with a descriptor table entry that could not be read from guest memory.
    pub unreadable_descriptors: u64,
    /// Chains with a descriptor flagged `VIRTQ_DESC_F_INDIRECT` although
    /// `VIRTIO_F_INDIRECT_DESC` was not negotiated (the device never offers it); the indirect
    /// table is never read.
    pub indirect_not_negotiated: u64,
    /// Chains whose buffers add up to more than 4 GiB (`u32::MAX` bytes).
    pub chains_over_4gib: u64,
    /// Well-formed chains whose buffers are all empty (nothing to do).
    pub empty_chains: u64,
    /// Available ring entries naming a descriptor index outside the queue.
    pub invalid_head_index: u64,
    /// Descriptors with a length the protocol does not allow (not a multiple of 4 for PFN
    /// arrays, over the per-descriptor cap, or a stats buffer over its cap).
    pub bad_descriptor_len: u64,
    /// Descriptors whose buffer lies (partly) outside guest memory.
    pub descriptors_outside_memory: u64,
    /// Device-writable descriptors on a queue whose buffers the device must read.
    pub write_only_where_read_expected: u64,
    /// Reported free page ranges of zero bytes.
    pub empty_ranges: u64,
    /// Reported free page ranges not 4 KiB aligned in address or length.
    pub misaligned_ranges: u64,
    /// Reported free page ranges inside guest memory but not (entirely) RAM.
    pub ranges_outside_ram: u64,
    /// Stats buffers that ended with a partial entry.
    pub stats_truncated: u64,
    /// Stats entries with an unknown tag (ignored).
    pub stats_unknown_tags: u64,
    /// Stats buffers posted while the device already held one (the older one is returned).
    pub extra_stats_buffers: u64,
    /// Times the driver moved the available index more than the queue size ahead.
    pub avail_index_jumps: u64,
    /// Notifications whose available ring could not be read (outside guest memory, or at
    /// guest-physical 0, which `virtio-queue` takes for a queue never set up).
    pub avail_ring_unreadable: u64,
    /// Buffers that could not be returned because the used ring is not writable guest memory.
    pub used_ring_unwritable: u64,
    /// Backend `discard`/`reclaim` calls that failed.
    pub backend_errors: u64,
    /// Rejected configuration space accesses (bad offset/length, read-only field).
    pub config_bad_accesses: u64,
    /// Feature bits the driver acknowledged that the device did not offer (dropped).
    pub unsupported_features_acked: u64,
    /// Log lines about guest input suppressed by the rate limiter.
    pub log_lines_suppressed: u64,
}
