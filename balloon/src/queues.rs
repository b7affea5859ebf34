//! Queue processing: inflate, deflate, statistics and free page reporting.
//!
//! This module owns what the device does with guest buffers. Every chain is validated
//! structurally first ([`crate::chain`]); a malformed chain (indirect descriptors included:
//! they are not negotiated) is counted under its cause, produces no backend call and is
//! returned to the used ring (len 0) so a confused driver does not wait forever. PFNs and
//! reported ranges are then filtered so that the [`MemoryBackend`] is only called on guest RAM.
//! Backend calls complete before the buffer is returned: once the driver sees a reported range
//! in the used ring it may reuse those pages.

use std::time::SystemTime;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use crate::backend::MemoryBackend;
use crate::chain::{read_payload, walk_chain, ChainError, ChainLimits, DescTable};
use crate::device::{guest_warn, Balloon};
use crate::error::BalloonError;
use crate::features::QueueKind;
use crate::ranges::{
    check_byte_range, compact_pfns, merge_adjacent, split_ram, PfnRange, RangeRejection,
};
use crate::stats::{parse_stats, STAT_ENTRY_SIZE};

/// Maximum PFNs in one inflate/deflate descriptor (Linux sends at most 256 per buffer).
pub const MAX_PFNS_PER_DESCRIPTOR: u32 = 256;
/// Maximum descriptors in one inflate/deflate chain (Linux sends one).
pub const MAX_PFN_CHAIN_DESCRIPTORS: usize = 16;
/// Maximum descriptors in one stats chain (Linux sends one).
pub const MAX_STATS_CHAIN_DESCRIPTORS: usize = 4;
/// Maximum size of one stats descriptor: room for 256 entries (16 tags are defined today).
pub const MAX_STATS_DESCRIPTOR_LEN: u32 = 256 * STAT_ENTRY_SIZE as u32;
/// Maximum descriptors in one free page reporting chain (Linux sends at most 32).
pub const MAX_REPORTING_CHAIN_DESCRIPTORS: usize = 64;

/// The inflate/deflate chains of one `process_queue` call: their RAM ranges and heads.
#[derive(Default)]
struct PfnBatch {
    ranges: Vec<PfnRange>,
    heads: Vec<u16>,
}

const PFN_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: MAX_PFN_CHAIN_DESCRIPTORS,
    max_desc_len: MAX_PFNS_PER_DESCRIPTOR * 4,
    len_multiple: 4,
    readable_only: true,
};

const STATS_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: MAX_STATS_CHAIN_DESCRIPTORS,
    max_desc_len: MAX_STATS_DESCRIPTOR_LEN,
    len_multiple: 1,
    readable_only: true,
};

/// Reported ranges are never read or written by the device, only discarded, so both directions
/// are accepted (Linux posts them device-writable).
const REPORTING_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: MAX_REPORTING_CHAIN_DESCRIPTORS,
    max_desc_len: u32::MAX,
    len_multiple: 1,
    readable_only: false,
};

impl Balloon {
    /// Processes all available descriptors of queue `index` (the transport calls this on a queue
    /// notify). Returns whether the used ring changed (the transport then raises the used-buffer
    /// interrupt).
    ///
    /// At most one queue size worth of chains is handled per call, so a driver that keeps
    /// adding buffers cannot keep the caller busy; its next notification resumes processing.
    pub(crate) fn process_available<M: GuestMemory>(
        &mut self,
        index: u16,
        mem: &M,
        backend: &dyn MemoryBackend,
    ) -> Result<bool, BalloonError> {
        if !self.activated {
            return Err(BalloonError::NotActivated);
        }
        if self.needs_reset {
            return Err(BalloonError::NeedsReset);
        }
        let layout = self.queue_layout();
        let kind = layout.kind(index).ok_or(BalloonError::InvalidQueueIndex {
            index,
            count: layout.count(),
        })?;
        // Inflate/deflate: the RAM ranges of every chain of this call and their heads; the
        // backend is called once per merged range, then the buffers are returned.
        let mut batch = PfnBatch::default();
        let walked = self.walk_available(index, kind, mem, backend, &mut batch);
        let mut used = *walked.as_ref().unwrap_or(&false);
        if !batch.heads.is_empty() {
            self.flush_pfn_batch(kind, batch.ranges, backend);
            for h in batch.heads {
                self.add_used(index, mem, h)?;
                used = true;
            }
        }
        walked?;
        Ok(used)
    }

