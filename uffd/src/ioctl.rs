//! Thin wrappers over UFFDIO_COPY, UFFDIO_ZEROPAGE and UFFDIO_WAKE that report exactly how many
//! bytes were installed.
//!
//! The `userfaultfd` crate's `copy`/`zeropage` lose that count on `EAGAIN` (a partial install
//! and "mm is changing, retry" both come back as `EAGAIN`), which the handler needs to tell
//! apart, so these three ioctls are issued directly. Structure layouts follow
//! `include/uapi/linux/userfaultfd.h`.

use nix::errno::Errno;
use std::os::fd::RawFd;

const UFFDIO: u8 = 0xAA;
const UFFDIO_WAKE_NR: u8 = 0x02;
const UFFDIO_COPY_NR: u8 = 0x03;
const UFFDIO_ZEROPAGE_NR: u8 = 0x04;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;

/// `struct uffdio_range`.
#[repr(C)]
pub(crate) struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
pub(crate) struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
pub(crate) struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

nix::ioctl_read!(raw_wake, UFFDIO, UFFDIO_WAKE_NR, UffdioRange);
nix::ioctl_readwrite!(raw_copy, UFFDIO, UFFDIO_COPY_NR, UffdioCopy);
nix::ioctl_readwrite!(raw_zeropage, UFFDIO, UFFDIO_ZEROPAGE_NR, UffdioZeropage);

/// Result of one install ioctl.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Install {
    /// All `len` bytes were installed.
    Done,
    /// The first `n` bytes (n > 0, page multiple) were installed; the next page then failed.
    Partial(usize),
    /// Nothing was installed because of this errno (`EEXIST`: first page already present;
    /// `EAGAIN`: the address space is changing, retry after reading pending events;
    /// `ENOENT`/`ESRCH`: the range or the process is gone).
    Failed(Errno),
}

fn outcome(ret: nix::Result<i32>, field: i64, len: usize) -> Install {
    match ret {
        Ok(_) => Install::Done,
        Err(errno) => match usize::try_from(field) {
            Ok(n) if n > 0 && n < len => Install::Partial(n),
            Ok(n) if n >= len => Install::Done,
            _ => Install::Failed(errno),
        },
    }
}

/// UFFDIO_COPY of `len` bytes from `src` to `dst` without waking waiters.
///
/// # Safety
/// `fd` must be a userfaultfd; `src` must be readable for `len` bytes; `dst..dst+len` must lie in
/// a range registered with `fd` (the kernel checks this and fails with `ENOENT` otherwise).
pub(crate) unsafe fn copy(fd: RawFd, dst: usize, src: *const u8, len: usize) -> Install {
    let mut arg = UffdioCopy {
        dst: dst as u64,
        src: src as u64,
        len: len as u64,
        mode: UFFDIO_COPY_MODE_DONTWAKE,
        copy: 0,
    };
    // SAFETY: `arg` is a valid, exclusively borrowed `struct uffdio_copy` for the call; the
    // caller guarantees the source buffer and the destination range as documented above.
    let ret = unsafe { raw_copy(fd, &mut arg) };
    outcome(ret, arg.copy, len)
}

/// UFFDIO_ZEROPAGE of `len` bytes at `dst` without waking waiters.
///
/// # Safety
/// `fd` must be a userfaultfd and `dst..dst+len` must lie in a range registered with it.
pub(crate) unsafe fn zeropage(fd: RawFd, dst: usize, len: usize) -> Install {
    let mut arg = UffdioZeropage {
        range: UffdioRange {
            start: dst as u64,
            len: len as u64,
        },
        mode: UFFDIO_ZEROPAGE_MODE_DONTWAKE,
        zeropage: 0,
    };
    // SAFETY: `arg` is a valid, exclusively borrowed `struct uffdio_zeropage` for the call; the
    // kernel only writes zero pages into the registered destination range.
    let ret = unsafe { raw_zeropage(fd, &mut arg) };
    outcome(ret, arg.zeropage, len)
}

/// UFFDIO_WAKE: wakes the threads waiting on faults in `start..start+len`.
pub(crate) fn wake(fd: RawFd, start: usize, len: usize) -> nix::Result<()> {
    let mut arg = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: `arg` is a valid `struct uffdio_range`; waking touches no memory of ours.
    unsafe { raw_wake(fd, &mut arg) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_uapi_header() {
        assert_eq!(std::mem::size_of::<UffdioRange>(), 16);
        assert_eq!(std::mem::size_of::<UffdioCopy>(), 40);
        assert_eq!(std::mem::size_of::<UffdioZeropage>(), 32);
    }

    #[test]
    fn outcome_decoding() {
        assert_eq!(outcome(Ok(0), 4096, 4096), Install::Done);
        assert_eq!(
            outcome(Err(Errno::EAGAIN), 8192, 16384),
            Install::Partial(8192)
        );
        assert_eq!(
            outcome(Err(Errno::EAGAIN), -(Errno::EAGAIN as i64), 4096),
            Install::Failed(Errno::EAGAIN)
        );
        assert_eq!(
            outcome(Err(Errno::EEXIST), -(Errno::EEXIST as i64), 4096),
            Install::Failed(Errno::EEXIST)
        );
        assert_eq!(
            outcome(Err(Errno::ENOENT), 0, 4096),
            Install::Failed(Errno::ENOENT)
        );
    }
}
