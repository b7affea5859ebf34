//! Where the disk's bytes live.
//!
//! This module owns the [`DiskBackend`] trait (the only way the device reaches the image), the
//! raw image file [`RawImage`] and the in-memory disk [`MemDisk`] (tests, fuzzing).
//!
//! [`RawImage`] does positioned I/O on the file (`pread`/`pwrite` through
//! `std::os::unix::fs::FileExt`), `fdatasync` for flushes, and `fallocate` for discard
//! (`PUNCH_HOLE | KEEP_SIZE`: the blocks go back to the host file system, the guest reads
//! zeros there) and write-zeroes (`ZERO_RANGE | KEEP_SIZE`, or a hole when the guest allows
//! unmapping). These are I/O calls on the image file, not on guest memory: guest RAM stays the
//! memory module's. With `O_DIRECT` the page cache is bypassed; the device then presents 4 KiB
//! blocks so that every request is block-aligned, and moves data through its own 4 KiB-aligned
//! bounce buffer. The image is locked with `flock` (exclusive, or shared when read-only) so two
//! VMs cannot write one image.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags, FlockArg};
use std::os::fd::AsRawFd;

use crate::SECTOR_SIZE;

/// Block size the device presents with `O_DIRECT` (and the alignment of its I/O then).
pub const DIRECT_BLOCK_SIZE: u64 = 4096;

