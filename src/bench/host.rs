//! Host setup for benchmarks and the raw mappings the baselines use.
//!
//! - [`HugetlbfsScratch`] (the `hugepages` crate's): takes the pool lock, grows the pool by what
//!   a benchmark needs and mounts a temporary hugetlbfs; dropping it unmounts, removes the
//!   directory and puts the pool back (also when the benchmark fails or panics).
//! - [`BareMapping`]: an `mmap` made directly (no memvisor code), unmapped on drop.
//! - [`is_root`], [`timed`].

use super::BenchError;
pub use hugepages::HugetlbfsScratch;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
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
