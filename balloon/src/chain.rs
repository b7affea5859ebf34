//! Structural validation of descriptor chains.
//!
//! This module owns walking a guest descriptor chain under per-queue limits (descriptor count,
//! direction, buffer length) and copying device-readable payloads out of guest memory through
//! `vm-memory`, so that a chain that loops, is too long, is broken, uses a feature that was not
//! negotiated, or points outside guest memory becomes a [`ChainError`] naming that cause instead
//! of a panic or an out-of-bounds host access.
//!
//! The walk reads the descriptor table itself rather than through `virtio-queue`'s
//! `DescriptorChain` iterator: that iterator follows `VIRTQ_DESC_F_INDIRECT` whether or not
//! `VIRTIO_F_INDIRECT_DESC` was negotiated, and ends silently (as if the chain were over) on a
//! loop, an unreadable descriptor, a bad indirect table or a chain over 4 GiB, so the device
//! could neither refuse indirect tables nor tell those causes apart. This device never offers
//! `VIRTIO_F_INDIRECT_DESC` (see [`crate::features`]), so a descriptor with the indirect flag is
//! a driver error (virtio 1.2 §2.7.5.3.1): the walk stops at that descriptor and never reads the
//! table it points to.

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of one split-ring descriptor in the table.
const DESC_SIZE: u64 = 16;

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

/// Where a queue's descriptor table is and how many entries it has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DescTable {
    /// Guest-physical address of entry 0.
    pub addr: u64,
    /// Number of entries (the queue size).
    pub size: u16,
}

/// Why a chain was rejected as a whole. Each variant is counted under its own counter
/// ([`crate::BalloonCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// Descriptor `index` has `VIRTQ_DESC_F_INDIRECT` set, but `VIRTIO_F_INDIRECT_DESC` was
    /// not negotiated (this device never offers it).
    IndirectNotNegotiated { index: u16 },
    /// More descriptors than the queue allows.
    TooLong,
    /// Descriptor `from` names as `next` a descriptor already in the chain.
    Loop { from: u16, next: u16 },
    /// Descriptor `from` names as `next` an index outside the descriptor table.
    NextOutOfRange { from: u16, next: u16 },
    /// Table entry `index` cannot be read from guest memory.
    DescriptorUnreadable { index: u16 },
    /// The buffers add up to more than `u32::MAX` bytes (virtio 1.2 §2.7.5.2: drivers must not
    /// add chains over 4 GiB).
    OverFourGib,
    /// A device-writable descriptor where the device must read.
    WriteOnly { addr: u64, len: u32 },
    /// A buffer length the queue does not allow.
    BadLen { addr: u64, len: u32 },
    /// A buffer (partly) outside guest memory.
    OutsideMemory { addr: u64, len: u32 },
}

/// Walks the chain starting at descriptor `head` (which the caller checked is `< table.size`)
/// and returns its descriptors if it satisfies `limits`.
///
/// Only the descriptor table entries of the chain are read, each once; no buffer is touched.
pub(crate) fn walk_chain<M: GuestMemory>(
    mem: &M,
    table: DescTable,
    head: u16,
    limits: &ChainLimits,
) -> Result<Vec<Descriptor>, ChainError> {
    let mut descs: Vec<Descriptor> = Vec::new();
    // Table indices already in the chain (at most `max_descriptors`, a few dozen: a linear
    // search is cheaper than a bitmap of the whole table).
    let mut visited: Vec<u16> = Vec::new();
    let mut total: u32 = 0;
    let mut index = head;
    loop {
        let d = read_descriptor(mem, table, index)?;
        if u32::from(d.flags()) & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::IndirectNotNegotiated { index });
        }
        let (addr, len) = (d.addr().0, d.len());
        if limits.readable_only && d.is_write_only() {
            return Err(ChainError::WriteOnly { addr, len });
        }
        if len > limits.max_desc_len || len % limits.len_multiple != 0 {
            return Err(ChainError::BadLen { addr, len });
        }
        total = total.checked_add(len).ok_or(ChainError::OverFourGib)?;
        descs.push(d);
        visited.push(index);
        if !d.has_next() {
            return Ok(descs);
        }
        let next = d.next();
        if next >= table.size {
            return Err(ChainError::NextOutOfRange { from: index, next });
        }
        if visited.contains(&next) {
            return Err(ChainError::Loop { from: index, next });
        }
        if descs.len() == limits.max_descriptors {
            return Err(ChainError::TooLong);
        }
        index = next;
    }
}

/// Reads entry `index` of the descriptor table.
fn read_descriptor<M: GuestMemory>(
    mem: &M,
    table: DescTable,
    index: u16,
) -> Result<Descriptor, ChainError> {
    table
        .addr
        .checked_add(u64::from(index) * DESC_SIZE)
        .and_then(|at| mem.read_obj::<Descriptor>(GuestAddress(at)).ok())
        .ok_or(ChainError::DescriptorUnreadable { index })
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
