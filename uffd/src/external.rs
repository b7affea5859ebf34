//! The VMM's side of a userfaultfd handed to an external page-fault handler with Firecracker's
//! handshake (see [`crate::handshake`] for the hand-over itself).
//!
//! The VMM connects to the handler's Unix stream socket and sends one message: a JSON array of
//! [`GuestRegionUffdMapping`] (one per region, Firecracker's field names, each region's offset
//! in the handler's memory file) with the one userfaultfd of all those regions attached as
//! `SCM_RIGHTS`. The regions are registered for missing faults before sending and the
//! descriptor has `UFFD_EVENT_REMOVE` enabled, as Firecracker does: the handler must read
//! remove events, or `MADV_DONTNEED` on guest memory blocks until it does.
//!
//! The VMM keeps its own copy of the descriptor and the connected socket. When the handler
//! dies the socket hangs up, which [`ExternalHandler::peer_alive`] reports so the VMM can stop
//! the guest (faults would otherwise wait forever).

use crate::RegionSpec;
use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use userfaultfd::Uffd;

/// One region as sent to the external handler: Firecracker's `GuestRegionUffdMapping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRegionUffdMapping {
    /// Host virtual address where the region's contents are to be installed.
    pub base_host_virt_addr: u64,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region's contents in the guest memory image.
    pub offset: u64,
    /// Page size of the region in bytes.
    pub page_size: u64,
    /// The same page size in bytes: Firecracker still sends this deprecated, misnamed field
    /// for handlers written against older releases (whose structs require it).
    #[serde(default)]
    pub page_size_kib: u64,
}

impl From<&RegionSpec> for GuestRegionUffdMapping {
    fn from(r: &RegionSpec) -> Self {
        GuestRegionUffdMapping {
            base_host_virt_addr: r.host_addr as u64,
            size: r.len as u64,
            offset: r.source_offset,
            page_size: r.page_size as u64,
            page_size_kib: r.page_size as u64,
        }
    }
}

/// The VMM's side of a handed-over userfaultfd (one per handler connection, however many
/// regions it carries). Dropping it closes the VMM's copy of the descriptor and the socket
/// (the regions stay registered while the handler holds its copy).
#[derive(Debug)]
pub struct ExternalHandler {
    uffd: Uffd,
    stream: UnixStream,
    path: PathBuf,
    regions: Vec<RegionSpec>,
    released: AtomicBool,
}

/// Whether the peer of `stream` still holds its end (no hang-up, no EOF, no error).
pub(crate) fn stream_alive(stream: &UnixStream) -> bool {
    let hangup = libc::POLLHUP | libc::POLLERR | libc::POLLNVAL | libc::POLLRDHUP;
    // Raw poll: nix's `revents()` gives up (None) on POLLRDHUP, which it does not know.
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor we own, zero timeout.
    match unsafe { libc::poll(&mut pfd, 1, 0) } {
        0 => true,
        n if n > 0 => {
            if pfd.revents & hangup != 0 {
                return false;
            }
            // Readable without hang-up: the handler sent bytes (alive) unless it is EOF or an
            // error (ECONNRESET: it closed with bytes of ours unread).
            let mut byte = [0u8; 1];
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            match recv(stream.as_raw_fd(), &mut byte, flags) {
                Ok(n) => n > 0,
                Err(e) => matches!(e, Errno::EAGAIN | Errno::EINTR),
            }
        }
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return true;
            }
            log::warn!("uffd: polling the page-fault handler socket: {e}");
            false
        }
    }
}

impl ExternalHandler {
    pub(crate) fn new(
        uffd: Uffd,
        stream: UnixStream,
        path: PathBuf,
        regions: Vec<RegionSpec>,
    ) -> Self {
        ExternalHandler {
            uffd,
            stream,
            path,
            regions,
            released: AtomicBool::new(false),
        }
    }

    /// Whether the handler still holds its end of the socket (no hang-up, no EOF, no error).
    pub fn peer_alive(&self) -> bool {
        stream_alive(&self.stream)
    }

    /// The VMM's copy of the userfaultfd.
    pub fn uffd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }

    /// The handler's socket path.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// The regions handed over, in the order of the message.
    pub fn regions(&self) -> &[RegionSpec] {
        &self.regions
    }

    /// Unregisters every region of this connection from the VMM's copy of the userfaultfd,
    /// which wakes threads blocked on a fault no handler will serve (e.g. after
    /// [`ExternalHandler::peer_alive`] turned false). Missing pages are then filled by the
    /// kernel as ordinary zero pages, not by the handler: call it only for a guest that is
    /// being stopped. Only the first call does anything.
    pub fn release_faulters(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        for r in &self.regions {
            if let Err(e) = self
                .uffd
                .unregister(r.host_addr as *mut libc::c_void, r.len)
            {
                log::warn!(
                    "uffd: unregistering [{:#x}, +{:#x}): {e}",
                    r.host_addr,
                    r.len
                );
            }
        }
    }

    /// Closes the VMM's copies of the descriptor and the socket (same as dropping).
    pub fn close(self) {}
}
