//! Huge page pools: owns reading and changing the per-size pools under
//! `/sys/kernel/mm/hugepages/hugepages-<N>kB/` and the pre-flight check that a VM's memory fits
//! before anything is mapped. RAII reservations and the cross-process pool lock live in
//! [`crate::reserve`].

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::HugePageError;
use crate::size::HugePageSize;

/// One pool's counters, as the kernel reports them in sysfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStatus {
    /// The page size.
    pub size: HugePageSize,
    /// Persistent pool size (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use by anyone (`free_hugepages`).
    pub free: u64,
    /// Free pages already promised to existing mappings (`resv_hugepages`).
    pub reserved: u64,
    /// Pages beyond the persistent pool (`surplus_hugepages`).
    pub surplus: u64,
}

impl PoolStatus {
    /// Pages a new mapping can still get: free - reserved.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

impl fmt::Display for PoolStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: total {}, free {}, reserved {}, surplus {} (available {})",
            self.size,
            self.total,
            self.free,
            self.reserved,
            self.surplus,
            self.available()
        )
    }
}

/// Parses the content of a sysfs counter file (a decimal number and a newline).
pub fn parse_counter(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

fn read_counter(path: &Path) -> Result<u64, HugePageError> {
    let text = std::fs::read_to_string(path).map_err(|e| HugePageError::read(path, e))?;
    parse_counter(&text).ok_or_else(|| {
        let msg = format!("expected a number, found {text:?}");
        HugePageError::read(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
        )
    })
}

pub(crate) fn require_pool(size: HugePageSize) -> Result<(), HugePageError> {
    if size.sysfs_dir().is_dir() {
        Ok(())
    } else {
        Err(HugePageError::UnsupportedSize { size })
    }
}

/// Reads the pool of `size` from sysfs.
pub fn pool_status(size: HugePageSize) -> Result<PoolStatus, HugePageError> {
    require_pool(size)?;
    let dir = size.sysfs_dir();
    Ok(PoolStatus {
        size,
        total: read_counter(&dir.join("nr_hugepages"))?,
        free: read_counter(&dir.join("free_hugepages"))?,
        reserved: read_counter(&dir.join("resv_hugepages"))?,
        surplus: read_counter(&dir.join("surplus_hugepages"))?,
    })
}

/// The CLI command that grows the pool of `size` by `additional` pages.
pub fn reserve_command(size: HugePageSize, additional: u64) -> String {
    format!("memvisor hugepages reserve {additional} --size {size}")
}

/// Pages of `size` needed to back `bytes` (rounded up, as the kernel rounds mappings).
pub fn pages_for(size: HugePageSize, bytes: u64) -> u64 {
    bytes.div_ceil(size.bytes())
}

/// [`check_pool`] against a given pool status (pure; for callers that already read it).
pub fn check_status(status: &PoolStatus, bytes: u64, what: &str) -> Result<(), HugePageError> {
    let needed = pages_for(status.size, bytes);
    if needed <= status.available() {
        return Ok(());
    }
    Err(HugePageError::PoolTooSmall {
        what: what.to_string(),
        size: status.size,
        needed,
        available: status.available(),
        free: status.free,
        reserved: status.reserved,
        total: status.total,
    })
}

/// Fails fast, before anything is mapped, when `bytes` needs more pages of `size` than are
/// available (free - reserved).
///
/// `what` names the requester (e.g. "memory region 0") and goes into the message, together with
/// the pages needed, available and in the pool, and the exact command that grows the pool.
pub fn check_pool(size: HugePageSize, bytes: u64, what: &str) -> Result<(), HugePageError> {
    check_status(&pool_status(size)?, bytes, what)
}

/// What a pool resize did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PoolChange {
    /// The page size.
    pub size: HugePageSize,
    /// `nr_hugepages` before.
    pub before: u64,
    /// `nr_hugepages` after (read back from the kernel).
    pub after: u64,
    /// `nr_hugepages` asked for.
    pub requested: u64,
}

impl PoolChange {
    /// Whether `nr_hugepages` changed.
    pub fn changed(&self) -> bool {
        self.before != self.after
    }
}

impl fmt::Display for PoolChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} pool: {} -> {} pages (requested {})",
            self.size, self.before, self.after, self.requested
        )
    }
}