    /// The chains available on queue `index` (at most a queue size of them): PFN chains are
    /// checked and their RAM ranges collected into `batch`; the other kinds are handled and
    /// returned at once. Returns whether the used ring changed.
    fn walk_available<M: GuestMemory>(
        &mut self,
        index: u16,
        kind: QueueKind,
        mem: &M,
        backend: &dyn MemoryBackend,
        batch: &mut PfnBatch,
    ) -> Result<bool, BalloonError> {
        let qi = usize::from(index);
        let size = self.queues[qi].size();
        let table = DescTable {
            addr: self.queues[qi].desc_table(),
            size,
        };
        let mut used = false;
        for _ in 0..size {
            let next = match self.queues[qi].iter(mem) {
                Ok(mut it) => it.next(),
                Err(virtio_queue::Error::InvalidAvailRingIndex) => {
                    self.counters.avail_index_jumps += 1;
                    self.needs_reset = true;
                    guest_warn!(
                        self,
                        "balloon: queue {index}: available index moved more than {size} ahead"
                    );
                    return Err(BalloonError::AvailIndexJump(index));
                }
                Err(source) => {
                    self.counters.avail_ring_unreadable += 1;
                    return Err(BalloonError::Queue { index, source });
                }
            };
            let Some(chain) = next else { break };
            let head = chain.head_index();
            if head >= size {
                self.counters.invalid_head_index += 1;
                guest_warn!(
                    self,
                    "balloon: queue {index}: available ring names descriptor {head} >= {size}"
                );
                continue;
            }
            // The chain is walked from the table (`chain` would follow indirect tables).
            let to_return = match kind {
                QueueKind::Inflate | QueueKind::Deflate => {
                    self.handle_pfn_chain(kind, index, head, mem, backend, &mut batch.ranges);
                    batch.heads.push(head);
                    None
                }
                QueueKind::Stats => self.handle_stats_chain(index, table, head, mem),
                QueueKind::Reporting => {
                    self.handle_reporting_chain(index, table, head, mem, backend);
                    Some(head)
                }
            };
            if let Some(h) = to_return {
                self.add_used(index, mem, h)?;
                used = true;
            }
        }
        Ok(used)
    }

    /// Discards (inflate) or reclaims (deflate) the ranges a batch of chains named, one backend
    /// call per run of consecutive RAM frames ([`merge_adjacent`]).
    fn flush_pfn_batch(
        &mut self,
        kind: QueueKind,
        batch: Vec<PfnRange>,
        backend: &dyn MemoryBackend,
    ) {
        for r in merge_adjacent(batch, backend) {
            let (gpa, len) = (r.gpa(), r.len_bytes());
            if kind == QueueKind::Inflate {
                self.discard(backend, gpa, len);
            } else if let Err(e) = backend.reclaim(gpa, len) {
                self.counters.backend_errors += 1;
                guest_warn!(self, "balloon: reclaim [{gpa:#x}, +{len:#x}) failed: {e}");
            }
        }
    }

    /// Called by the VMM's timer every polling interval: returns the held stats buffer to the
    /// driver (true => raise interrupt). Returns `Ok(false)` when there is nothing to return
    /// (no buffer held, statistics not negotiated, device inactive or needing a reset).
    pub fn trigger_stats_update<M: GuestMemory>(&mut self, mem: &M) -> Result<bool, BalloonError> {
        if !self.activated || self.needs_reset {
            return Ok(false);
        }
        let Some(stats_index) = self.queue_layout().stats else {
            return Ok(false);
        };
        let Some(head) = self.stats_desc.take() else {
            return Ok(false);
        };
        self.add_used(stats_index, mem, head)?;
        self.counters.stats_requests += 1;
        Ok(true)
    }

    fn add_used<M: GuestMemory>(
        &mut self,
        index: u16,
        mem: &M,
        head: u16,
    ) -> Result<(), BalloonError> {
        self.queues[usize::from(index)]
            .add_used(mem, head, 0)
            .map_err(|source| {
                self.counters.used_ring_unwritable += 1;
                BalloonError::Queue { index, source }
            })
    }

    /// Counts and logs a rejected chain.
    fn chain_rejected(&mut self, index: u16, e: ChainError) {
        let c = &mut self.counters;
        match e {
            ChainError::IndirectNotNegotiated { .. } => c.indirect_not_negotiated += 1,
            ChainError::TooLong => c.chains_too_long += 1,
            ChainError::Loop { .. } => c.looping_chains += 1,
            ChainError::NextOutOfRange { .. } => c.next_out_of_range += 1,
            ChainError::DescriptorUnreadable { .. } => c.unreadable_descriptors += 1,
            ChainError::OverFourGib => c.chains_over_4gib += 1,
            ChainError::WriteOnly { .. } => c.write_only_where_read_expected += 1,
            ChainError::BadLen { .. } => c.bad_descriptor_len += 1,
            ChainError::OutsideMemory { .. } => c.descriptors_outside_memory += 1,
        }
        guest_warn!(self, "balloon: queue {index}: chain rejected: {e:?}");
    }

