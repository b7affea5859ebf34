//! The crate's error type. Owns the wording: every message says what happened and what to do
//! about it, usually with the exact command that fixes it.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

use crate::size::HugePageSize;

/// Everything that can go wrong with host huge pages.
#[derive(Debug, thiserror::Error)]
pub enum HugePageError {
    /// A huge page size string could not be parsed.
    #[error("`{0}` is not a huge page size memvisor supports; use 2M or 1G")]
    InvalidSize(String),

    /// The kernel has no pool for this size.
    #[error(
        "this kernel has no {size} huge page pool ({} is missing); 1G pages need CPU support \
         (pdpe1gb in /proc/cpuinfo) — use --size 2M, or check `ls /sys/kernel/mm/hugepages`",
        .size.sysfs_dir().display()
    )]
    UnsupportedSize {
        /// The size asked for.
        size: HugePageSize,
    },

    /// A sysfs/procfs file could not be read or held something unexpected.
    #[error(
        "cannot read {}: {source}; is hugetlbfs enabled in this kernel (CONFIG_HUGETLBFS) and \
         /sys and /proc mounted?",
        .path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },

    /// A sysfs file could not be written.
    #[error(
        "cannot write {value} to {}: {source}; changing huge page pools needs root — run \
         memvisor with sudo, or `echo {value} | sudo tee {}`",
        .path.display(), .path.display()
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The value written.
        value: u64,
        /// What went wrong.
        source: io::Error,
    },

    /// A memory requester needs more pages than the pool has available.
    #[error(
        "{what} needs {needed} {size} huge pages but only {available} are available ({free} free \
         - {reserved} reserved; {total} in the pool); grow the pool by {short} pages with \
         `memvisor hugepages reserve {short} --size {size}` or `echo {new_total} > {}`",
        .size.nr_hugepages_path().display(),
        short = .needed - .available,
        new_total = .total + (.needed - .available)
    )]
    PoolTooSmall {
        /// Who asked (e.g. "memory region 0").
        what: String,
        /// The page size.
        size: HugePageSize,
        /// Pages needed.
        needed: u64,
        /// Pages available (free - reserved).
        available: u64,
        /// Free pages.
        free: u64,
        /// Pages promised to existing mappings.
        reserved: u64,
        /// Persistent pool size (nr_hugepages).
        total: u64,
    },

    /// The kernel allocated fewer pages than asked; the pool was put back as it was.
    #[error(
        "the kernel could only grow the {size} pool to {got} of the {requested} pages asked for \
         (host memory is too fragmented or too small), so it was put back to {before}; free \
         memory and compact it (`sync; echo 3 > /proc/sys/vm/drop_caches; echo 1 > \
         /proc/sys/vm/compact_memory`) and retry, or reserve at boot with the kernel command \
         line `hugepagesz={size} hugepages={requested}`"
    )]
    PoolShort {
        /// The page size.
        size: HugePageSize,
        /// nr_hugepages before the attempt (and after, since it was restored).
        before: u64,
        /// Pages asked for.
        requested: u64,
        /// Pages the kernel managed to allocate.
        got: u64,
    },

    /// A path is not on a hugetlbfs mount.
    #[error(
        "{} is not on a hugetlbfs mount; mount one with \
         `memvisor hugepages mount /dev/hugepages --size 2M`",
        .path.display()
    )]
    NotHugetlbfs {
        /// The path.
        path: PathBuf,
    },

    /// A hugetlbfs mount uses a page size this crate does not know.
    #[error(
        "{} is a hugetlbfs mount with {bytes}-byte pages, which memvisor does not use; mount \
         one with `memvisor hugepages mount /dev/hugepages --size 2M`",
        .path.display()
    )]
    UnknownMountPageSize {
        /// The mount.
        path: PathBuf,
        /// Its page size.
        bytes: u64,
    },

    /// A directory is already a hugetlbfs mount of another page size.
    #[error(
        "{} is already a hugetlbfs mount with {existing} pages, not {wanted}; use another \
         directory or unmount it first (`umount {}`)",
        .path.display(), .path.display()
    )]
    MountedOtherSize {
        /// The directory.
        path: PathBuf,
        /// The page size it is mounted with.
        existing: HugePageSize,
        /// The page size asked for.
        wanted: HugePageSize,
    },

    /// A filesystem operation (mkdir, statfs, mount, umount) failed.
    #[error("{op} {} failed: {errno}; {hint}", .path.display())]
    Fs {
        /// The operation, e.g. `mount -t hugetlbfs -o pagesize=2M nodev`.
        op: String,
        /// The path it was applied to.
        path: PathBuf,
        /// The error.
        errno: Errno,
        /// What to do about it.
        hint: &'static str,
    },

    /// Transparent huge pages are not available.
    #[error(
        "cannot read {}: {source}; this kernel was built without transparent huge pages \
         (CONFIG_TRANSPARENT_HUGEPAGE), use hugetlbfs (--hugepages) instead",
        .path.display()
    )]
    Thp {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },

    /// Bad arguments to populate.
    #[error("cannot populate {len} bytes at {addr:#x} with {page_size}-byte pages: {reason}")]
    PopulateArgs {
        /// Start address.
        addr: usize,
        /// Length.
        len: usize,
        /// Page size.
        page_size: usize,
        /// What is wrong with them.
        reason: &'static str,
    },

    /// The hugetlb pool ran out while populating.
    #[error(
        "populating huge page memory ran out of {size} pages ({errno}): {populated} of {pages} \
         pages were populated and {missing} more are needed; grow the pool with `{fix}` before \
         starting the VM (`memvisor hugepages status` shows the pools)"
    )]
    PoolExhausted {
        /// The page size.
        size: HugePageSize,
        /// Pages in the range.
        pages: u64,
        /// Pages populated before it ran out.
        populated: u64,
        /// Pages still missing.
        missing: u64,
        /// The error madvise returned (EFAULT or ENOMEM).
        errno: Errno,
        /// The command that grows the pool enough.
        fix: String,
    },

    /// Populate failed for another reason.
    #[error("populating {len} bytes at {addr:#x} failed at offset {offset:#x}: {errno}; {hint}")]
    Populate {
        /// Start address.
        addr: usize,
        /// Length.
        len: usize,
        /// Offset of the failing step.
        offset: usize,
        /// The error madvise returned.
        errno: Errno,
        /// What to do about it.
        hint: &'static str,
    },

    /// A populate thread could not be started, or the caller's start hook refused to let it
    /// run.
    #[error(
        "populate thread {index} could not start: {reason}; nothing was populated by it (fewer \
         threads, e.g. prealloc-threads=1, need fewer resources)"
    )]
    PopulateThread {
        /// Which thread (0-based).
        index: usize,
        /// What failed (a failed start hook says what to do about it).
        reason: String,
    },
}

impl HugePageError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        HugePageError::Read {
            path: path.into(),
            source,
        }
    }
}
