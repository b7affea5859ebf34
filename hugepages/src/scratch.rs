//! A scratch hugetlbfs for tests and benchmarks ([`HugetlbfsScratch`]): under the pool lock, the
//! pool grown by what is missing and a temporary mount; dropping it unmounts, removes the
//! directory and puts the pool back (also when the caller fails or panics).

use crate::mounts::{mount, unmount_or_detach};
use crate::pool::pool_status;
use crate::reserve::{lock_pools, PoolLock, PoolReservation};
use crate::{HugePageError, HugePageSize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A temporary hugetlbfs mount with enough free pages in its pool; restored on drop.
#[derive(Debug)]
pub struct HugetlbfsScratch {
    dir: PathBuf,
    size: HugePageSize,
    mounted: bool,
    created_dir: bool,
    // Dropped after the unmount in `Drop::drop`, in this order: pool back, then the lock.
    _pool: Option<PoolReservation>,
    _lock: Arc<PoolLock>,
}

impl HugetlbfsScratch {
    /// Locks the pools, makes sure `bytes` of `size` pages are available (growing the pool by
    /// what is missing) and mounts hugetlbfs on a fresh directory under the temp dir.
    pub fn new(size: HugePageSize, bytes: u64) -> Result<HugetlbfsScratch, HugePageError> {
        Self::with_lock(size, bytes, Arc::new(lock_pools()?))
    }

    /// As [`HugetlbfsScratch::new`], under a pool lock the caller already holds (the lock is
    /// per open file: taking it a second time in one process would wait for ever). Use this
    /// for scratch mounts of several page sizes at once.
    pub fn with_lock(
        size: HugePageSize,
        bytes: u64,
        lock: Arc<PoolLock>,
    ) -> Result<HugetlbfsScratch, HugePageError> {
        let pages = bytes.div_ceil(size.bytes());
        let status = pool_status(size)?;
        let short = pages.saturating_sub(status.available());
        let pool = if short > 0 {
            Some(PoolReservation::reserve_additional(size, short)?)
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "memvisor-hugetlbfs-scratch-{size}-{}",
            std::process::id()
        ));
        let created_dir = !dir.exists();
        let mounted = match mount(&dir, size) {
            Ok((_, mounted)) => mounted,
            Err(e) => {
                if created_dir {
                    let _ = std::fs::remove_dir(&dir);
                }
                return Err(e);
            }
        };
        Ok(HugetlbfsScratch {
            dir,
            size,
            mounted,
            created_dir,
            _pool: pool,
            _lock: lock,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The page size of the mount.
    pub fn page_size(&self) -> HugePageSize {
        self.size
    }

    /// Free pages in the pool now.
    pub fn free_pages(&self) -> Result<u64, HugePageError> {
        Ok(pool_status(self.size)?.free)
    }
}

impl Drop for HugetlbfsScratch {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount_or_detach(&self.dir) {
                log::error!(
                    "could not unmount the scratch hugetlbfs at {}: {e}; unmount it with `umount {}`",
                    self.dir.display(),
                    self.dir.display()
                );
                return;
            }
        }
        if self.created_dir {
            if let Err(e) = std::fs::remove_dir(&self.dir) {
                log::warn!("could not remove {}: {e}", self.dir.display());
            }
        }
    }
}
