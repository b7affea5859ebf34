//! Plain data types: the `run` state, settings, counters and changes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::KsmError;

/// The value of `/sys/kernel/mm/ksm/run`.
///
/// Displays (and serializes) as `stop`, `merge` or `unmerge`; parses from
/// those names or from the sysfs numbers `0`, `1`, `2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KsmRun {
    /// `0`: ksmd sleeps; merged pages stay merged.
    #[default]
    Stop,
    /// `1`: ksmd scans and merges.
    Merge,
    /// `2`: unmerge every merged page and stop.
    Unmerge,
}

impl KsmRun {
    /// The number written to / read from sysfs.
    pub fn sysfs_value(self) -> u8 {
        match self {
            KsmRun::Stop => 0,
            KsmRun::Merge => 1,
            KsmRun::Unmerge => 2,
        }
    }

    /// The readable name (`stop`, `merge`, `unmerge`).
    pub fn name(self) -> &'static str {
        match self {
            KsmRun::Stop => "stop",
            KsmRun::Merge => "merge",
            KsmRun::Unmerge => "unmerge",
        }
    }
}

impl fmt::Display for KsmRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KsmRun {
    type Err = KsmError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "stop" => Ok(KsmRun::Stop),
            "1" | "merge" => Ok(KsmRun::Merge),
            "2" | "unmerge" => Ok(KsmRun::Unmerge),
            _ => Err(KsmError::InvalidValue {
                knob: "run".into(),
                value: s.to_string(),
                reason: "expected stop (0), merge (1) or unmerge (2)".into(),
            }),
        }
    }
}

/// The KSM knobs. `None` means "not present on this kernel" when read and
/// "leave unchanged" when applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmSettings {
    /// `run`.
    pub run: KsmRun,
    /// `pages_to_scan`: pages scanned per ksmd batch (managed by the kernel
    /// while an advisor is active).
    pub pages_to_scan: u64,
    /// `sleep_millisecs`: ksmd sleep between batches.
    pub sleep_millisecs: u64,
    /// `merge_across_nodes` (NUMA kernels only).
    pub merge_across_nodes: Option<bool>,
    /// `use_zero_pages`.
    pub use_zero_pages: Option<bool>,
    /// `max_page_sharing`.
    pub max_page_sharing: Option<u64>,
    /// The selected `advisor_mode`, e.g. `none` or `scan-time` (6.7+).
    pub advisor_mode: Option<String>,
}

impl Default for KsmSettings {
    /// The kernel's boot-time defaults for the mandatory knobs; optional knobs untouched.
    fn default() -> Self {
        KsmSettings {
            run: KsmRun::Stop,
            pages_to_scan: 100,
            sleep_millisecs: 20,
            merge_across_nodes: None,
            use_zero_pages: None,
            max_page_sharing: None,
            advisor_mode: None,
        }
    }
}

/// Global KSM counters. `None` means the kernel does not provide the counter.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KsmCounters {
    /// `pages_shared`: KSM pages in use (one per set of identical pages).
    pub pages_shared: u64,
    /// `pages_sharing`: additional mappings of KSM pages, i.e. pages saved.
    pub pages_sharing: u64,
    /// `pages_unshared`: unique pages repeatedly checked for merging.
    pub pages_unshared: u64,
    /// `pages_volatile`: pages changing too fast to be merged.
    pub pages_volatile: u64,
    /// `full_scans`: number of completed scans of all mergeable memory.
    pub full_scans: u64,
    /// `general_profit` in bytes (6.1+); may be negative.
    pub general_profit: Option<i64>,
    /// `ksm_zero_pages` (6.10+; `use_zero_pages` merges).
    pub ksm_zero_pages: Option<u64>,
    /// `stable_node_chains`.
    pub stable_node_chains: Option<u64>,
}

impl KsmCounters {
    /// Memory saved by merging: `pages_sharing * page_size`.
    pub fn bytes_saved(&self, page_size: u64) -> u64 {
        self.pages_sharing.saturating_mul(page_size)
    }
}

/// One knob changed from `before` to `after` (raw sysfs values, e.g. `run: 0 -> 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The knob's file name.
    pub knob: String,
    /// The value before the write.
    pub before: String,
    /// The value read back after the write.
    pub after: String,
}

impl Change {
    /// True when the value actually differs.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.knob, self.before, self.after)
    }
}

/// Per-process KSM statistics from `/proc/PID/ksm_stat` and
/// `/proc/PID/ksm_merging_pages`. `None` means the kernel does not report it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProcessKsmStats {
    /// `ksm_rmap_items`: pages of the process tracked by KSM.
    pub rmap_items: Option<u64>,
    /// `ksm_zero_pages`: pages merged with the zero page.
    pub zero_pages: Option<u64>,
    /// `ksm_merging_pages`: pages of the process mapped to KSM pages.
    pub merging_pages: u64,
    /// `ksm_process_profit` in bytes; may be negative.
    pub process_profit: Option<i64>,
    /// `ksm_merge_any`: the whole process is mergeable (prctl).
    pub merge_any: Option<bool>,
    /// `ksm_mergeable`: the process has any mergeable memory.
    pub mergeable: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_round_trips() {
        for run in [KsmRun::Stop, KsmRun::Merge, KsmRun::Unmerge] {
            assert_eq!(run.to_string().parse::<KsmRun>().unwrap(), run);
            assert_eq!(
                run.sysfs_value().to_string().parse::<KsmRun>().unwrap(),
                run
            );
            let json = serde_json::to_string(&run).unwrap();
            assert_eq!(json, format!("\"{run}\""));
            assert_eq!(serde_json::from_str::<KsmRun>(&json).unwrap(), run);
        }
        assert_eq!(" Merge\n".parse::<KsmRun>().unwrap(), KsmRun::Merge);
        assert!(matches!(
            "3".parse::<KsmRun>(),
            Err(KsmError::InvalidValue { .. })
        ));
    }

    #[test]
    fn change_display_and_bytes_saved() {
        let c = Change {
            knob: "run".into(),
            before: "0".into(),
            after: "1".into(),
        };
        assert_eq!(c.to_string(), "run: 0 -> 1");
        assert!(c.changed());
        let counters = KsmCounters {
            pages_sharing: 10,
            ..Default::default()
        };
        assert_eq!(counters.bytes_saved(4096), 40960);
        let big = KsmCounters {
            pages_sharing: u64::MAX,
            ..Default::default()
        };
        assert_eq!(big.bytes_saved(4096), u64::MAX);
    }

    #[test]
    fn settings_serialize() {
        let v = serde_json::to_value(KsmSettings::default()).unwrap();
        assert_eq!(v["run"], "stop");
        assert_eq!(v["pages_to_scan"], 100);
        assert!(v["advisor_mode"].is_null());
    }
}
