//! The baseline of `memvisor bench uffd`: the smallest userfaultfd page server that does the
//! same job as memvisor's handler, written against the kernel ABI with no memvisor or `uffd`
//! crate code. It creates a userfaultfd (`userfaultfd(2)`, kernel faults allowed like memvisor's),
//! does the `UFFDIO_API` handshake with no features, registers one private anonymous mapping
//! for missing faults and runs one thread that polls, reads fault messages and answers each
//! with `UFFDIO_ZEROPAGE` or `pread` + `UFFDIO_COPY` of the 4 KiB page (both wake the faulting
//! thread). Nothing else: no statistics, no event bookkeeping.
//!
//! Structure layouts and ioctl numbers follow `include/uapi/linux/userfaultfd.h`.

use super::host::BareMapping;
use super::BenchError;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::thread::JoinHandle;

const PAGE: usize = 4096;
const UFFD_API: u64 = 0xAA;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// Fault messages read per `read(2)`.
const BATCH: usize = 64;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg` with the `pagefault` member of its union.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    reserved1: u8,
    reserved2: u16,
    reserved3: u32,
    flags: u64,
    address: u64,
    ptid: u32,
    pad: u32,
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

mod sys {
    use super::{UffdioApi, UffdioCopy, UffdioRange, UffdioRegister, UffdioZeropage};
    nix::ioctl_readwrite!(api, 0xAA, 0x3F, UffdioApi);
    nix::ioctl_readwrite!(register, 0xAA, 0x00, UffdioRegister);
    nix::ioctl_read!(wake, 0xAA, 0x02, UffdioRange);
    nix::ioctl_readwrite!(copy, 0xAA, 0x03, UffdioCopy);
    nix::ioctl_readwrite!(zeropage, 0xAA, 0x04, UffdioZeropage);
}

fn uffd_err(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> BenchError {
    move |e| BenchError::Sys {
        what,
        source: std::io::Error::from(e),
        hint: "userfaultfd needs Linux 4.11+ and, for faults raised by the kernel, root \
               (or vm.unprivileged_userfaultfd=1)",
    }
}

/// A running minimal page server over its own mapping; stopped on drop.
pub struct MinimalUffd {
    thread: Option<JoinHandle<Result<u64, std::io::Error>>>,
    stop: OwnedFd,
    // Drop order matters: the userfaultfd is closed (which unregisters) before the unmap.
    _uffd: OwnedFd,
    map: BareMapping,
}

impl MinimalUffd {
    /// Maps `len` bytes of private anonymous memory, registers them with a new userfaultfd and
    /// starts the server thread: zero pages, or the bytes of `source` at the same offset.
    pub fn start(len: usize, source: Option<File>) -> Result<MinimalUffd, BenchError> {
        let map = BareMapping::anon(len)?;
        // SAFETY: plain syscall with flags only; the result is checked.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(BenchError::last_os(
                "userfaultfd(2)",
                "userfaultfd needs Linux 4.11+ and, for faults raised by the kernel, root \
                 (or vm.unprivileged_userfaultfd=1)",
            ));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: `uffd` is a userfaultfd and `api` a valid `struct uffdio_api`.
        unsafe { sys::api(uffd.as_raw_fd(), &mut api) }.map_err(uffd_err("UFFDIO_API"))?;
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: map.addr() as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: registers our own live mapping with our userfaultfd.
        unsafe { sys::register(uffd.as_raw_fd(), &mut reg) }
            .map_err(uffd_err("UFFDIO_REGISTER"))?;
        // SAFETY: plain syscall; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(BenchError::last_os("eventfd", "see eventfd(2)"));
        }
        // SAFETY: `efd` is a fresh descriptor nobody else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(efd) };
        let (ufd, sfd, base) = (uffd.as_raw_fd(), stop.as_raw_fd(), map.addr() as u64);
        let thread = std::thread::Builder::new()
            .name("minimal-uffd".into())
            .spawn(move || serve(ufd, sfd, base, source))
            .map_err(BenchError::io(
                "spawning the minimal uffd thread",
                "see ulimit -u",
            ))?;
        Ok(MinimalUffd {
            thread: Some(thread),
            stop,
            _uffd: uffd,
            map,
        })
    }

    /// Start of the registered mapping.
    pub fn addr(&self) -> *mut u8 {
        self.map.addr()
    }

    /// Length of the registered mapping.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping is empty (never).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Stops the server; returns the faults it served.
    pub fn stop(mut self) -> Result<u64, BenchError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<u64, BenchError> {
        let Some(thread) = self.thread.take() else {
            return Ok(0);
        };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        let rc = unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if rc != 8 {
            return Err(BenchError::last_os(
                "writing the stop eventfd",
                "see eventfd(2)",
            ));
        }
        thread
            .join()
            .map_err(|_| BenchError::Check {
                what: "minimal uffd loop".into(),
                detail: "its thread panicked".into(),
            })?
            .map_err(BenchError::io(
                "the minimal uffd loop",
                "see userfaultfd(2)",
            ))
    }
}

impl Drop for MinimalUffd {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            log::error!("bench: minimal uffd loop: {e}");
        }
    }
}

/// The server thread: returns the number of faults served when told to stop.
fn serve(uffd: RawFd, stop: RawFd, base: u64, source: Option<File>) -> Result<u64, std::io::Error> {
    let mut msgs = [UffdMsg::default(); BATCH];
    let mut page = vec![0u8; PAGE];
    let mut faults = 0u64;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(faults);
        }
        // SAFETY: reads whole messages into `msgs`, which has room for BATCH of them.
        let n = unsafe { libc::read(uffd, msgs.as_mut_ptr().cast(), std::mem::size_of_val(&msgs)) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        for msg in &msgs[..n as usize / std::mem::size_of::<UffdMsg>()] {
            if msg.event != UFFD_EVENT_PAGEFAULT {
                continue;
            }
            let dst = msg.address & !(PAGE as u64 - 1);
            let rc = match &source {
                None => {
                    let mut z = UffdioZeropage {
                        range: UffdioRange {
                            start: dst,
                            len: PAGE as u64,
                        },
                        mode: 0,
                        zeropage: 0,
                    };
                    // SAFETY: `dst` is a page of the range registered with `uffd`.
                    unsafe { sys::zeropage(uffd, &mut z) }
                }
                Some(file) => {
                    file.read_exact_at(&mut page, dst - base)?;
                    let mut c = UffdioCopy {
                        dst,
                        src: page.as_ptr() as u64,
                        len: PAGE as u64,
                        mode: 0,
                        copy: 0,
                    };
                    // SAFETY: `page` is readable for PAGE bytes and `dst` is a page of the
                    // range registered with `uffd`.
                    unsafe { sys::copy(uffd, &mut c) }
                }
            };
            match rc {
                Ok(_) => {}
                // Already there (another fault on the same page was served): just wake.
                Err(nix::errno::Errno::EEXIST) => {
                    let mut r = UffdioRange {
                        start: dst,
                        len: PAGE as u64,
                    };
                    // SAFETY: wakes waiters on a page of our registered range.
                    unsafe { sys::wake(uffd, &mut r) }.map_err(std::io::Error::from)?;
                }
                Err(e) => return Err(e.into()),
            }
            faults += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_zero_pages() {
        if !crate::bench::host::is_root() {
            println!("skip: minimal_uffd::serves_zero_pages: needs root");
            return;
        }
        let server = MinimalUffd::start(16 * PAGE, None).unwrap();
        for i in 0..16 {
            // SAFETY: inside the live registered mapping; the server fills the page.
            let v = unsafe { server.addr().add(i * PAGE).read_volatile() };
            assert_eq!(v, 0);
        }
        assert_eq!(server.stop().unwrap(), 16);
    }
}
