//! Host setup for benchmarks and the raw mappings the baselines use.
//!
//! - [`HugetlbfsScratch`]: takes the pool lock, grows the pool by what a benchmark needs and
//!   mounts a temporary hugetlbfs; dropping it unmounts, removes the directory and puts the pool
//!   back (also when the benchmark fails or panics).
//! - [`BareMapping`]: an `mmap` made directly (no memvisor code), unmapped on drop.
//! - [`is_root`], [`timed`].

use super::BenchError;
use hugepages::{HugePageSize, PoolLock, PoolReservation};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Whether the process runs as root (pools, mounts and some userfaultfd uses need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Runs `f` and returns its result with the wall time it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

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
    pub fn new(size: HugePageSize, bytes: u64) -> Result<HugetlbfsScratch, BenchError> {
        Self::with_lock(size, bytes, Arc::new(hugepages::lock_pools()?))
    }

    /// As [`HugetlbfsScratch::new`], under a pool lock the caller already holds (the lock is
    /// per open file: taking it a second time in one process would wait for ever). Use this
    /// for scratch mounts of several page sizes at once.
    pub fn with_lock(
        size: HugePageSize,
        bytes: u64,
        lock: Arc<PoolLock>,
    ) -> Result<HugetlbfsScratch, BenchError> {
        let pages = bytes.div_ceil(size.bytes());
        let status = hugepages::pool_status(size)?;
        let short = pages.saturating_sub(status.available());
        let pool = if short > 0 {
            Some(PoolReservation::reserve_additional(size, short)?)
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "memvisor-bench-hugetlbfs-{size}-{}",
            std::process::id()
        ));
        let created_dir = !dir.exists();
        let mounted = match hugepages::mount(&dir, size) {
            Ok((_, mounted)) => mounted,
            Err(e) => {
                if created_dir {
                    let _ = std::fs::remove_dir(&dir);
                }
                return Err(e.into());
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
    pub fn free_pages(&self) -> Result<u64, BenchError> {
        Ok(hugepages::pool_status(self.size)?.free)
    }
}

impl Drop for HugetlbfsScratch {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = hugepages::unmount(&self.dir) {
                log::error!(
                    "bench: could not unmount the scratch hugetlbfs at {}: {e}; unmount it with `umount {}`",
                    self.dir.display(),
                    self.dir.display()
                );
                return;
            }
        }
        if self.created_dir {
            if let Err(e) = std::fs::remove_dir(&self.dir) {
                log::warn!("bench: could not remove {}: {e}", self.dir.display());
            }
        }
    }
}

/// A mapping made with a plain `mmap` (the baselines' memory), unmapped on drop.
#[derive(Debug)]
pub struct BareMapping {
    addr: *mut u8,
    len: usize,
    _file: Option<File>,
}

impl BareMapping {
    /// Private anonymous memory: `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`, as memvisor's
    /// `backend=anon`.
    pub fn anon(len: usize) -> Result<BareMapping, BenchError> {
        Self::map(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            None,
        )
    }

    /// A new unlinked file of `len` bytes in hugetlbfs directory `dir`, mapped `MAP_SHARED`, as
    /// memvisor's `backend=hugetlbfs`.
    pub fn hugetlbfs(dir: &Path, len: usize) -> Result<BareMapping, BenchError> {
        let path = dir.join(format!("bare-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(BenchError::io(
                "creating the baseline's hugetlbfs file",
                "is the scratch mount still there?",
            ))?;
        let _ = std::fs::remove_file(&path);
        file.set_len(len as u64).map_err(BenchError::io(
            "ftruncate of the baseline's hugetlbfs file",
            "the size must be a multiple of the huge page size",
        ))?;
        Self::map(len, libc::MAP_SHARED, Some(file))
    }

    fn map(len: usize, flags: i32, file: Option<File>) -> Result<BareMapping, BenchError> {
        let fd = file.as_ref().map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping placed by the kernel (addr NULL); no existing memory changes.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(BenchError::last_os(
                "mmap for a baseline",
                "is there enough memory (and, for hugetlbfs, free pool pages)?",
            ));
        }
        Ok(BareMapping {
            addr: addr.cast(),
            len,
            _file: file,
        })
    }

    /// Start address.
    pub fn addr(&self) -> *mut u8 {
        self.addr
    }

    /// Length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for BareMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this struct created; users borrowed it and are done.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Bytes of `[addr, addr+len)` resident in memory (`mincore`), counted in 4 KiB pages.
///
/// # Safety
/// `[addr, addr+len)` must be a live mapping of the caller (page aligned).
pub unsafe fn resident_bytes(addr: *mut u8, len: usize) -> Result<u64, BenchError> {
    let mut vec = vec![0u8; len.div_ceil(4096)];
    // SAFETY: the range is a live mapping (this function's contract); `vec` has one byte per
    // 4 KiB page of it.
    let rc = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
    if rc != 0 {
        return Err(BenchError::last_os("mincore", "see mincore(2)"));
    }
    Ok(vec.iter().filter(|b| **b & 1 != 0).count() as u64 * 4096)
}
