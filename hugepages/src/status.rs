//! Host summary: owns [`HostHugePages`] and the plain-text report behind
//! `memvisor hugepages status` (pools, hugetlbfs mounts, THP settings).

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::HugePageError;
use crate::mounts::{mounts, HugetlbfsMount};
use crate::pool::{pool_status, PoolStatus};
use crate::size::{default_size, supported_sizes, HugePageSize};
use crate::thp::{thp_defrag, thp_mode, ThpDefrag, ThpMode};

/// The host's huge page state.
#[derive(Clone, Debug, Serialize)]
pub struct HostHugePages {
    /// The kernel's default huge page size.
    pub default_size: Option<HugePageSize>,
    /// One pool per supported size, smallest first.
    pub pools: Vec<PoolStatus>,
    /// hugetlbfs mounts.
    pub mounts: Vec<HugetlbfsMount>,
    /// THP mode, or `None` if the kernel has no THP.
    pub thp: Option<ThpMode>,
    /// THP defrag setting, or `None` if the kernel has no THP.
    pub thp_defrag: Option<ThpDefrag>,
}

/// Reads the host's huge page state.
pub fn host_status() -> Result<HostHugePages, HugePageError> {
    let pools = supported_sizes()
        .into_iter()
        .map(pool_status)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HostHugePages {
        default_size: default_size(),
        pools,
        mounts: mounts()?,
        thp: thp_mode().ok(),
        thp_defrag: thp_defrag().ok(),
    })
}

impl HostHugePages {
    /// The multi-line text report (see [`status_text`]).
    pub fn to_text(&self) -> String {
        let mut out = String::from("huge page pools:\n");
        if self.pools.is_empty() {
            out.push_str("  (none: this kernel has no hugetlbfs support)\n");
        }
        for pool in &self.pools {
            let default = if Some(pool.size) == self.default_size {
                " [default]"
            } else {
                ""
            };
            let _ = writeln!(out, "  {pool}{default}");
        }
        out.push_str("hugetlbfs mounts:\n");
        if self.mounts.is_empty() {
            out.push_str(
                "  (none; mount one with `memvisor hugepages mount /dev/hugepages --size 2M`)\n",
            );
        }
        for m in &self.mounts {
            let _ = writeln!(out, "  {} ({} pages)", m.path.display(), m.page_size);
        }
        let thp = match (self.thp, self.thp_defrag) {
            (Some(mode), Some(defrag)) => format!("{mode} (defrag: {defrag})"),
            (Some(mode), None) => mode.to_string(),
            _ => "not available".to_string(),
        };
        let _ = writeln!(out, "transparent huge pages: {thp}");
        out
    }
}

/// A plain-text multi-line status: each supported size's pool (total/free/reserved/surplus),
/// the hugetlbfs mounts and the THP mode. Used by `memvisor hugepages status`.
pub fn status_text() -> Result<String, HugePageError> {
    Ok(host_status()?.to_text())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn formats_text() {
        let host = HostHugePages {
            default_size: Some(HugePageSize::Size2M),
            pools: vec![PoolStatus {
                size: HugePageSize::Size2M,
                total: 4,
                free: 3,
                reserved: 1,
                surplus: 0,
            }],
            mounts: vec![HugetlbfsMount {
                path: PathBuf::from("/dev/hugepages"),
                page_size: HugePageSize::Size2M,
            }],
            thp: Some(ThpMode::Madvise),
            thp_defrag: Some(ThpDefrag::Madvise),
        };
        assert_eq!(
            host.to_text(),
            "huge page pools:\n  2M: total 4, free 3, reserved 1, surplus 0 (available 2) \
             [default]\nhugetlbfs mounts:\n  /dev/hugepages (2M pages)\n\
             transparent huge pages: madvise (defrag: madvise)\n"
        );
        let json = serde_json::to_value(&host).unwrap();
        assert_eq!(json["pools"][0]["size"], "2M");
        assert_eq!(json["thp"], "madvise");
    }

    #[test]
    fn host_text() {
        let text = status_text().unwrap();
        println!("{text}");
        assert!(text.contains("huge page pools:") && text.contains("transparent huge pages:"));
    }
}
