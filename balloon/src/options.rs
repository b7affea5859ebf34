//! User-facing device options.
//!
//! This module owns [`BalloonOptions`], the configuration the VMM's API/CLI deserializes.

use serde::{Deserialize, Serialize};

/// Options of the balloon device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalloonOptions {
    /// Initial balloon target in MiB (how much memory the host asks the guest to give up).
    pub amount_mib: u32,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`: the guest may deflate under memory pressure.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds; 0 disables the stats queue.
    pub stats_polling_interval_s: u16,
    /// Offer `VIRTIO_BALLOON_F_FREE_PAGE_REPORTING`.
    pub free_page_reporting: bool,
}
