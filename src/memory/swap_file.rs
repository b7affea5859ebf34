//! The in-VMM swap file ([`SwapFile`]): created fresh (never an existing file), sparse, on a
//! filesystem that keeps it on disk and can punch holes; written from guest memory with
//! `pwrite`, made durable with `fdatasync` and evicted from the page cache
//! (`posix_fadvise(DONTNEED)`), so swapped-out memory really leaves host RAM; holes punched
//! where the guest discards pages; unlinked at swap-in.

use super::vmm_swap::SwapError;
use nix::sys::statfs::{fstatfs, FsType, HUGETLBFS_MAGIC, TMPFS_MAGIC};

/// `RAMFS_MAGIC` (include/uapi/linux/magic.h), which nix does not name.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest single `pwrite`/`pread`.
const IO_CHUNK: usize = 8 << 20;

/// A swap file memvisor created; see the module documentation.
#[derive(Debug)]
pub struct SwapFile {
    file: File,
    path: PathBuf,
}

impl SwapFile {
    /// Creates `path` (which must not exist) with length `len` (sparse), after checking that
    /// its filesystem keeps files on disk, can punch holes and has `needed` bytes free. On any
    /// error nothing is left behind.
    pub fn create(path: &Path, len: u64, needed: u64) -> Result<SwapFile, SwapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| {
                if source.kind() == io::ErrorKind::AlreadyExists {
                    SwapError::FileExists {
                        path: path.to_path_buf(),
                    }
                } else {
                    SwapError::Create {
                        path: path.to_path_buf(),
                        source,
                    }
                }
            })?;
        let swap = SwapFile {
            file,
            path: path.to_path_buf(),
        };
        match swap.check(len, needed) {
            Ok(()) => Ok(swap),
            Err(e) => {
                swap.remove();
                Err(e)
            }
        }
    }

    fn check(&self, len: u64, needed: u64) -> Result<(), SwapError> {
        let path = || self.path.clone();
        let fs = fstatfs(&self.file).map_err(|e| SwapError::Create {
            path: path(),
            source: e.into(),
        })?;
        let fs_type = fs.filesystem_type();
        for (magic, name) in [
            (TMPFS_MAGIC, "tmpfs"),
            (RAMFS_MAGIC, "ramfs"),
            (HUGETLBFS_MAGIC, "hugetlbfs"),
        ] {
            if fs_type == magic {
                return Err(SwapError::InMemoryFs {
                    path: path(),
                    fs: name,
                });
            }
        }
        let available = fs.blocks_available() as u64 * fs.block_size() as u64;
        if available < needed {
            return Err(SwapError::NoSpace {
                path: path(),
                needed,
                available,
            });
        }
        self.file.set_len(len).map_err(|source| SwapError::Create {
            path: path(),
            source,
        })?;
        // A balloon discard of swapped-out memory must free its file space: the filesystem
        // must punch holes (ext4, xfs, btrfs do; some do not).
        self.punch(0, 4096).map_err(|source| SwapError::NoHoles {
            path: path(),
            source,
        })
    }

    /// The path it was created at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `len` bytes of memory at `src` to file offset `offset`.
    ///
    /// # Safety
    /// `src..src+len` must be readable memory that stays mapped during the call.
    pub unsafe fn write_from(&self, src: *const u8, len: usize, offset: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        whole(len, io::ErrorKind::WriteZero, |done, n| {
            // SAFETY: the caller guarantees `src..src+len` is readable; the kernel only reads
            // it. Guest memory is read without forming a Rust reference to it.
            unsafe { libc::pwrite(fd, src.add(done).cast(), n, at(offset, done)) }
        })
    }

    /// Reads `len` bytes at file offset `offset` into memory at `dst` (holes read as zeros).
    ///
    /// # Safety
    /// `dst..dst+len` must be writable memory that stays mapped during the call.
    pub unsafe fn read_into(&self, dst: *mut u8, len: usize, offset: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        whole(len, io::ErrorKind::UnexpectedEof, |done, n| {
            // SAFETY: the caller guarantees `dst..dst+len` is writable.
            unsafe { libc::pread(fd, dst.add(done).cast(), n, at(offset, done)) }
        })
    }

    /// Makes what was written durable (`fdatasync`), then drops it from the page cache, so
    /// the host really gets the memory back.
    pub fn sync_and_evict(&self) -> io::Result<()> {
        self.file.sync_data()?;
        // SAFETY: advice on our own descriptor; no memory is involved.
        let rc =
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            log::debug!(
                "vmm-swap: posix_fadvise(DONTNEED) on {}: {}",
                self.path.display(),
                io::Error::from_raw_os_error(rc)
            );
        }
        Ok(())
    }

    /// Frees the file space of `[offset, offset+len)`.
    pub fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        )
        .map_err(io::Error::from)
    }

    /// Disk space the file takes now (its allocated blocks).
    pub fn allocated_bytes(&self) -> u64 {
        self.file.metadata().map(|m| m.blocks() * 512).unwrap_or(0)
    }

    /// Frees all of its space and removes it (dropping it removes it too).
    pub fn remove(self) {
        if let Err(e) = self.file.set_len(0) {
            log::warn!("vmm-swap: truncating {}: {e}", self.path.display());
        }
    }
}

/// File offset `offset + done`.
fn at(offset: u64, done: usize) -> libc::off_t {
    (offset + done as u64) as libc::off_t
}

/// Runs `io(done, n)` (a `pread`/`pwrite` of `n` bytes at `done` into the transfer) until `len`
/// bytes went through, at most [`IO_CHUNK`] at a time; retries `EINTR`; a 0 is `zero`.
fn whole(
    len: usize,
    zero: io::ErrorKind,
    mut io: impl FnMut(usize, usize) -> isize,
) -> io::Result<()> {
    let mut done = 0;
    while done < len {
        match io(done, (len - done).min(IO_CHUNK)) {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::from(zero)),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

impl Drop for SwapFile {
    /// The file means nothing without this VM: it goes with it.
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("vmm-swap: removing {}: {e}", self.path.display()),
        }
    }
}
