//! Structural validation of descriptor chains.
//!
//! This module owns walking a guest descriptor chain under per-queue limits (descriptor count,
//! direction, buffer length) and copying device-readable payloads out of guest memory through
//! `vm-memory`, so that a chain that loops, is too long, is broken, or points outside guest
//! memory becomes a [`ChainError`] instead of a panic or an out-of-bounds host access.

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

/// Limits for the chains of one queue.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ChainLimits {
    /// Maximum number of descriptors in one chain.
    pub max_descriptors: usize,
    /// Maximum length of one descriptor's buffer, in bytes.
    pub max_desc_len: u32,
    /// Each buffer length must be a multiple of this (1: any length).
    pub len_multiple: u32,
    /// Whether every descriptor must be device-readable.
    pub readable_only: bool,
}

/// Why a chain was rejected as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// More descriptors than allowed, or a loop.
    TooLong,
    /// A `next` index outside the table, an unreadable descriptor, or a bad indirect table.
    Broken,
    /// A device-writable descriptor where the device must read.
    WriteOnly { addr: u64, len: u32 },
    /// A buffer length the queue does not allow.
    BadLen { addr: u64, len: u32 },
    /// A buffer (partly) outside guest memory.
    OutsideMemory { addr: u64, len: u32 },
}

/// Walks `chain` and returns its descriptors if it satisfies `limits`.
///
/// `virtio-queue` stops iterating silently when a chain loops (after `queue_size` descriptors)
/// or names a `next` index outside the table; both are detected here because the last
/// descriptor returned still has `VIRTQ_DESC_F_NEXT` set.
pub(crate) fn walk_chain<M: GuestMemory>(
    chain: DescriptorChain<&M>,
    queue_size: u16,
    limits: &ChainLimits,
) -> Result<Vec<Descriptor>, ChainError> {
    let mut descs: Vec<Descriptor> = Vec::new();
    for d in chain {
        if descs.len() == limits.max_descriptors {
            return Err(ChainError::TooLong);
        }
        let (addr, len) = (d.addr().0, d.len());
        if limits.readable_only && d.is_write_only() {
            return Err(ChainError::WriteOnly { addr, len });
        }
        if len > limits.max_desc_len || len % limits.len_multiple != 0 {
            return Err(ChainError::BadLen { addr, len });
        }
        descs.push(d);
    }
    if descs.last().is_some_and(|d| d.has_next()) {
        return Err(if descs.len() >= usize::from(queue_size) {
            ChainError::TooLong
        } else {
            ChainError::Broken
        });
    }
    Ok(descs)
}

/// Copies the buffers of (device-readable) `descs` out of guest memory, in order.
pub(crate) fn read_payload<M: GuestMemory>(
    mem: &M,
    descs: &[Descriptor],
) -> Result<Vec<u8>, ChainError> {
    let total: usize = descs.iter().map(|d| d.len() as usize).sum();
    let mut out = vec![0u8; total];
    let mut pos = 0;
    for d in descs {
        let len = d.len() as usize;
        mem.read_slice(&mut out[pos..pos + len], d.addr())
            .map_err(|_| ChainError::OutsideMemory {
                addr: d.addr().0,
                len: d.len(),
            })?;
        pos += len;
    }
    Ok(out)
}