/// The resize logic of [`set_pool_size`] over an abstract `nr_hugepages` (so it can be tested
/// against a fake kernel): write, read back, and restore if the kernel gave fewer than asked.
pub fn apply_pool_size(
    size: HugePageSize,
    pages: u64,
    read: impl Fn() -> Result<u64, HugePageError>,
    write: impl Fn(u64) -> Result<(), HugePageError>,
) -> Result<PoolChange, HugePageError> {
    let before = read()?;
    if before == pages {
        return Ok(PoolChange {
            size,
            before,
            after: before,
            requested: pages,
        });
    }
    write(pages)?;
    let after = read()?;
    if after < pages && pages > before {
        if let Err(e) = write(before) {
            log::error!("could not restore the {size} pool to {before} pages: {e}");
        }
        return Err(HugePageError::PoolShort {
            size,
            before,
            requested: pages,
            got: after,
        });
    }
    Ok(PoolChange {
        size,
        before,
        after,
        requested: pages,
    })
}

/// Sets the persistent pool size (`nr_hugepages`) of `size` to `pages` and reads it back.
///
/// If the kernel could not allocate all of them (memory too fragmented or too small), the pool is
/// put back to its previous size and [`HugePageError::PoolShort`] says how many it could get.
/// Shrinking below the pages in use is allowed: the kernel turns those into surplus pages and
/// frees them once they are no longer used.
pub fn set_pool_size(size: HugePageSize, pages: u64) -> Result<PoolChange, HugePageError> {
    require_pool(size)?;
    let path = size.nr_hugepages_path();
    let change = apply_pool_size(
        size,
        pages,
        || read_counter(&path),
        |value| {
            std::fs::write(&path, format!("{value}\n")).map_err(|source| HugePageError::Write {
                path: path.clone(),
                value,
                source,
            })
        },
    )?;
    log::info!("{change}");
    Ok(change)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn status(total: u64, free: u64, reserved: u64) -> PoolStatus {
        PoolStatus {
            size: HugePageSize::Size2M,
            total,
            free,
            reserved,
            surplus: 0,
        }
    }

    #[test]
    fn available_and_display() {
        assert_eq!(status(10, 8, 3).available(), 5);
        assert_eq!(status(10, 2, 3).available(), 0);
        assert_eq!(
            status(10, 8, 3).to_string(),
            "2M: total 10, free 8, reserved 3, surplus 0 (available 5)"
        );
        assert_eq!(parse_counter("512\n"), Some(512));
        assert_eq!(parse_counter("x\n"), None);
    }

    #[test]
    fn check_status_numbers_and_fix() {
        let st = status(1024, 1000, 0);
        check_status(&st, 1000 * (2 << 20), "memory region 0").unwrap();
        check_status(&st, 0, "memory region 0").unwrap();
        // 1512 pages needed (the last one partly), 1000 available: 512 short.
        let err = check_status(&st, 1511 * (2 << 20) + 1, "memory region 0").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            HugePageError::PoolTooSmall {
                needed: 1512,
                available: 1000,
                ..
            }
        ));
        for part in [
            "memory region 0 needs 1512 2M huge pages",
            "only 1000 are available (1000 free - 0 reserved; 1024 in the pool)",
            "`memvisor hugepages reserve 512 --size 2M`",
            "`echo 1536 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
        let err = check_status(&status(4, 4, 3), 2 << 20 << 1, "region 1").unwrap_err();
        assert!(err
            .to_string()
            .contains("only 1 are available (4 free - 3 reserved"));
    }

    /// A fake `nr_hugepages` that can hold at most `cap` pages.
    fn fake_kernel(start: u64, cap: u64) -> (Cell<u64>, u64) {
        (Cell::new(start), cap)
    }

    #[test]
    fn apply_grows_shrinks_and_restores_when_short() {
        let (nr, cap) = fake_kernel(4, 100);
        let read = || Ok(nr.get());
        let write = |v: u64| {
            nr.set(v.min(cap));
            Ok(())
        };
        let c = apply_pool_size(HugePageSize::Size2M, 50, read, write).unwrap();
        assert_eq!((c.before, c.after, c.requested), (4, 50, 50));
        assert_eq!(c.to_string(), "2M pool: 4 -> 50 pages (requested 50)");
        let c = apply_pool_size(HugePageSize::Size2M, 10, read, write).unwrap();
        assert_eq!((c.before, c.after), (50, 10));
        let c = apply_pool_size(HugePageSize::Size2M, 10, read, write).unwrap();
        assert!(!c.changed());
        let err = apply_pool_size(HugePageSize::Size2M, 500, read, write).unwrap_err();
        assert!(matches!(
            err,
            HugePageError::PoolShort {
                before: 10,
                requested: 500,
                got: 100,
                ..
            }
        ));
        assert!(err.to_string().contains("put back to 10"), "{err}");
        assert_eq!(nr.get(), 10, "restored");
    }
}
