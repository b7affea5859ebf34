//! Temporary pool growth: owns [`PoolReservation`] (grow a pool, put it back on drop) and
//! [`PoolLock`], the cross-process lock that tests and benchmarks changing the global pools take
//! so they do not disturb each other.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::HugePageError;
use crate::pool::{pool_status, set_pool_size, PoolChange};
use crate::size::HugePageSize;

/// A pool grown by [`PoolReservation::reserve_additional`]; dropping it puts `nr_hugepages`
/// back to what it was (for tests and benchmarks).
///
/// Hold a [`PoolLock`] while using one if other code may change the same pool concurrently.
#[derive(Debug)]
#[must_use = "dropping the reservation shrinks the pool again"]
pub struct PoolReservation {
    change: PoolChange,
    restored: bool,
}

impl PoolReservation {
    /// Grows the pool of `size` so that at least `pages` more pages are available than now.
    ///
    /// Fails with [`HugePageError::PoolShort`] (pool left as it was) if the kernel cannot
    /// allocate that many.
    pub fn reserve_additional(size: HugePageSize, pages: u64) -> Result<Self, HugePageError> {
        let status = pool_status(size)?;
        // Growing nr_hugepages first turns surplus pages into persistent ones: skip over them
        // so that `pages` really new pages are allocated.
        let target = status.total + status.surplus + pages;
        let change = set_pool_size(size, target)?;
        Ok(PoolReservation {
            change,
            restored: false,
        })
    }

    /// What growing the pool did (`before` is what drop restores).
    pub fn change(&self) -> &PoolChange {
        &self.change
    }

    /// Puts the pool back now and reports errors, instead of logging them on drop.
    pub fn restore(mut self) -> Result<PoolChange, HugePageError> {
        self.restored = true;
        set_pool_size(self.change.size, self.change.before)
    }
}

impl Drop for PoolReservation {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        if let Err(e) = set_pool_size(self.change.size, self.change.before) {
            log::error!("could not restore the {} pool: {e}", self.change.size);
        }
    }
}

/// An exclusive lock serializing code that changes the host's huge page pools (held until
/// dropped). Works across processes and across threads of one process.
#[derive(Debug)]
pub struct PoolLock {
    _lock: Flock<File>,
}

/// Where [`lock_pools`] keeps its lock file.
pub fn pool_lock_path() -> PathBuf {
    let dir = if Path::new("/run/lock").is_dir() {
        Path::new("/run/lock")
    } else {
        Path::new("/tmp")
    };
    dir.join("memvisor-hugepages.lock")
}

/// Takes the pool lock, waiting for other holders (tests, benchmarks, other processes).
pub fn lock_pools() -> Result<PoolLock, HugePageError> {
    let path = pool_lock_path();
    // flock works on a read-only descriptor, so users other than the file's creator can lock.
    let file = File::open(&path)
        .or_else(|_| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        })
        .map_err(|e| HugePageError::Fs {
            op: "open".into(),
            path: path.clone(),
            errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            hint: "check that the directory exists and is writable",
        })?;
    let lock =
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| HugePageError::Fs {
            op: "flock".into(),
            path,
            errno,
            hint: "another process may hold it; retry",
        })?;
    Ok(PoolLock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn lock_excludes_other_holders() {
        let held = lock_pools().unwrap();
        let got = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let _second = lock_pools().unwrap();
                got.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !got.load(Ordering::SeqCst),
                "second lock taken while the first was held"
            );
            drop(held);
        });
        assert!(got.load(Ordering::SeqCst));
    }
}
