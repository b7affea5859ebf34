//! Guest memory statistics (virtio 1.2 §5.5.6.3).
//!
//! This module owns the wire format of the stats buffer (packed little-endian
//! `{tag: u16, val: u64}` entries, 10 bytes each) and its decoding into [`BalloonStats`].
//! Unknown tags are skipped and a trailing partial entry is ignored; both are reported to the
//! caller for counting.

use std::time::SystemTime;

use serde::Serialize;

/// Size of one packed `virtio_balloon_stat` entry.
pub const STAT_ENTRY_SIZE: usize = 10;
/// Number of tags this device understands (0..=15).
pub const NUM_KNOWN_TAGS: u16 = 16;

/// The latest statistics the guest posted. A field is `None` if the guest did not send that tag.
/// Memory amounts are in bytes, as the driver reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BalloonStats {
    /// Tag 0: amount of memory swapped in (bytes).
    pub swap_in: Option<u64>,
    /// Tag 1: amount of memory swapped out (bytes).
    pub swap_out: Option<u64>,
    /// Tag 2: number of major page faults.
    pub major_faults: Option<u64>,
    /// Tag 3: number of minor page faults.
    pub minor_faults: Option<u64>,
    /// Tag 4: free memory (bytes).
    pub free_memory: Option<u64>,
    /// Tag 5: total memory (bytes).
    pub total_memory: Option<u64>,
    /// Tag 6: available memory (bytes).
    pub available_memory: Option<u64>,
    /// Tag 7: disk caches (bytes).
    pub disk_caches: Option<u64>,
    /// Tag 8: successful hugetlb page allocations.
    pub hugetlb_allocations: Option<u64>,
    /// Tag 9: failed hugetlb page allocations.
    pub hugetlb_failures: Option<u64>,
    /// Tag 10: OOM killer invocations.
    pub oom_kills: Option<u64>,
    /// Tag 11: allocation stalls.
    pub alloc_stalls: Option<u64>,
    /// Tag 12: pages scanned asynchronously (kswapd).
    pub async_scans: Option<u64>,
    /// Tag 13: pages scanned directly.
    pub direct_scans: Option<u64>,
    /// Tag 14: pages reclaimed asynchronously.
    pub async_reclaims: Option<u64>,
    /// Tag 15: pages reclaimed directly.
    pub direct_reclaims: Option<u64>,
    /// When the device received this buffer.
    pub received_at: SystemTime,
}

impl BalloonStats {
    /// Empty statistics received at `received_at`.
    pub fn empty(received_at: SystemTime) -> Self {
        BalloonStats {
            swap_in: None,
            swap_out: None,
            major_faults: None,
            minor_faults: None,
            free_memory: None,
            total_memory: None,
            available_memory: None,
            disk_caches: None,
            hugetlb_allocations: None,
            hugetlb_failures: None,
            oom_kills: None,
            alloc_stalls: None,
            async_scans: None,
            direct_scans: None,
            async_reclaims: None,
            direct_reclaims: None,
            received_at,
        }
    }

    /// The field for `tag`, or `None` for an unknown tag.
    fn slot(&mut self, tag: u16) -> Option<&mut Option<u64>> {
        Some(match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            10 => &mut self.oom_kills,
            11 => &mut self.alloc_stalls,
            12 => &mut self.async_scans,
            13 => &mut self.direct_scans,
            14 => &mut self.async_reclaims,
            15 => &mut self.direct_reclaims,
            _ => return None,
        })
    }
}

/// Outcome of decoding one stats buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ParsedStats {
    pub stats: BalloonStats,
    /// Entries with a tag this device does not know.
    pub unknown_tags: u64,
    /// Whether the buffer ended with a partial entry.
    pub truncated: bool,
}

/// Decodes a stats buffer. A tag sent twice keeps its last value.
pub(crate) fn parse_stats(buf: &[u8], received_at: SystemTime) -> ParsedStats {
    let mut stats = BalloonStats::empty(received_at);
    let mut unknown_tags = 0;
    let mut entries = buf.chunks_exact(STAT_ENTRY_SIZE);
    for e in entries.by_ref() {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut val = [0u8; 8];
        val.copy_from_slice(&e[2..10]);
        match stats.slot(tag) {
            Some(slot) => *slot = Some(u64::from_le_bytes(val)),
            None => unknown_tags += 1,
        }
    }
    ParsedStats {
        stats,
        unknown_tags,
        truncated: !entries.remainder().is_empty(),
    }
}

/// Encodes entries in the wire format (for tests and tools that play the driver).
pub fn encode_stats(entries: &[(u16, u64)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * STAT_ENTRY_SIZE);
    for (tag, val) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&val.to_le_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_known_tags_map_to_fields() {
        let entries: Vec<(u16, u64)> = (0..NUM_KNOWN_TAGS).map(|t| (t, 100 + t as u64)).collect();
        let p = parse_stats(&encode_stats(&entries), SystemTime::UNIX_EPOCH);
        let s = &p.stats;
        let got = [
            s.swap_in,
            s.swap_out,
            s.major_faults,
            s.minor_faults,
            s.free_memory,
            s.total_memory,
            s.available_memory,
            s.disk_caches,
            s.hugetlb_allocations,
            s.hugetlb_failures,
            s.oom_kills,
            s.alloc_stalls,
            s.async_scans,
            s.direct_scans,
            s.async_reclaims,
            s.direct_reclaims,
        ];
        for (i, v) in got.iter().enumerate() {
            assert_eq!(*v, Some(100 + i as u64), "tag {i}");
        }
        assert_eq!((p.unknown_tags, p.truncated), (0, false));
    }

    #[test]
    fn unknown_duplicate_and_truncated() {
        let mut buf = encode_stats(&[(4, 1), (16, 9), (0xffff, 9), (4, 2), (5, 3)]);
        buf.extend_from_slice(&[6, 0, 1, 2, 3]); // partial entry
        let p = parse_stats(&buf, SystemTime::UNIX_EPOCH);
        assert_eq!(p.stats.free_memory, Some(2));
        assert_eq!(p.stats.total_memory, Some(3));
        assert_eq!(p.stats.available_memory, None);
        assert_eq!((p.unknown_tags, p.truncated), (2, true));
        let p = parse_stats(&[], SystemTime::UNIX_EPOCH);
        assert_eq!(p.stats, BalloonStats::empty(SystemTime::UNIX_EPOCH));
        assert_eq!((p.unknown_tags, p.truncated), (0, false));
    }
}
