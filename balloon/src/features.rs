//! Feature bits and queue layout.
//!
//! This module owns the virtio-balloon feature bits the device offers (virtio 1.2 §5.5.3) and the
//! mapping from negotiated features to queue indices ([`QueueLayout`]). The Linux driver numbers
//! only the queues that exist, so `reporting_vq` is queue 2 without `STATS_VQ` and queue 3 with
//! it; the layout therefore always derives from the *negotiated* features.
//!
//! Ring features: only `VIRTIO_F_VERSION_1` is offered. `VIRTIO_F_INDIRECT_DESC` is not: the
//! Linux driver posts one buffer per inflate/deflate/stats chain and direct chains of at most 32
//! buffers for page reporting, so indirect tables would add a guest-controlled table walk for no
//! gain (Firecracker's balloon and Cloud Hypervisor's do not offer it either). A chain that uses
//! one anyway is a driver error, refused and counted ([`crate::BalloonCounters`]
//! `indirect_not_negotiated`). `VIRTIO_F_EVENT_IDX` is not offered either: the device never
//! reads `used_event` nor writes `avail_event`.

use serde::Serialize;

/// `VIRTIO_F_VERSION_1`: the device is a modern (non-legacy) virtio device.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// `VIRTIO_F_INDIRECT_DESC` (Linux: `VIRTIO_RING_F_INDIRECT_DESC`): never offered by this
/// device; chains that use indirect tables are refused.
pub const VIRTIO_F_INDIRECT_DESC: u32 = 28;
/// `VIRTIO_F_EVENT_IDX` (Linux: `VIRTIO_RING_F_EVENT_IDX`): never offered by this device.
pub const VIRTIO_F_EVENT_IDX: u32 = 29;
/// `VIRTIO_BALLOON_F_MUST_TELL_HOST` (never offered by this device).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// `VIRTIO_BALLOON_F_STATS_VQ`: a memory statistics virtqueue is present.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may deflate the balloon under memory pressure.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// `VIRTIO_BALLOON_F_FREE_PAGE_HINT` (never offered by this device).
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// `VIRTIO_BALLOON_F_PAGE_POISON` (never offered by this device).
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING` (Linux: `VIRTIO_BALLOON_F_REPORTING`): a page
/// reporting virtqueue is present.
pub const VIRTIO_BALLOON_F_FREE_PAGE_REPORTING: u32 = 5;

/// Maximum size of each queue the device exposes. 1024 lets a driver keep 1 GiB of 256-PFN
/// inflate buffers in flight, so a large inflate is two batches instead of five or more
/// (`memvisor bench balloon`: discard calls per GiB 5 -> 2, time between them 2.8-4.5 ms ->
/// 0.9-1.1 ms). Linux's driver posts one buffer at a time whatever the size; a larger queue
/// costs the device nothing (the rings are guest memory), and a chain walk is still bounded
/// by the queue size.
pub const QUEUE_MAX_SIZE: u16 = 1024;

/// Returns the feature mask for a feature bit number.
pub const fn feature_mask(bit: u32) -> u64 {
    1u64 << bit
}

/// Every feature bit this crate names, with its name as users see it (without the `VIRTIO_F_` or
/// `VIRTIO_BALLOON_F_` prefix).
pub const FEATURE_NAMES: [(u32, &str); 9] = [
    (VIRTIO_BALLOON_F_MUST_TELL_HOST, "MUST_TELL_HOST"),
    (VIRTIO_BALLOON_F_STATS_VQ, "STATS_VQ"),
    (VIRTIO_BALLOON_F_DEFLATE_ON_OOM, "DEFLATE_ON_OOM"),
    (VIRTIO_BALLOON_F_FREE_PAGE_HINT, "FREE_PAGE_HINT"),
    (VIRTIO_BALLOON_F_PAGE_POISON, "PAGE_POISON"),
    (VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, "FREE_PAGE_REPORTING"),
    (VIRTIO_F_INDIRECT_DESC, "INDIRECT_DESC"),
    (VIRTIO_F_EVENT_IDX, "EVENT_IDX"),
    (VIRTIO_F_VERSION_1, "VERSION_1"),
];

/// The names of the bits set in `features`, lowest bit first; a bit without a name in
/// [`FEATURE_NAMES`] as `bit N`.
pub fn feature_names(features: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| features & feature_mask(*bit) != 0)
        .map(|bit| match FEATURE_NAMES.iter().find(|(b, _)| *b == bit) {
            Some((_, name)) => (*name).to_string(),
            None => format!("bit {bit}"),
        })
        .collect()
}

/// Builds the feature set the device offers for the given options.
pub(crate) fn avail_features(stats: bool, deflate_on_oom: bool, page_reporting: bool) -> u64 {
    let mut f = feature_mask(VIRTIO_F_VERSION_1);
    if stats {
        f |= feature_mask(VIRTIO_BALLOON_F_STATS_VQ);
    }
    if deflate_on_oom {
        f |= feature_mask(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
    }
    if page_reporting {
        f |= feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
    }
    f
}

/// Which queue index serves which purpose for a given feature set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct QueueLayout {
    /// Index of `inflateq` (always 0).
    pub inflate: u16,
    /// Index of `deflateq` (always 1).
    pub deflate: u16,
    /// Index of `statsq`, present if `VIRTIO_BALLOON_F_STATS_VQ` was negotiated.
    pub stats: Option<u16>,
    /// Index of `reporting_vq`, present if `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING` was negotiated.
    pub reporting: Option<u16>,
}

/// The role of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// `inflateq`: the driver hands pages to the host.
    Inflate,
    /// `deflateq`: the driver takes pages back.
    Deflate,
    /// `statsq`: the driver posts memory statistics.
    Stats,
    /// `reporting_vq`: the driver reports free page ranges.
    Reporting,
}

impl QueueLayout {
    /// Layout for a set of (negotiated) features. Queues of absent features are skipped, as the
    /// Linux driver numbers queues consecutively.
    pub fn for_features(features: u64) -> Self {
        let mut next = 2u16;
        let stats = if features & feature_mask(VIRTIO_BALLOON_F_STATS_VQ) != 0 {
            next += 1;
            Some(next - 1)
        } else {
            None
        };
        let reporting = if features & feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING) != 0 {
            Some(next)
        } else {
            None
        };
        QueueLayout {
            inflate: 0,
            deflate: 1,
            stats,
            reporting,
        }
    }

    /// Number of queues in this layout.
    pub fn count(&self) -> u16 {
        2 + u16::from(self.stats.is_some()) + u16::from(self.reporting.is_some())
    }

    /// The role of queue `index`, or `None` if the layout has no such queue.
    pub fn kind(&self, index: u16) -> Option<QueueKind> {
        if index == self.inflate {
            Some(QueueKind::Inflate)
        } else if index == self.deflate {
            Some(QueueKind::Deflate)
        } else if Some(index) == self.stats {
            Some(QueueKind::Stats)
        } else if Some(index) == self.reporting {
            Some(QueueKind::Reporting)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_config;

    #[test]
    fn constants_match_bindings() {
        assert_eq!(VIRTIO_F_VERSION_1, virtio_config::VIRTIO_F_VERSION_1);
        assert_eq!(
            VIRTIO_F_INDIRECT_DESC,
            virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC
        );
        assert_eq!(
            VIRTIO_F_EVENT_IDX,
            virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
        );
    }

    #[test]
    fn layout_skips_absent_queues() {
        let s = feature_mask(VIRTIO_BALLOON_F_STATS_VQ);
        let r = feature_mask(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
        let l = QueueLayout::for_features(0);
        assert_eq!((l.stats, l.reporting, l.count()), (None, None, 2));
        let l = QueueLayout::for_features(s);
        assert_eq!((l.stats, l.reporting, l.count()), (Some(2), None, 3));
        let l = QueueLayout::for_features(r);
        assert_eq!((l.stats, l.reporting, l.count()), (None, Some(2), 3));
        assert_eq!(l.kind(2), Some(QueueKind::Reporting));
        let l = QueueLayout::for_features(s | r);
        assert_eq!((l.stats, l.reporting, l.count()), (Some(2), Some(3), 4));
        assert_eq!(l.kind(0), Some(QueueKind::Inflate));
        assert_eq!(l.kind(1), Some(QueueKind::Deflate));
        assert_eq!(l.kind(2), Some(QueueKind::Stats));
        assert_eq!(l.kind(3), Some(QueueKind::Reporting));
        assert_eq!(l.kind(4), None);
    }

    #[test]
    fn feature_names_lowest_bit_first_unknown_by_number() {
        let offered = avail_features(true, true, true);
        assert_eq!(
            feature_names(offered),
            [
                "STATS_VQ",
                "DEFLATE_ON_OOM",
                "FREE_PAGE_REPORTING",
                "VERSION_1"
            ]
        );
        assert_eq!(feature_names(1 << 40 | 1), ["MUST_TELL_HOST", "bit 40"]);
        assert_eq!(
            feature_names(1 << 28 | 1 << 29),
            ["INDIRECT_DESC", "EVENT_IDX"]
        );
        assert!(feature_names(0).is_empty());
    }
}
