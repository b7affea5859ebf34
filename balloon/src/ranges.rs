//! Page frame numbers and guest-physical ranges.
//!
//! This module owns turning the PFN lists of inflate/deflate buffers into the fewest
//! guest-physical ranges (sort, dedup, merge consecutive frames), and splitting those ranges into
//! the parts that are guest RAM and the parts that are not, so the backend is only ever called
//! on RAM.

use vm_memory::{GuestAddress, GuestMemory, Permissions};

use crate::backend::MemoryBackend;

/// `VIRTIO_BALLOON_PFN_SHIFT`: PFNs in the balloon protocol are in 4 KiB units.
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
/// Size of a balloon page (4 KiB).
pub const BALLOON_PAGE_SIZE: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;

/// A run of consecutive 4 KiB page frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfnRange {
    /// First page frame number.
    pub start_pfn: u64,
    /// Number of page frames (at least 1).
    pub pages: u64,
}

impl PfnRange {
    /// Guest-physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.start_pfn << VIRTIO_BALLOON_PFN_SHIFT
    }

    /// Length in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.pages << VIRTIO_BALLOON_PFN_SHIFT
    }
}

/// Sorts and deduplicates `pfns` and merges consecutive frames into ranges (Firecracker calls
/// this `compact_page_frame_numbers`). Returns the ranges and how many duplicates were dropped.
pub fn compact_pfns(pfns: &mut [u32]) -> (Vec<PfnRange>, u64) {
    pfns.sort_unstable();
    let mut ranges: Vec<PfnRange> = Vec::new();
    let mut duplicates = 0u64;
    let mut prev: Option<u32> = None;
    for &pfn in pfns.iter() {
        if prev == Some(pfn) {
            duplicates += 1;
            continue;
        }
        prev = Some(pfn);
        match ranges.last_mut() {
            Some(r) if r.start_pfn + r.pages == u64::from(pfn) => r.pages += 1,
            _ => ranges.push(PfnRange {
                start_pfn: u64::from(pfn),
                pages: 1,
            }),
        }
    }
    (ranges, duplicates)
}

/// Sorts `ranges` and joins those that follow each other exactly when the backend says their
/// union is RAM, so that a batch of buffers (Linux and the built-in guest hand over runs of
/// consecutive frames, 256 per buffer) costs one backend call per run instead of one per
/// buffer. Overlapping ranges stay apart: every page is still discarded as often as the driver
/// named it, and the counters keep adding up.
pub(crate) fn merge_adjacent(
    mut ranges: Vec<PfnRange>,
    backend: &dyn MemoryBackend,
) -> Vec<PfnRange> {
    ranges.sort_unstable_by_key(|r| r.start_pfn);
    let mut out: Vec<PfnRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last)
                if last.start_pfn + last.pages == r.start_pfn
                    && backend.is_ram(last.gpa(), last.len_bytes() + r.len_bytes()) =>
            {
                last.pages += r.pages
            }
            _ => out.push(r),
        }
    }
    out
}

/// Result of splitting ranges into RAM and non-RAM parts.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct RamSplit {
    /// Ranges that are guest memory and RAM according to the backend.
    pub ram: Vec<PfnRange>,
    /// Pages that are not backed by guest memory at all.
    pub invalid_pages: u64,
    /// Pages inside guest memory that the backend says are not RAM (holes, device memory).
    pub non_ram_pages: u64,
}

/// Whether `[gpa, gpa + len)` is entirely backed by guest memory.
fn in_guest_memory<M: GuestMemory>(mem: &M, gpa: u64, len: usize) -> bool {
    mem.check_range(GuestAddress(gpa), len, Permissions::Read)
}

fn is_guest_ram<M: GuestMemory>(mem: &M, backend: &dyn MemoryBackend, gpa: u64, len: u64) -> bool {
    usize::try_from(len).is_ok_and(|l| in_guest_memory(mem, gpa, l)) && backend.is_ram(gpa, len)
}

/// Keeps the parts of `ranges` that are guest RAM. Whole ranges are checked first; only ranges
/// that fail are examined page by page (bounded by the per-chain PFN cap).
pub(crate) fn split_ram<M: GuestMemory>(
    ranges: &[PfnRange],
    mem: &M,
    backend: &dyn MemoryBackend,
) -> RamSplit {
    let mut out = RamSplit::default();
    for r in ranges {
        if is_guest_ram(mem, backend, r.gpa(), r.len_bytes()) {
            out.ram.push(*r);
            continue;
        }
        for pfn in r.start_pfn..r.start_pfn + r.pages {
            let gpa = pfn << VIRTIO_BALLOON_PFN_SHIFT;
            if !in_guest_memory(mem, gpa, BALLOON_PAGE_SIZE as usize) {
                out.invalid_pages += 1;
            } else if !backend.is_ram(gpa, BALLOON_PAGE_SIZE) {
                out.non_ram_pages += 1;
            } else {
                match out.ram.last_mut() {
                    Some(last) if last.start_pfn + last.pages == pfn => last.pages += 1,
                    _ => out.ram.push(PfnRange {
                        start_pfn: pfn,
                        pages: 1,
                    }),
                }
            }
        }
    }
    out
}

