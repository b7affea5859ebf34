//! Guest memory statistics (virtio 1.2 §5.5.6.3).
//!
//! This module owns the wire format of the stats buffer (packed little-endian
//! `{tag: u16, val: u64}` entries, 10 bytes each) and its decoding into [`BalloonStats`].
//! Unknown tags are skipped and a trailing partial entry is ignored; both are reported to the
//! caller for counting.
//!
//! [`BalloonStats`] serializes as the guest part of Firecracker's `BalloonStats` (its field names,
//! e.g. `oom_kill`, not virtio's `OOM_KILLS`): a statistic the guest did not send is absent from
//! the JSON, never `null`.

use serde::{Deserialize, Serialize};

/// Size of one packed `virtio_balloon_stat` entry.
pub const STAT_ENTRY_SIZE: usize = 10;
/// Number of tags this device understands (0..=15).
pub const NUM_KNOWN_TAGS: u16 = 16;

/// The latest statistics the guest posted. A field is `None` if the guest did not send that tag
/// (and then absent when serialized). Memory amounts are in bytes, as the driver reports them.
/// Field names are Firecracker's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Tag 0: amount of memory swapped in (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Tag 1: amount of memory swapped out (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Tag 2: number of major page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Tag 3: number of minor page faults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Tag 4: free memory (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Tag 5: total memory (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Tag 6: available memory (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Tag 7: disk caches (bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Tag 8: successful hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Tag 9: failed hugetlb page allocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// Tag 10: OOM killer invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kill: Option<u64>,
    /// Tag 11: allocation stalls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stall: Option<u64>,
    /// Tag 12: pages scanned asynchronously (kswapd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scan: Option<u64>,
    /// Tag 13: pages scanned directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scan: Option<u64>,
    /// Tag 14: pages reclaimed asynchronously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaim: Option<u64>,
    /// Tag 15: pages reclaimed directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaim: Option<u64>,
}

impl BalloonStats {
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
            10 => &mut self.oom_kill,
            11 => &mut self.alloc_stall,
            12 => &mut self.async_scan,
            13 => &mut self.direct_scan,
            14 => &mut self.async_reclaim,
            15 => &mut self.direct_reclaim,
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
pub(crate) fn parse_stats(buf: &[u8]) -> ParsedStats {
    let mut stats = BalloonStats::default();
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
        let p = parse_stats(&encode_stats(&entries));
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
            s.oom_kill,
            s.alloc_stall,
            s.async_scan,
            s.direct_scan,
            s.async_reclaim,
            s.direct_reclaim,
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
        let p = parse_stats(&buf);
        assert_eq!(p.stats.free_memory, Some(2));
        assert_eq!(p.stats.total_memory, Some(3));
        assert_eq!(p.stats.available_memory, None);
        assert_eq!((p.unknown_tags, p.truncated), (2, true));
        let p = parse_stats(&[]);
        assert_eq!(p.stats, BalloonStats::default());
        assert_eq!((p.unknown_tags, p.truncated), (0, false));
    }

    /// Firecracker's names of the guest statistics, in tag order (its `BalloonStats`).
    const FIRECRACKER_NAMES: [&str; 16] = [
        "swap_in",
        "swap_out",
        "major_faults",
        "minor_faults",
        "free_memory",
        "total_memory",
        "available_memory",
        "disk_caches",
        "hugetlb_allocations",
        "hugetlb_failures",
        "oom_kill",
        "alloc_stall",
        "async_scan",
        "direct_scan",
        "async_reclaim",
        "direct_reclaim",
    ];

    #[test]
    fn every_tag_serializes_under_firecrackers_name() {
        for tag in 0..NUM_KNOWN_TAGS {
            let p = parse_stats(&encode_stats(&[(tag, 7)]));
            let v = serde_json::to_value(&p.stats).unwrap();
            let want = serde_json::json!({ FIRECRACKER_NAMES[tag as usize]: 7 });
            assert_eq!(v, want, "tag {tag}");
        }
    }

    #[test]
    fn a_tag_not_sent_is_absent_never_null() {
        let v = serde_json::to_value(BalloonStats::default()).unwrap();
        assert_eq!(v, serde_json::json!({}));
        let p = parse_stats(&encode_stats(&[(4, 1 << 30), (5, 2 << 30)]));
        let text = serde_json::to_string(&p.stats).unwrap();
        assert_eq!(
            text,
            r#"{"free_memory":1073741824,"total_memory":2147483648}"#
        );
        assert!(!text.contains("null"));
        // A client reads back what it got; absent fields are `None`.
        let back: BalloonStats = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p.stats);
    }
}
