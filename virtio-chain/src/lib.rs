//! Structural validation of split-virtqueue descriptor chains, shared by the device models
//! (`block`, `net`).
//!
//! This crate owns walking one request's descriptor chain: it reads the descriptor table
//! itself (not through `virtio-queue`'s iterator, which follows `VIRTQ_DESC_F_INDIRECT` whether
//! or not it was negotiated and ends silently on a loop or an unreadable entry), so that a chain
//! that loops (and so is longer than the queue: each entry can be in it once), names a descriptor outside the table, lies outside
//! guest memory, uses an indirect table, adds up to more than 4 GiB or puts a device-readable
//! buffer after a device-writable one becomes a [`ChainError`] naming that cause. No buffer is
//! read by [`walk`]; only table entries, each once. It also owns copying bytes between a host
//! buffer and a chain's (already checked) guest buffers ([`copy_to_guest`], [`copy_from_guest`]),
//! and two small things every device model shows the same way: feature names
//! ([`feature_names`]) and bounds-checked configuration space reads ([`read_config`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of one split-ring descriptor in the table.
const DESC_SIZE: u64 = 16;

/// One guest buffer (or a piece of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A chain's buffers, device-readable ones first (in chain order), then device-writable ones.
#[derive(Debug, Default)]
pub struct Walked {
    /// Device-readable buffers.
    pub readable: Vec<Seg>,
    /// Device-writable buffers.
    pub writable: Vec<Seg>,
}

/// Why a chain was rejected as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
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
pub fn walk<M: GuestMemory>(
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
pub fn split_front(segs: &[Seg], n: u64) -> Option<(Vec<Seg>, Vec<Seg>)> {
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
pub fn total_len(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// A guest buffer (partly) outside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideMemory;

/// Whether every buffer of `segs` lies inside guest memory with `access`.
pub fn in_memory<M: GuestMemory>(mem: &M, segs: &[Seg], access: Permissions) -> bool {
    segs.iter()
        .all(|s| mem.check_range(GuestAddress(s.addr), s.len as usize, access))
}

/// The pieces of `segs` that hold bytes `[start, start + len)` of their concatenation, as
/// (guest address, range in a buffer holding those bytes).
pub fn pieces(segs: &[Seg], start: u64, len: usize) -> Vec<(GuestAddress, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let end = start + len as u64;
    let mut seg_start = 0u64;
    for s in segs {
        let seg_end = seg_start + u64::from(s.len);
        let (from, to) = (start.max(seg_start), end.min(seg_end));
        if from < to {
            let addr = GuestAddress(s.addr + (from - seg_start));
            out.push((addr, (from - start) as usize..(to - start) as usize));
        }
        if seg_end >= end {
            break;
        }
        seg_start = seg_end;
    }
    out
}

/// Writes `buf` into bytes `[start, ..)` of the guest buffers `segs`.
pub fn copy_to_guest<M: GuestMemory>(
    mem: &M,
    segs: &[Seg],
    start: u64,
    buf: &[u8],
) -> Result<(), OutsideMemory> {
    for (addr, r) in pieces(segs, start, buf.len()) {
        mem.write_slice(&buf[r], addr).map_err(|_| OutsideMemory)?;
    }
    Ok(())
}

/// Fills `buf` from bytes `[start, ..)` of the guest buffers `segs`.
pub fn copy_from_guest<M: GuestMemory>(
    mem: &M,
    segs: &[Seg],
    start: u64,
    buf: &mut [u8],
) -> Result<(), OutsideMemory> {
    for (addr, r) in pieces(segs, start, buf.len()) {
        mem.read_slice(&mut buf[r], addr)
            .map_err(|_| OutsideMemory)?;
    }
    Ok(())
}

/// The names of the bits set in `features`, from `names` (`bit N` for bits without a name):
/// what `GET /vm` shows of a device's features.
pub fn feature_names(features: u64, names: &[(u32, &str)]) -> Vec<String> {
    (0..64u32)
        .filter(|bit| features & (1 << bit) != 0)
        .map(|bit| match names.iter().find(|(b, _)| *b == bit) {
            Some((_, name)) => (*name).to_string(),
            None => format!("bit {bit}"),
        })
        .collect()
}

/// Reads `data.len()` bytes at `offset` of a configuration space `space` into `data`; an
/// access past its end zero-fills `data` and returns false (the device counts it).
pub fn read_config(space: &[u8], offset: u64, data: &mut [u8]) -> bool {
    match offset
        .checked_add(data.len() as u64)
        .filter(|&end| end <= space.len() as u64)
    {
        Some(end) => {
            data.copy_from_slice(&space[offset as usize..end as usize]);
            true
        }
        None => {
            data.fill(0);
            false
        }
    }
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

    #[test]
    fn pieces_map_a_window_onto_segments() {
        let segs = [
            Seg {
                addr: 0x1000,
                len: 512,
            },
            Seg {
                addr: 0x5000,
                len: 1024,
            },
            Seg {
                addr: 0x9000,
                len: 512,
            },
        ];
        assert_eq!(
            pieces(&segs, 256, 1536),
            vec![
                (GuestAddress(0x1100), 0..256),
                (GuestAddress(0x5000), 256..1280),
                (GuestAddress(0x9000), 1280..1536),
            ]
        );
        assert_eq!(
            pieces(&segs, 1536, 512),
            vec![(GuestAddress(0x9000), 0..512)]
        );
        assert_eq!(pieces(&segs, 0, 0), vec![]);
    }
}