/// Whether a byte range `[gpa, gpa + len)` (e.g. a reported free page range) is usable: 4 KiB
/// aligned, non-empty, inside guest memory and RAM. Returns the reason if not.
pub(crate) fn check_byte_range<M: GuestMemory>(
    gpa: u64,
    len: u64,
    mem: &M,
    backend: &dyn MemoryBackend,
) -> Result<(), RangeRejection> {
    if len == 0 {
        return Err(RangeRejection::Empty);
    }
    if gpa % BALLOON_PAGE_SIZE != 0 || len % BALLOON_PAGE_SIZE != 0 {
        return Err(RangeRejection::Misaligned);
    }
    let in_mem = gpa.checked_add(len).is_some()
        && usize::try_from(len).is_ok_and(|l| in_guest_memory(mem, gpa, l));
    if !in_mem {
        return Err(RangeRejection::OutsideMemory);
    }
    if !backend.is_ram(gpa, len) {
        return Err(RangeRejection::NotRam);
    }
    Ok(())
}

/// Why a byte range was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeRejection {
    /// Zero bytes long.
    Empty,
    /// Not 4 KiB aligned in address or length.
    Misaligned,
    /// Not (entirely) backed by guest memory.
    OutsideMemory,
    /// Inside guest memory but not RAM according to the backend.
    NotRam,
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    struct Ram(Vec<(u64, u64)>);
    impl MemoryBackend for Ram {
        fn is_ram(&self, gpa: u64, len: u64) -> bool {
            self.0
                .iter()
                .any(|&(s, l)| gpa >= s && gpa.checked_add(len).is_some_and(|e| e <= s + l))
        }
        fn discard(&self, _: u64, _: u64) -> Result<u64, String> {
            unreachable!()
        }
        fn reclaim(&self, _: u64, _: u64) -> Result<(), String> {
            unreachable!()
        }
    }

    fn r(start_pfn: u64, pages: u64) -> PfnRange {
        PfnRange { start_pfn, pages }
    }

    #[test]
    fn adjacent_ranges_of_a_batch_merge_overlapping_ones_do_not() {
        // Two RAM regions meeting at page 300: a union across them is not one RAM range.
        let ram = Ram(vec![(0, 300 * 4096), (300 * 4096, 1 << 30)]);
        // Buffers handed over top-down, as the guest takes pages below its balloon, and two
        // that overlap.
        let batch = vec![
            r(300, 100),
            r(200, 100),
            r(100, 100),
            r(50, 10),
            r(1000, 1),
            r(55, 2),
        ];
        let merged = merge_adjacent(batch, &ram);
        assert_eq!(
            merged,
            [r(50, 10), r(55, 2), r(100, 200), r(300, 100), r(1000, 1)]
        );
        assert_eq!(merged.iter().map(|r| r.pages).sum::<u64>(), 313);
    }

    #[test]
    fn compact_merges_sorts_and_dedups() {
        let mut pfns = [9, 3, 4, 4, 5, 1, 10, 8, 3, u32::MAX, u32::MAX - 1];
        let (ranges, dups) = compact_pfns(&mut pfns);
        assert_eq!(
            ranges,
            vec![r(1, 1), r(3, 3), r(8, 3), r(u64::from(u32::MAX) - 1, 2)]
        );
        assert_eq!(dups, 2);
        assert_eq!(compact_pfns(&mut []), (vec![], 0));
        assert_eq!(ranges[1].gpa(), 0x3000);
        assert_eq!(ranges[1].len_bytes(), 0x3000);
    }

    #[test]
    fn split_ram_cuts_out_holes_and_outside_pages() {
        // Guest memory 0..64K; RAM is 0..16K and 32K..64K (16K..32K is a hole).
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let ram = Ram(vec![(0, 0x4000), (0x8000, 0x8000)]);
        let split = split_ram(&[r(2, 8), r(15, 3)], &mem, &ram);
        assert_eq!(split.ram, vec![r(2, 2), r(8, 2), r(15, 1)]);
        assert_eq!(split.non_ram_pages, 4);
        assert_eq!(split.invalid_pages, 2);
    }

    #[test]
    fn byte_range_checks() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let ram = Ram(vec![(0, 0x4000), (0x8000, 0x8000)]);
        assert_eq!(check_byte_range(0x8000, 0x8000, &mem, &ram), Ok(()));
        assert_eq!(
            check_byte_range(0x8000, 0, &mem, &ram),
            Err(RangeRejection::Empty)
        );
        assert_eq!(
            check_byte_range(0x8001, 0x1000, &mem, &ram),
            Err(RangeRejection::Misaligned)
        );
        assert_eq!(
            check_byte_range(0x2000, 0x4000, &mem, &ram),
            Err(RangeRejection::NotRam)
        );
        assert_eq!(
            check_byte_range(0xf000, 0x2000, &mem, &ram),
            Err(RangeRejection::OutsideMemory)
        );
        assert_eq!(
            check_byte_range(u64::MAX - 0xfff, 0x2000, &mem, &ram),
            Err(RangeRejection::OutsideMemory)
        );
    }
}