    fn handle_pfn_chain<M: GuestMemory>(
        &mut self,
        kind: QueueKind,
        index: u16,
        head: u16,
        mem: &M,
        backend: &dyn MemoryBackend,
        batch: &mut Vec<PfnRange>,
    ) {
        let q = &self.queues[usize::from(index)];
        let table = DescTable {
            addr: q.desc_table(),
            size: q.size(),
        };
        let payload = match walk_chain(mem, table, head, &PFN_LIMITS)
            .and_then(|descs| read_payload(mem, &descs))
        {
            Ok(p) => p,
            Err(e) => return self.chain_rejected(index, e),
        };
        if payload.is_empty() {
            self.counters.empty_chains += 1;
            return;
        }
        let mut pfns: Vec<u32> = payload
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (ranges, duplicates) = compact_pfns(&mut pfns);
        let split = split_ram(&ranges, mem, backend);
        self.counters.duplicate_pfns += duplicates;
        self.counters.invalid_pfns += split.invalid_pages;
        self.counters.pfns_outside_ram += split.non_ram_pages;
        if split.invalid_pages + split.non_ram_pages > 0 {
            guest_warn!(
                self,
                "balloon: queue {index}: dropped {} PFNs outside guest memory and {} outside RAM",
                split.invalid_pages,
                split.non_ram_pages
            );
        }
        for r in split.ram {
            if kind == QueueKind::Inflate {
                self.counters.inflated_pages += r.pages;
            } else {
                self.counters.deflated_pages += r.pages;
            }
            batch.push(r);
        }
    }

    fn discard(&mut self, backend: &dyn MemoryBackend, gpa: u64, len: u64) -> bool {
        match backend.discard(gpa, len) {
            Ok(freed) => {
                self.counters.discarded_bytes += len;
                self.counters.freed_bytes += freed;
                true
            }
            Err(e) => {
                self.counters.backend_errors += 1;
                guest_warn!(self, "balloon: discard [{gpa:#x}, +{len:#x}) failed: {e}");
                false
            }
        }
    }

    /// Parses a stats buffer and keeps it; returns the previously held buffer, if any, for the
    /// used ring. A malformed buffer is held as well (its contents are ignored), so the driver
    /// follows the normal protocol and cannot make the device spin.
    fn handle_stats_chain<M: GuestMemory>(
        &mut self,
        index: u16,
        table: DescTable,
        head: u16,
        mem: &M,
    ) -> Option<u16> {
        match walk_chain(mem, table, head, &STATS_LIMITS)
            .and_then(|descs| read_payload(mem, &descs))
        {
            Ok(buf) => {
                let parsed = parse_stats(&buf);
                self.counters.stats_updates += 1;
                self.counters.stats_unknown_tags += parsed.unknown_tags;
                if parsed.truncated {
                    self.counters.stats_truncated += 1;
                    guest_warn!(
                        self,
                        "balloon: stats buffer of {} bytes ends with a partial entry",
                        buf.len()
                    );
                }
                self.latest_stats = Some(parsed.stats);
                self.stats_received_at = Some(SystemTime::now());
                self.actual_at_stats = Some(self.config.actual);
            }
            Err(e) => self.chain_rejected(index, e),
        }
        let previous = self.stats_desc.replace(head);
        if previous.is_some() {
            self.counters.extra_stats_buffers += 1;
            guest_warn!(
                self,
                "balloon: driver posted a stats buffer while one was held"
            );
        }
        previous
    }

    fn handle_reporting_chain<M: GuestMemory>(
        &mut self,
        index: u16,
        table: DescTable,
        head: u16,
        mem: &M,
        backend: &dyn MemoryBackend,
    ) {
        let descs = match walk_chain(mem, table, head, &REPORTING_LIMITS) {
            Ok(d) => d,
            Err(e) => return self.chain_rejected(index, e),
        };
        for d in descs {
            let (gpa, len) = (d.addr().0, u64::from(d.len()));
            match check_byte_range(gpa, len, mem, backend) {
                Ok(()) => {
                    if self.discard(backend, gpa, len) {
                        self.counters.reported_bytes += len;
                    }
                }
                Err(why) => {
                    let c = &mut self.counters;
                    match why {
                        RangeRejection::Empty => c.empty_ranges += 1,
                        RangeRejection::Misaligned => c.misaligned_ranges += 1,
                        RangeRejection::OutsideMemory => c.descriptors_outside_memory += 1,
                        RangeRejection::NotRam => c.ranges_outside_ram += 1,
                    }
                    guest_warn!(
                        self,
                        "balloon: queue {index}: reported range [{gpa:#x}, +{len:#x}) \
                         rejected: {why:?}"
                    );
                }
            }
        }
    }
}
