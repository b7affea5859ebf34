//! Huge page sizes: owns [`HugePageSize`], its parsing and printing, and the question of which
//! sizes the running kernel supports (`/sys/kernel/mm/hugepages`) and which is the default
//! (`Hugepagesize:` in `/proc/meminfo`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::HugePageError;

/// Where the kernel lists one directory per supported huge page size.
pub const SYSFS_HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

/// A huge page size memvisor can use (the x86-64 ones).
///
/// Serialized as `"2M"` / `"1G"`, like [`fmt::Display`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HugePageSize {
    /// 2 MiB pages.
    #[serde(rename = "2M")]
    Size2M,
    /// 1 GiB pages.
    #[serde(rename = "1G")]
    Size1G,
}

impl HugePageSize {
    /// Every size this crate knows, smallest first.
    pub const ALL: [HugePageSize; 2] = [HugePageSize::Size2M, HugePageSize::Size1G];

    /// The page size in bytes.
    pub fn bytes(self) -> u64 {
        self.kib() * 1024
    }

    /// The page size in KiB (as in the sysfs directory name).
    pub fn kib(self) -> u64 {
        match self {
            HugePageSize::Size2M => 2048,
            HugePageSize::Size1G => 1024 * 1024,
        }
    }

    /// The size whose page is exactly `bytes` long, if any.
    pub fn from_bytes(bytes: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.bytes() == bytes)
    }

    /// This size's pool directory, e.g. `/sys/kernel/mm/hugepages/hugepages-2048kB`.
    pub fn sysfs_dir(self) -> PathBuf {
        Path::new(SYSFS_HUGEPAGES).join(format!("hugepages-{}kB", self.kib()))
    }

    /// This size's `nr_hugepages` file (the persistent pool size).
    pub fn nr_hugepages_path(self) -> PathBuf {
        self.sysfs_dir().join("nr_hugepages")
    }
}

impl fmt::Display for HugePageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePageSize::Size2M => "2M",
            HugePageSize::Size1G => "1G",
        })
    }
}

/// Parses a size with an optional binary unit into bytes: `2M`, `2m`, `2MiB`, `2MB`, `2048K`,
/// `2048kB`, `1G`, `1GiB`, `1024M`, or a bare byte count such as `2097152`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

impl FromStr for HugePageSize {
    type Err = HugePageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_bytes(s)
            .and_then(HugePageSize::from_bytes)
            .ok_or_else(|| HugePageError::InvalidSize(s.to_string()))
    }
}

/// Parses a sysfs pool directory name such as `hugepages-2048kB` into its size in bytes.
pub fn parse_sysfs_dir_name(name: &str) -> Option<u64> {
    let kib: u64 = name
        .strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The sizes the running kernel has pools for (from `/sys/kernel/mm/hugepages`), smallest first.
///
/// Sizes this crate does not know are left out; an unreadable directory gives an empty list.
pub fn supported_sizes() -> Vec<HugePageSize> {
    let Ok(entries) = std::fs::read_dir(SYSFS_HUGEPAGES) else {
        return Vec::new();
    };
    let mut sizes: Vec<HugePageSize> = entries
        .filter_map(Result::ok)
        .filter_map(|e| parse_sysfs_dir_name(&e.file_name().to_string_lossy()))
        .filter_map(HugePageSize::from_bytes)
        .collect();
    sizes.sort();
    sizes
}

/// Parses the `Hugepagesize:` line of `/proc/meminfo` text into bytes.
pub fn parse_meminfo_hugepagesize(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        _ => None,
    }
}

/// The kernel's default huge page size (used by hugetlbfs mounts without `pagesize=`).
pub fn default_size() -> Option<HugePageSize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_hugepagesize(&meminfo).and_then(HugePageSize::from_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        for s in [
            "2M", "2m", "2MiB", "2MB", "2mb", "2048K", "2048k", "2048kB", "2097152", " 2M ",
        ] {
            assert_eq!(
                s.parse::<HugePageSize>().unwrap(),
                HugePageSize::Size2M,
                "{s}"
            );
        }
        for s in ["1G", "1g", "1GiB", "1GB", "1024M", "1048576K"] {
            assert_eq!(
                s.parse::<HugePageSize>().unwrap(),
                HugePageSize::Size1G,
                "{s}"
            );
        }
        for s in [
            "",
            "4K",
            "2",
            "M",
            "2X",
            "3M",
            "-2M",
            "2 M B",
            "99999999999999999999G",
        ] {
            let err = s.parse::<HugePageSize>().unwrap_err();
            assert!(err.to_string().contains("use 2M or 1G"), "{s}: {err}");
        }
    }

    #[test]
    fn prints_and_serializes_sizes() {
        assert_eq!(HugePageSize::Size2M.to_string(), "2M");
        assert_eq!(HugePageSize::Size1G.to_string(), "1G");
        assert_eq!(
            serde_json::to_string(&HugePageSize::Size1G).unwrap(),
            "\"1G\""
        );
        let back: HugePageSize = serde_json::from_str("\"2M\"").unwrap();
        assert_eq!(back, HugePageSize::Size2M);
        for s in HugePageSize::ALL {
            assert_eq!(s.to_string().parse::<HugePageSize>().unwrap(), s);
            assert_eq!(HugePageSize::from_bytes(s.bytes()), Some(s));
        }
    }

    #[test]
    fn sizes_and_paths() {
        assert_eq!(HugePageSize::Size2M.bytes(), 2 << 20);
        assert_eq!(HugePageSize::Size1G.kib(), 1 << 20);
        assert_eq!(HugePageSize::from_bytes(4096), None);
        assert_eq!(
            HugePageSize::Size2M.sysfs_dir(),
            PathBuf::from("/sys/kernel/mm/hugepages/hugepages-2048kB")
        );
        assert_eq!(
            HugePageSize::Size1G.nr_hugepages_path(),
            PathBuf::from("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
        );
    }

    #[test]
    fn parses_sysfs_names_and_meminfo() {
        assert_eq!(parse_sysfs_dir_name("hugepages-2048kB"), Some(2 << 20));
        assert_eq!(parse_sysfs_dir_name("hugepages-1048576kB"), Some(1 << 30));
        assert_eq!(parse_sysfs_dir_name("hugepages-64kB"), Some(64 << 10));
        assert_eq!(parse_sysfs_dir_name("hugepages-xkB"), None);
        assert_eq!(parse_sysfs_dir_name("nr_hugepages"), None);
        let meminfo = "MemTotal: 1 kB\nHugePages_Total:       0\nHugepagesize:       2048 kB\n";
        assert_eq!(parse_meminfo_hugepagesize(meminfo), Some(2 << 20));
        assert_eq!(parse_meminfo_hugepagesize("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn host_supported_sizes() {
        let sizes = supported_sizes();
        if sizes.is_empty() {
            println!("skip: no huge page pools under {SYSFS_HUGEPAGES}");
            return;
        }
        assert!(sizes.windows(2).all(|w| w[0] < w[1]));
        assert!(default_size().is_some_and(|d| sizes.contains(&d)));
    }
}