/// The image as the device sees it. Offsets and lengths are always inside [`DiskBackend::size`]
/// (the device checks every request first); with [`DiskBackend::block_size`] above 512, reads
/// and writes are whole, aligned blocks from a buffer aligned to it.
pub trait DiskBackend: Send {
    /// Usable size in bytes (a multiple of [`DiskBackend::block_size`]).
    fn size(&self) -> u64;
    /// The logical block size the device presents (512, or 4096 with `O_DIRECT`).
    fn block_size(&self) -> u64 {
        SECTOR_SIZE
    }
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes completed writes durable.
    fn flush(&mut self) -> io::Result<()>;
    /// The guest no longer needs the range: give its storage back if the host can. Returns
    /// whether it could (`false`: the host file system cannot punch holes; discard is a hint).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool>;
    /// The range reads as zeros from now on; `unmap` allows a hole.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// Why an image cannot be used. Each message names the image and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file cannot be opened.
    #[error("disk image {path}: cannot open it{mode}: {source}; check the path and its permissions", mode = if *read_only { " read-only" } else { " for reading and writing" })]
    Open {
        /// The image.
        path: PathBuf,
        /// Opened read-only.
        read_only: bool,
        /// The error.
        source: io::Error,
    },
    /// `O_DIRECT` was refused (e.g. tmpfs).
    #[error("disk image {path}: the file system refuses O_DIRECT ({source}); put the image on a disk file system or drop direct=on")]
    Direct {
        /// The image.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Not a regular file.
    #[error("disk image {path}: not a regular file; give a raw image file (e.g. made with `truncate -s 64M disk.img` or `mkfs.ext4`)")]
    NotAFile {
        /// The image.
        path: PathBuf,
    },
    /// Smaller than one block.
    #[error("disk image {path}: {size} bytes is smaller than one {block}-byte block; grow it (e.g. `truncate -s 64M {path}`)")]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The block size.
        block: u64,
    },
    /// Another process holds the image's lock.
    #[error("disk image {path}: another process (another VM?) is using it ({lock} lock held); stop it, or give each VM its own image (readonly=on images can be shared)", lock = if *read_only { "an exclusive" } else { "a" })]
    Locked {
        /// The image.
        path: PathBuf,
        /// This open was read-only (so the other holder has it exclusively).
        read_only: bool,
    },
    /// Reading the file's metadata or locking it failed.
    #[error("disk image {path}: {what}: {source}")]
    Io {
        /// The image.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// A raw image file.
#[derive(Debug)]
pub struct RawImage {
    file: File,
    path: PathBuf,
    size: u64,
    direct: bool,
    /// A block of zeros, block-aligned, for write-zeroes where the host cannot `ZERO_RANGE`.
    zeros: AlignedBuf,
}

impl RawImage {
    /// Opens `path` (read-only or read-write, with `O_DIRECT` when `direct`) and locks it.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, ImageError> {
        let mut o = OpenOptions::new();
        o.read(true).write(!read_only);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o.open(path).map_err(|source| {
            if direct && source.raw_os_error() == Some(libc::EINVAL) {
                ImageError::Direct {
                    path: path.into(),
                    source,
                }
            } else {
                ImageError::Open {
                    path: path.into(),
                    read_only,
                    source,
                }
            }
        })?;
        let io_err = |what, source| ImageError::Io {
            path: path.into(),
            what,
            source,
        };
        let meta = file
            .metadata()
            .map_err(|e| io_err("reading its metadata", e))?;
        if !meta.file_type().is_file() {
            return Err(ImageError::NotAFile { path: path.into() });
        }
        let block = if direct {
            DIRECT_BLOCK_SIZE
        } else {
            SECTOR_SIZE
        };
        let size = meta.len() / block * block;
        if size == 0 {
            return Err(ImageError::TooSmall {
                path: path.into(),
                size: meta.len(),
                block,
            });
        }
        if size != meta.len() {
            log::warn!(
                "disk image {}: {} bytes past the last whole {block}-byte block are not visible to the guest",
                path.display(),
                meta.len() - size
            );
        }
        let arg = if read_only {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        // The lock lives as long as the descriptor and goes with its `close`: nix's `Flock`
        // guard would `flock(LOCK_UN)` on drop, a call the seccomp filter of the thread that
        // drops a VM (memvisor run's main thread) does not allow and that `close` makes
        // unnecessary.
        #[allow(deprecated)]
        nix::fcntl::flock(file.as_raw_fd(), arg).map_err(|e| {
            if e == Errno::EWOULDBLOCK {
                ImageError::Locked {
                    path: path.into(),
                    read_only,
                }
            } else {
                io_err("locking it", e.into())
            }
        })?;
        Ok(RawImage {
            file,
            path: path.into(),
            size,
            direct,
            zeros: AlignedBuf::new(64 << 10),
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the image was opened with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    fn falloc(&self, flags: FallocateFlags, offset: u64, len: u64) -> Result<(), Errno> {
        // Offsets and lengths are inside the image (the device checked), which is a file
        // whose size fits `off_t`.
        fallocate(&self.file, flags, offset as i64, len as i64)
    }
}

impl DiskBackend for RawImage {
    fn size(&self) -> u64 {
        self.size
    }

    fn block_size(&self) -> u64 {
        if self.direct {
            DIRECT_BLOCK_SIZE
        } else {
            SECTOR_SIZE
        }
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match self.falloc(flags, offset, len) {
            Ok(()) => Ok(true),
            Err(Errno::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let flags = if unmap {
            FallocateFlags::FALLOC_FL_PUNCH_HOLE
        } else {
            FallocateFlags::FALLOC_FL_ZERO_RANGE
        } | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match self.falloc(flags, offset, len) {
            Ok(()) => return Ok(()),
            Err(Errno::EOPNOTSUPP) => {}
            Err(e) => return Err(e.into()),
        }
        // The file system cannot: write zeros.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(self.zeros.len() as u64) as usize;
            let zeros = &self.zeros.as_slice()[..n];
            self.file.write_all_at(zeros, offset + done)?;
            done += n as u64;
        }
        Ok(())
    }
}

/// A zeroed byte buffer whose start is aligned to [`DIRECT_BLOCK_SIZE`] (what `O_DIRECT`
/// needs), made without `unsafe` by over-allocating and starting at the aligned offset.
#[derive(Debug)]
pub struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes (a multiple of [`DIRECT_BLOCK_SIZE`]).
    pub fn new(len: usize) -> Self {
        let align = DIRECT_BLOCK_SIZE as usize;
        let bytes = vec![0u8; len + align];
        let start = bytes.as_ptr().align_offset(align);
        assert!(start < align, "a u8 pointer can always be aligned");
        AlignedBuf { bytes, start, len }
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    /// The aligned bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// A disk in memory (tests, fuzzing). It fails the caller (panics) if the device ever asks
/// for bytes outside it, so a test or fuzz run catches such a bug at once.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    /// The disk's bytes.
    pub data: Vec<u8>,
    /// Block size to present.
    pub block: u64,
    /// Flushes seen.
    pub flushes: u64,
    /// Discarded ranges, in order.
    pub discards: Vec<(u64, u64)>,
    /// Write-zeroes ranges, in order, with their `unmap`.
    pub zeroed: Vec<(u64, u64, bool)>,
    /// Fail every read, write and flush (a dying host disk).
    pub fail_io: bool,
    /// The "host" cannot punch holes: discards are accepted but do nothing.
    pub no_punch: bool,
}

impl MemDisk {
    /// A zeroed disk of `size` bytes with 512-byte blocks.
    pub fn new(size: u64) -> Self {
        MemDisk {
            data: vec![0; size as usize],
            block: SECTOR_SIZE,
            ..Default::default()
        }
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let end = offset.checked_add(len).expect("range overflows");
        assert!(
            end <= self.data.len() as u64,
            "device asked for [{offset:#x}, {end:#x}) of a {}-byte disk",
            self.data.len()
        );
        if self.block > SECTOR_SIZE {
            assert!(
                offset % self.block == 0 && len % self.block == 0,
                "unaligned direct I/O"
            );
        }
        offset as usize..end as usize
    }

    fn check_fail(&self) -> io::Result<()> {
        if self.fail_io {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            Ok(())
        }
    }
}

impl DiskBackend for MemDisk {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn block_size(&self) -> u64 {
        self.block
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64);
        self.check_fail()?;
        buf.copy_from_slice(&self.data[r]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let r = self.range(offset, buf.len() as u64);
        self.check_fail()?;
        self.data[r].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.check_fail()?;
        self.flushes += 1;
        Ok(())
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<bool> {
        let r = self.range(offset, len);
        if self.no_punch {
            return Ok(false);
        }
        self.data[r].fill(0);
        self.discards.push((offset, len));
        Ok(true)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let r = self.range(offset, len);
        self.check_fail()?;
        self.data[r].fill(0);
        self.zeroed.push((offset, len, unmap));
        Ok(())
    }
}
