//! Hand-over of the userfaultfd to an external page-fault handler, with Firecracker's handshake.
//!
//! The VMM connects to the handler's Unix stream socket and sends one message: a JSON array of
//! [`GuestRegionUffdMapping`] (one per region, Firecracker's field names) with the userfaultfd
//! attached as `SCM_RIGHTS`. The regions are registered for missing faults before sending and
//! the descriptor has `UFFD_EVENT_REMOVE` enabled, as Firecracker does: the handler must read
//! remove events, or `MADV_DONTNEED` on guest memory blocks until it does.
//!
//! The VMM keeps its own copy of the descriptor and the connected socket. When the handler
//! dies the socket hangs up, which [`ExternalHandler::peer_alive`] reports so the VMM can stop
//! the guest (faults would otherwise wait forever).

use crate::{create_and_register, validate_regions, RegionSpec, UffdError};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, sendmsg, ControlMessage, MsgFlags, UnixAddr};
use serde::{Deserialize, Serialize};
use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use userfaultfd::Uffd;

/// Largest page size accepted for hand-over (1 GiB hugetlbfs pages).
const MAX_HANDOVER_PAGE: usize = 1 << 30;

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
    /// for handlers written against older releases.
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

/// The VMM's side of a handed-over userfaultfd. Dropping it closes the VMM's copy of the
/// descriptor and the socket (the regions stay registered while the handler holds its copy).
#[derive(Debug)]
pub struct ExternalHandler {
    uffd: Uffd,
    stream: UnixStream,
    regions: Vec<RegionSpec>,
}

impl ExternalHandler {
    /// Whether the handler still holds its end of the socket (no hang-up, no EOF, no error).
    pub fn peer_alive(&self) -> bool {
        let hangup = PollFlags::POLLHUP
            | PollFlags::POLLERR
            | PollFlags::POLLNVAL
            | PollFlags::from_bits_retain(libc::POLLRDHUP);
        let mut fds = [PollFd::new(
            self.stream.as_fd(),
            PollFlags::POLLIN | PollFlags::from_bits_retain(libc::POLLRDHUP),
        )];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => true,
            Ok(_) => {
                let revents = fds[0].revents().unwrap_or(PollFlags::empty());
                if revents.intersects(hangup) {
                    return false;
                }
                // Readable without hang-up: the handler sent bytes (alive) unless it is EOF.
                let mut byte = [0u8; 1];
                let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
                !matches!(recv(self.stream.as_raw_fd(), &mut byte, flags), Ok(0))
            }
            Err(Errno::EINTR) => true,
            Err(e) => {
                log::warn!("uffd: polling the page-fault handler socket: {e}");
                false
            }
        }
    }

    /// The VMM's copy of the userfaultfd.
    pub fn uffd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }

    /// The regions handed over.
    pub fn regions(&self) -> &[RegionSpec] {
        &self.regions
    }

    /// Unregisters every region from the VMM's copy of the userfaultfd, which wakes threads
    /// blocked on a fault no handler will serve (e.g. after [`ExternalHandler::peer_alive`]
    /// turned false). Missing pages are then filled by the kernel as ordinary zero pages, not
    /// by the handler: call it only for a guest that is being stopped.
    pub fn release_faulters(&self) {
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

/// Hands the regions to an external page-fault handler with Firecracker's handshake.
///
/// Connects to the Unix stream socket `socket`, creates the userfaultfd (kernel faults
/// allowed), registers every region for missing faults and sends one message whose body is the
/// JSON array of [`GuestRegionUffdMapping`] with the descriptor attached via `SCM_RIGHTS`.
pub fn hand_over(regions: Vec<RegionSpec>, socket: &Path) -> Result<ExternalHandler, UffdError> {
    validate_regions(&regions, MAX_HANDOVER_PAGE)?;
    let mut stream = UnixStream::connect(socket).map_err(|source| UffdError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let (uffd, _) = create_and_register(&regions)?;
    let mappings: Vec<GuestRegionUffdMapping> = regions.iter().map(Into::into).collect();
    let send_err = |reason: String| UffdError::Send {
        path: socket.to_path_buf(),
        reason,
    };
    let body = serde_json::to_vec(&mappings).map_err(|e| send_err(e.to_string()))?;
    let fds = [uffd.as_raw_fd()];
    let sent = loop {
        match sendmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &[IoSlice::new(&body)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other.map_err(|e| send_err(format!("sendmsg: {e}")))?,
        }
    };
    // A stream socket may take a long body in pieces; the descriptor went with the first one.
    stream
        .write_all(&body[sent..])
        .map_err(|e| send_err(format!("write: {e}")))?;
    log::info!(
        "uffd: handed {} region(s) to the page-fault handler at {}",
        regions.len(),
        socket.display()
    );
    Ok(ExternalHandler {
        uffd,
        stream,
        regions,
    })
}
