//! The answers of the balloon endpoints, typed.
//!
//! `GET /balloon` answers [`BalloonConfig`](super::BalloonConfig) (Firecracker's `Balloon`) and
//! `GET /balloon/statistics` [`BalloonStatistics`] (Firecracker's `BalloonStats`), field for
//! field, so Firecracker clients read them unchanged. What memvisor tells beyond that lives in
//! its own endpoint, `GET /balloon/device` ([`BalloonDeviceInfo`]), which Firecracker clients
//! never ask for. The server serializes these types and clients (`memvisor balance`, the CLI)
//! deserialize them, so both sides name the fields in one place; `docs/api/openapi.yaml`
//! describes them and `tests/api_spec/` checks real answers against it.

use balloon::{BalloonCounters, BalloonStats};
use serde::{Deserialize, Serialize};

/// `GET /balloon/statistics`: Firecracker's `BalloonStats`, the balloon's size and the guest's
/// latest statistics. A guest statistic is present only once the guest has sent it (never
/// `null`); before the first statistics arrive the answer holds only the four sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatistics {
    /// Pages (4 KiB) the balloon aims to hold.
    pub target_pages: u32,
    /// Pages the guest has handed to the balloon.
    pub actual_pages: u32,
    /// MiB the balloon aims to hold (rounded down).
    pub target_mib: u32,
    /// MiB the guest has handed to the balloon (rounded down).
    pub actual_mib: u32,
    /// The guest's statistics, under Firecracker's names (`swap_in`, ..., `oom_kill`, ...).
    #[serde(flatten)]
    pub guest: BalloonStats,
}

/// The virtio transport a device sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// virtio-mmio (the built-in guest).
    VirtioMmio,
    /// virtio-pci (Linux guests).
    VirtioPci,
}

/// `GET /balloon/device`: memvisor's extras about the balloon device, for memvisor's own tools
/// (`memvisor balance` reads the sizes and the age of the statistics here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BalloonDeviceInfo {
    /// The transport the device sits on.
    pub transport: Transport,
    /// Whether the guest's driver has brought the device up (DRIVER_OK, until a reset).
    pub activated: bool,
    /// Feature bits the device offers, by name (`VERSION_1`, `STATS_VQ`, ...).
    pub features_offered: Vec<String>,
    /// Feature bits the driver acknowledged, by name.
    pub features_acked: Vec<String>,
    /// Pages (4 KiB) the balloon aims to hold.
    pub target_pages: u32,
    /// Pages the guest has handed to the balloon.
    pub actual_pages: u32,
    /// MiB the balloon aims to hold (rounded down).
    pub target_mib: u32,
    /// MiB the guest has handed to the balloon (rounded down).
    pub actual_mib: u32,
    /// Bytes the host really got back so far (on huge pages only whole huge pages count).
    pub released_bytes: u64,
    /// When the latest guest statistics arrived, in seconds since the Unix epoch; absent before
    /// the first statistics since activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_received_at_unix_s: Option<f64>,
    /// Pages the balloon held when those statistics arrived: the guest's figures (its free
    /// memory) do not yet show what the balloon took or gave since (`actual_pages` minus this).
    /// Absent before the first statistics since activation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_pages_at_stats: Option<u32>,
    /// The same in MiB (rounded down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_mib_at_stats: Option<u32>,
    /// What the device did and which malformed guest input it rejected.
    pub counters: BalloonCounters,
}

impl BalloonDeviceInfo {
    /// Seconds between the latest statistics and `now` (0 when they seem to come from the
    /// future); `None` without statistics.
    pub fn stats_age_s(&self, now: std::time::SystemTime) -> Option<f64> {
        let at = self.stats_received_at_unix_s?;
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Some((now - at).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statistics_are_firecrackers_balloon_stats() {
        let mut s = BalloonStatistics {
            target_pages: 512,
            actual_pages: 256,
            target_mib: 2,
            actual_mib: 1,
            guest: BalloonStats::default(),
        };
        // No guest statistics yet: the four sizes only.
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"target_pages": 512, "actual_pages": 256, "target_mib": 2, "actual_mib": 1})
        );
        s.guest.oom_kill = Some(0);
        s.guest.free_memory = Some(4096);
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"target_pages":512,"actual_pages":256,"target_mib":2,"actual_mib":1,"free_memory":4096,"oom_kill":0}"#
        );
        assert_eq!(serde_json::from_str::<BalloonStatistics>(&text).unwrap(), s);
    }

    #[test]
    fn device_info_leaves_out_stats_time_until_there_are_stats() {
        let mut d = BalloonDeviceInfo {
            transport: Transport::VirtioPci,
            activated: false,
            features_offered: vec!["VERSION_1".into()],
            features_acked: vec![],
            target_pages: 0,
            actual_pages: 0,
            target_mib: 0,
            actual_mib: 0,
            released_bytes: 0,
            stats_received_at_unix_s: None,
            actual_pages_at_stats: None,
            actual_mib_at_stats: None,
            counters: BalloonCounters::default(),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["transport"], "virtio-pci");
        assert!(v.get("stats_received_at_unix_s").is_none(), "{v}");
        assert!(v.get("actual_pages_at_stats").is_none(), "{v}");
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(100);
        assert_eq!(d.stats_age_s(now), None);
        d.stats_received_at_unix_s = Some(98.5);
        d.actual_pages_at_stats = Some(512);
        d.actual_mib_at_stats = Some(2);
        assert_eq!(d.stats_age_s(now), Some(1.5));
        d.stats_received_at_unix_s = Some(101.0);
        assert_eq!(d.stats_age_s(now), Some(0.0));
        let back: BalloonDeviceInfo = serde_json::from_value(serde_json::to_value(&d).unwrap())
            .expect("clients read what the server writes");
        assert_eq!(back, d);
    }
}
