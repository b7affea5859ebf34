//! Structural validation of descriptor chains.
//!
//! This module owns walking one request's descriptor chain: it reads the descriptor table
//! itself (not through `virtio-queue`'s iterator, which follows `VIRTQ_DESC_F_INDIRECT` whether
//! or not it was negotiated and ends silently on a loop or an unreadable entry), so that a chain
//! that loops (and so is longer than the queue: each entry can be in it once), names a descriptor outside the table, lies outside
//! guest memory, uses an indirect table, adds up to more than 4 GiB or puts a device-readable
//! buffer after a device-writable one becomes a [`ChainError`] naming that cause. No buffer is
//! read here; only table entries, each once.

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Size of one split-ring descriptor in the table.
const DESC_SIZE: u64 = 16;

/// One guest buffer (or a piece of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Seg {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A chain's buffers, device-readable ones first (in chain order), then device-writable ones.
#[derive(Debug, Default)]
pub(crate) struct Walked {
    /// Device-readable buffers.
    pub readable: Vec<Seg>,
    /// Device-writable buffers.
    pub writable: Vec<Seg>,
}

/// Why a chain was rejected as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// A descriptor has `VIRTQ_DESC_F_INDIRECT` set (never offered).
    IndirectNotNegotiated,
    /// A descriptor's `next` names a descriptor already in the chain.
    Loop,
    /// A descriptor's `next` names an index outside the table.
    NextOutOfRange,
    /// A table entry cannot be read from guest memory.
    DescriptorUnreadable,
    /// The buffers add up to more than `u32::MAX` bytes (virtio 1.2 §2.7.5.2).
    OverFourGib,
    /// A device-readable descriptor after a device-writable one (virtio 1.2 §2.7.4.2).
    ReadableAfterWritable,
}

/// Walks the chain starting at `head` (the caller checked `head < size`) of the descriptor
/// table at `table` with `size` entries. Empty buffers are dropped.
pub(crate) fn walk<M: GuestMemory>(
    mem: &M,
    table: u64,
    size: u16,
    head: u16,
) -> Result<Walked, ChainError> {
    let mut out = Walked::default();
    // A chain may hold each table entry at most once, so refusing loops also bounds it to `size`
    // descriptors; one flag per entry finds a loop in constant time per descriptor.
    let mut seen = vec![false; usize::from(size)];
    let mut total: u32 = 0;
    let mut index = head;
    loop {
        seen[usize::from(index)] = true;
        let d: Descriptor = table
            .checked_add(u64::from(index) * DESC_SIZE)
            .and_then(|at| mem.read_obj(GuestAddress(at)).ok())
            .ok_or(ChainError::DescriptorUnreadable)?;
        if u32::from(d.flags()) & VRING_DESC_F_INDIRECT != 0 {
            return Err(ChainError::IndirectNotNegotiated);
        }
        total = total.checked_add(d.len()).ok_or(ChainError::OverFourGib)?;
        let seg = Seg {
            addr: d.addr().0,
            len: d.len(),
        };
        if d.is_write_only() {
            if seg.len > 0 {
                out.writable.push(seg);
            }
        } else if !out.writable.is_empty() {
            return Err(ChainError::ReadableAfterWritable);
        } else if seg.len > 0 {
            out.readable.push(seg);
        }
        if !d.has_next() {
            return Ok(out);
        }
        let next = d.next();
        if next >= size {
            return Err(ChainError::NextOutOfRange);
        }
        if seen[usize::from(next)] {
            return Err(ChainError::Loop);
        }
        index = next;
    }
}

/// Splits the first `n` bytes off `segs`; `None` if they hold fewer.
pub(crate) fn split_front(segs: &[Seg], n: u64) -> Option<(Vec<Seg>, Vec<Seg>)> {
    let mut front = Vec::new();
    let mut rest = Vec::new();
    let mut need = n;
    for s in segs {
        let take = u64::from(s.len).min(need);
        if take > 0 {
            front.push(Seg {
                addr: s.addr,
                len: take as u32,
            });
        }
        if take < u64::from(s.len) {
            rest.push(Seg {
                addr: s.addr.wrapping_add(take),
                len: s.len - take as u32,
            });
        }
        need -= take;
    }
    (need == 0).then_some((front, rest))
}

/// Total bytes of `segs`.
pub(crate) fn total_len(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_front_across_segments() {
        let segs = [
            Seg {
                addr: 0x1000,
                len: 10,
            },
            Seg {
                addr: 0x2000,
                len: 10,
            },
        ];
        let (f, r) = split_front(&segs, 14).unwrap();
        assert_eq!(
            f,
            vec![
                segs[0],
                Seg {
                    addr: 0x2000,
                    len: 4
                }
            ]
        );
        assert_eq!(
            r,
            vec![Seg {
                addr: 0x2004,
                len: 6
            }]
        );
        let (f, r) = split_front(&segs, 20).unwrap();
        assert_eq!((f.len(), r.len()), (2, 0));
        assert!(split_front(&segs, 21).is_none());
        assert_eq!(total_len(&segs), 20);
    }
}
